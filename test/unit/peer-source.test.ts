// Reading a blob from the replica that owns it (issue 13): whatever the owner answers that
// the download cannot use is never read into memory.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import { Peers } from '../../src/cluster/peer-source.js';
import { buildConfig } from '../../src/config.js';
import { parseDigest } from '../../src/oci/reference.js';
import { UpstreamRegistry } from '../../src/upstream/registry.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
const BODY_BYTES = 64 * MiB;

/** An owner that answers every request 200 with a big body, counting what it got to send. */
let owner: { url: string; server: http.Server; answers: { sent: number; finished: boolean; closed: boolean; range: string | undefined }[] };

beforeAll(async () => {
  const answers: typeof owner.answers = [];
  const server = http.createServer((req, res) => {
    const answer = { sent: 0, finished: false, closed: false, range: req.headers.range };
    answers.push(answer);
    res.on('finish', () => (answer.finished = true));
    res.on('close', () => (answer.closed = true));
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BODY_BYTES });
    const chunk = Buffer.alloc(64 * 1024, 7);
    const pump = () => {
      while (answer.sent < BODY_BYTES && !res.destroyed) {
        answer.sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      if (!res.destroyed) res.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  owner = { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, answers };
});

afterAll(async () => {
  owner.server.closeAllConnections();
  await new Promise((r) => owner.server.close(r));
});

describe("a peer's answer the download cannot use", () => {
  it('a full 200 to a resume (Range) request is not read: the connection is dropped and the upstream used instead', async () => {
    const config = buildConfig({ listen: '127.0.0.1:0', storage: { path: '/nonexistent' }, cluster: { self: 'http://127.0.0.1:1', peers: ['http://127.0.0.1:1', owner.url] } }, {});
    const peers = new Peers(config.cluster!, config.timeouts, pino({ level: 'silent' }), systemClock);
    try {
      const route = { upstream: new UpstreamRegistry(config.upstreams[0]!), repository: 'library/alpine', namespace: undefined };
      const digest = parseDigest(`sha256:${'a'.repeat(64)}`);
      let fallbackOffset: number | undefined;
      const fallback = {
        open: async (offset: number) => {
          fallbackOffset = offset;
          return { body: Readable.from([Buffer.from('from the upstream')]), totalSize: 100 };
        },
      };
      const source = peers.source(owner.url, route, digest, fallback);
      const opened = await source.open(1000);
      expect(fallbackOffset).toBe(1000);
      expect(opened.totalSize).toBe(100);
      const answer = owner.answers.at(-1)!;
      expect(answer.range).toBe('bytes=1000-');
      await waitFor(() => answer.closed, 10_000, 'the owner connection to close');
      // The owner never got to send its whole body: it was dropped, not read to the end.
      expect(answer.finished).toBe(false);
      expect(answer.sent).toBeLessThan(BODY_BYTES / 2);
    } finally {
      await peers.close();
    }
  });
});
