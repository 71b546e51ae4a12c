// The bounds of issue 13 as measurements (`npm run bench -- --phases bounds`): what a
// crowd of misbehaving or slow clients costs the mirror in memory and event-loop time.
//  - 200 clients each start a cold 256 MiB download (4 distinct blobs) and drop it after
//    the first bytes: peak RSS, and how many bytes the upstream ends up sending;
//  - 50 clients that start reading a 64 MiB blob while it is being committed to S3
//    (Ceph RGW), paused for 2 s before they read on: peak RSS;
//  - 20 clients sending wrong passwords as fast as they are answered: the event-loop
//    stall an honest client sees, as the p99 latency of `/healthz` probed every 5 ms.
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import type { Blob } from '../fixtures/oci-images.js';
import type { RealUpstream } from '../fixtures/real-upstream.js';
import { ROOT, type RunningSystem } from './systems.js';
import { percentile, settle } from './tools.js';

const MiB = 1024 * 1024;

export interface BoundsResult {
  system: string;
  scenario: string;
  peakRssBytes?: number;
  upstreamBytes?: number;
  p99Ms?: number;
  p50Ms?: number;
  detail: string;
}

/** GET a URL, read `keepBytes` of the body, then cut the connection. Resolves with the status. */
function getAndDrop(url: string, keepBytes: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      let got = 0;
      res.on('data', (c: Buffer) => {
        got += c.length;
        if (got >= keepBytes) {
          req.destroy();
          resolve(res.statusCode ?? 0);
        }
      });
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.setTimeout(60_000, () => req.destroy());
  });
}

/** GET a URL, wait `pauseMs` without reading, then read the whole body; resolves with its sha256 and size. */
function getPausedThenRead(url: string, pauseMs: number): Promise<{ status: number; digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.pause();
      const hash = createHash('sha256');
      let bytes = 0;
      setTimeout(() => {
        res.on('data', (c: Buffer) => {
          hash.update(c);
          bytes += c.length;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, digest: `sha256:${hash.digest('hex')}`, bytes }));
        res.on('error', reject);
        res.resume();
      }, pauseMs);
    });
    req.on('error', reject);
    req.setTimeout(240_000, () => req.destroy(new Error(`${url}: no progress for 240 s`)));
  });
}

/** Peak RSS of `sys` sampled every 50 ms while `work` runs (VmHWM covers the gaps). */
async function withRssSampling<T>(sys: RunningSystem, work: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => sys.peakRss(), 50);
  try {
    return await work();
  } finally {
    clearInterval(timer);
    sys.peakRss();
  }
}

export async function dropCrowd(sys: RunningSystem, upstream: RealUpstream, blobs: { repo: string; blob: Blob }[], clients = 200): Promise<BoundsResult> {
  upstream.resetCounts();
  const statuses = await withRssSampling(sys, async () => {
    const all = await Promise.all(
      Array.from({ length: clients }, (_, i) => {
        const { repo, blob } = blobs[i % blobs.length]!;
        return getAndDrop(`${sys.url}/v2/${repo}/blobs/${blob.digest}`, 64 * 1024);
      }),
    );
    // What the dropped downloads go on costing: the upstream's bytes until it is quiet (bounded at 90 s).
    await settle(upstream, 2000, 90_000);
    return all;
  });
  const ok = statuses.filter((s) => s === 200).length;
  const counts = new Map<number, number>();
  for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
  const others = [...counts].filter(([s]) => s !== 200).map(([s, n]) => `${n}× ${s === 0 ? 'connection error' : s}`);
  const total = blobs.reduce((a, b) => a + b.blob.size, 0);
  return {
    system: sys.key,
    scenario: `${clients} clients drop cold 256 MiB downloads`,
    peakRssBytes: sys.peakRss(),
    upstreamBytes: upstream.bytes({}),
    detail: `${ok}/${clients} answered 200 before dropping${others.length ? ` (${others.join(', ')})` : ''}; upstream sent ${(upstream.bytes({}) / MiB).toFixed(0)} MiB for ${blobs.length} blobs of ${(total / blobs.length / MiB).toFixed(0)} MiB (${upstream.count({ kind: 'blob', method: 'GET' })} blob GETs)`,
  };
}

export async function committingReaders(sys: RunningSystem, upstream: RealUpstream, repo: string, blob: Blob, clients = 50): Promise<BoundsResult> {
  upstream.resetCounts();
  const url = `${sys.url}/v2/${repo}/blobs/${blob.digest}`;
  const results = await withRssSampling(sys, async () => {
    const failed = (err: unknown) => ({ status: 0, digest: String(err), bytes: 0 });
    const first = getPausedThenRead(url, 0).catch(failed);
    // The crowd arrives when the upstream has sent the whole blob: the download is verifying and committing.
    const until = Date.now() + 120_000;
    while (upstream.bytes({ kind: 'blob' }) < blob.size && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    const crowd = Array.from({ length: clients }, () => getPausedThenRead(url, 2000).catch(failed));
    return Promise.all([first, ...crowd]);
  });
  const bad = results.filter((r) => r.status !== 200 || r.digest !== blob.digest || r.bytes !== blob.size);
  const alive = sys.pids().length > 0;
  if (bad.length || !alive) {
    // What the mirror said about it, for whoever reads the bench log.
    const lines = readFileSync(sys.logPath, 'utf8').split('\n').filter((l) => /"level":(50|60)|FATAL|heap|Error/.test(l));
    console.log(`committing readers: ${bad.length} failures; the mirror's last errors:\n${lines.slice(-5).join('\n')}`);
  }
  return {
    system: sys.key,
    scenario: `${clients} clients read a ${Math.round(blob.size / MiB)} MiB blob committing to S3`,
    peakRssBytes: sys.peakRss(),
    detail: `${results.length - bad.length} of ${results.length} clients got the blob byte-exact${bad.length ? ` (failures: ${[...new Set(bad.map((b) => (b.status ? `status ${b.status}` : b.digest)))].slice(0, 3).join('; ')})` : ''}${alive ? '' : '; THE MIRROR PROCESS DIED'}; upstream blob GETs ${upstream.count({ kind: 'blob', method: 'GET' })}`,
  };
}

/** An htpasswd file with one bcrypt (cost 10) user, as `htpasswd -B -C 10` writes it. */
export function writeHtpasswd(dir: string, user: string, password: string): string {
  const path = join(dir, 'htpasswd');
  writeFileSync(path, `${user}:${bcrypt.hashSync(password, 10).replace(/^\$2b\$/, '$2y$')}\n`);
  return path;
}

export async function wrongPasswords(sys: RunningSystem, attackers = 20, seconds = 8): Promise<BoundsResult> {
  // The attackers run in a process of their own, so the probe below measures only the mirror.
  const child = fork(join(ROOT, 'test/bench/password-attack.ts'), [sys.url, String(attackers), String(seconds)], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const attack = new Promise<{ requests: number; statuses: Record<string, number> }>((resolve, reject) => {
    child.once('message', (m) => resolve(m as { requests: number; statuses: Record<string, number> }));
    child.once('exit', (code) => reject(new Error(`password attacker exited with ${code}`)));
  });
  // Let the attack reach full speed, then probe the event loop through /healthz.
  await new Promise((r) => setTimeout(r, 1000));
  const latencies: number[] = [];
  const probeUntil = Date.now() + (seconds - 2) * 1000;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  while (Date.now() < probeUntil) {
    const started = performance.now();
    await new Promise<void>((resolve) => {
      const req = http.get(`${sys.url}/healthz`, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolve());
      });
      req.on('error', () => resolve());
    });
    latencies.push(performance.now() - started);
    await new Promise((r) => setTimeout(r, 5));
  }
  agent.destroy();
  const done = await attack;
  const statuses = Object.entries(done.statuses)
    .map(([s, n]) => `${n}× ${s}`)
    .join(', ');
  return {
    system: sys.key,
    scenario: `${attackers} clients send wrong passwords`,
    p99Ms: percentile(latencies, 99),
    p50Ms: percentile(latencies, 50),
    peakRssBytes: sys.peakRss(),
    detail: `${latencies.length} /healthz probes; the attackers made ${done.requests} requests (${statuses})`,
  };
}
