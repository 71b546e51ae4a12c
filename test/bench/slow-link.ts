// The "slow link" (issues 8 and 15): the upstream sits behind a shaping front that limits
// every TCP connection to a fixed rate and adds latency, like a distant CDN seen from a
// slow region. The rows that use it are in first-pull.ts.

import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Transform } from 'node:stream';

export interface ShapingFront {
  url: string;
  stop(): Promise<void>;
}

/** A reverse proxy that paces each client connection to `bytesPerSecond` and delays each response by `latencyMs`. */
export async function startShapingFront(targetUrl: string, bytesPerSecond: number, latencyMs: number): Promise<ShapingFront> {
  const target = new URL(targetUrl);
  const nextFree = new WeakMap<Socket, number>();
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    setTimeout(() => {
      const upstream = http.request(
        { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          const socket = req.socket;
          const pace = new Transform({
            transform(chunk: Buffer, _e, cb) {
              const now = performance.now();
              const at = Math.max(now, nextFree.get(socket) ?? now) + (chunk.length / bytesPerSecond) * 1000;
              nextFree.set(socket, at);
              setTimeout(() => cb(null, chunk), Math.max(0, at - now));
            },
          });
          up.pipe(pace).pipe(res);
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    }, latencyMs);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
