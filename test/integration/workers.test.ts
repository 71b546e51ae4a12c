// `serve --workers 2` (issue 16): a primary and two workers sharing the socket, the cache and
// its index, behaving as one mirror towards the upstream (one request per tag, per missing
// tag, per revalidation), restarted when one dies, reloaded and drained by signals to the
// primary, with /metrics and /readyz for the whole mirror, beside the CLI's maintenance.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get, sha256 } from '../fixtures/http-client.js';
import { runCli, startMirrorProcess, type MirrorProcess } from '../fixtures/mirror-process.js';
import { bigLayer, buildImage, MT, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { waitFor } from '../fixtures/wait.js';

const TTL_MS = 3000;
const ACCEPT = { accept: [MT.ociManifest, MT.ociIndex, MT.dockerManifest, MT.dockerList].join(', ') };

let upstream: RealUpstream;
let mirror: MirrorProcess;
let work: string;
let storage: string;

function image(label: string): Image {
  return buildImage({ format: 'oci', platform: { os: 'linux', architecture: 'amd64' }, layers: [smallLayer([{ path: 'label', content: `${label}\n` }])], label });
}

/** The workers' pids by id, from their "worker listening" lines (restarts add lines). */
function workerPids(output: string): Map<number, number> {
  const pids = new Map<number, number>();
  for (const m of output.matchAll(/"worker":(\d+),"pid":(\d+),"msg":"worker listening"/g)) pids.set(Number(m[1]), Number(m[2]));
  return pids;
}

/** Fire `n` GETs at once, each on a connection of its own (the primary deals connections round-robin). */
function storm(n: number, path: string) {
  return Promise.all(Array.from({ length: n }, () => get(`${mirror.url}${path}`, { headers: ACCEPT })));
}

/** The time a tag is trusted passes (the TTL is a duration of the mirror's clock: there is no event to wait for). */
const ttlPasses = () => new Promise((r) => setTimeout(r, TTL_MS + 300));

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'mirror-workers-'));
  storage = join(work, 'cache');
  upstream = await startRealUpstream();
  mirror = await startMirrorProcess(['--workers', '2', '--storage', storage, '--upstream', upstream.url, '--ttl', `${TTL_MS}ms`, '--log-level', 'info']);
}, 60_000);

afterAll(async () => {
  await mirror?.kill('SIGKILL');
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('two workers', () => {
  it('logs the url once, and requests land on both workers (header and access log)', async () => {
    // One line with the url, the primary's, once every worker listens (tests parse it).
    expect(mirror.output().match(/"msg":"mirror listening"/g)).toHaveLength(1);
    expect(mirror.output()).toMatch(new RegExp(`"url":"${mirror.url}",[^\n]*"workers":2,`));
    const answers = await Promise.all(Array.from({ length: 10 }, () => get(`${mirror.url}/v2/`)));
    expect(answers.every((a) => a.status === 200)).toBe(true);
    const ids = new Set(answers.map((a) => a.headers['x-mirror-worker']));
    expect([...ids].sort()).toEqual(['1', '2']);
    await waitFor(() => /"worker":1,[^\n]*"path":"\/v2\/"/.test(mirror.output()) && /"worker":2,[^\n]*"path":"\/v2\/"/.test(mirror.output()), 5000, 'both workers\' access lines');
  });

  it('/metrics answers for the whole mirror: the workers\' counters summed', async () => {
    const base = async () => {
      const text = (await get(`${mirror.url}/metrics`)).body.toString();
      return Number(/mirror_http_requests_total\{route="base",status="200",outcome="none"\} (\d+)/.exec(text)?.[1] ?? 0);
    };
    const before = await base();
    const answers = await Promise.all(Array.from({ length: 8 }, () => get(`${mirror.url}/v2/`)));
    expect(new Set(answers.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    // Whichever worker takes the scrape, it counts the 8 requests of both.
    expect((await base()) - before).toBe(8);
    expect(await base()).toBe(await base());
  });

  it('20 concurrent requests for a tag not cached yet, across workers: one upstream manifest GET', async () => {
    const content = image('storm');
    await upstream.push('team/storm', 'v1', content);
    upstream.resetCounts();
    const answers = await storm(20, '/v2/team/storm/manifests/v1');
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(new Set(answers.map((a) => a.headers['docker-content-digest']))).toEqual(new Set([content.manifest.digest]));
    expect(new Set(answers.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    expect(upstream.count({ kind: 'manifest', method: 'GET', status: 200 })).toBe(1);
    expect(upstream.count({ kind: 'manifest', method: 'HEAD', status: 200 })).toBe(0);
  });

  it('20 concurrent requests for a stale tag, across workers: one revalidation upstream', async () => {
    await ttlPasses();
    upstream.resetCounts();
    const answers = await storm(20, '/v2/team/storm/manifests/v1');
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(new Set(answers.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    expect(upstream.count({ kind: 'manifest', method: 'HEAD', status: 200 })).toBe(1);
    expect(upstream.count({ kind: 'manifest', method: 'GET', status: 200 })).toBe(0);
  });

  it('a storm for a missing tag, across workers: one upstream request, then remembered by every worker', async () => {
    upstream.resetCounts();
    const answers = await storm(20, '/v2/team/storm/manifests/nope');
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(404));
    expect(new Set(answers.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    const later = await storm(10, '/v2/team/storm/manifests/nope');
    expect(later.map((a) => a.status)).toEqual(Array(10).fill(404));
    expect(new Set(later.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    expect(upstream.count({ kind: 'manifest', path: /\/manifests\/nope$/, status: 404 })).toBe(1);
  });

  it('a tag moved upstream: every worker serves the new digest, the move learned once', async () => {
    const first = image('moving-1');
    const second = image('moving-2');
    await upstream.push('team/moving', 'v1', first);
    // Both workers hold the tag in memory.
    const warm = await storm(6, '/v2/team/moving/manifests/v1');
    expect(new Set(warm.map((a) => a.headers['x-mirror-worker'])).size).toBe(2);
    expect(new Set(warm.map((a) => a.headers['docker-content-digest']))).toEqual(new Set([first.manifest.digest]));
    await upstream.push('team/moving', 'v1', second);
    await ttlPasses();
    upstream.resetCounts();
    // One after the other: the first learns the move; the other worker's copy was dropped, it reads the index.
    const seen: { worker: string; digest: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const a = await get(`${mirror.url}/v2/team/moving/manifests/v1`, { headers: ACCEPT });
      expect(a.status).toBe(200);
      seen.push({ worker: String(a.headers['x-mirror-worker']), digest: String(a.headers['docker-content-digest']) });
    }
    expect(new Set(seen.map((s) => s.worker)).size).toBe(2);
    expect(new Set(seen.map((s) => s.digest))).toEqual(new Set([second.manifest.digest]));
    expect(upstream.count({ kind: 'manifest', method: 'HEAD', status: 200 })).toBe(1);
    expect(upstream.count({ kind: 'manifest', method: 'GET', status: 200 })).toBe(1);
  });

  it('the CLI maintenance commands run beside the running workers', async () => {
    const digest = image('storm').manifest.digest;
    const results = await Promise.all([['verify', '--json'], ['ls', '--json'], ['stats', '--json'], ['gc', '--json']].map((args) => runCli([...args, '--storage', storage])));
    for (const r of results) {
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
    const ls = JSON.parse(results[1]!.stdout) as { repo: string; tag: string }[];
    expect(ls.some((row) => row.repo === 'team/storm' && row.tag === 'v1')).toBe(true);
    expect((JSON.parse(results[0]!.stdout) as { corrupt: string[] }).corrupt).toEqual([]);
    const answers = await storm(4, `/v2/team/storm/manifests/${digest}`);
    expect(answers.map((a) => a.status)).toEqual(Array(4).fill(200));
  });

  it('kill -9 of a worker: the primary starts another and /readyz is ready again', async () => {
    expect((await get(`${mirror.url}/readyz`)).status).toBe(200);
    const pids = workerPids(mirror.output());
    expect(pids.size).toBe(2);
    const [victimId, victimPid] = [...pids][0]!;
    process.kill(victimPid, 'SIGKILL');
    await waitFor(() => mirror.output().includes('worker died; restarting it'), 10_000, 'the primary to notice');
    await waitFor(() => workerPids(mirror.output()).size === 3, 30_000, 'a new worker');
    await waitFor(async () => (await get(`${mirror.url}/readyz`)).status === 200, 10_000, '/readyz ready');
    const answers = await Promise.all(Array.from({ length: 6 }, () => get(`${mirror.url}/v2/`)));
    const ids = new Set(answers.map((a) => a.headers['x-mirror-worker']));
    expect(ids.size).toBe(2);
    expect(ids.has(String(victimId))).toBe(false);
  }, 60_000);

  it('SIGTERM to the primary drains an in-flight slow blob response on a worker, then every process exits', async () => {
    const layer = await bigLayer(3 * 1024 * 1024, 'drain');
    const content = buildImage({ format: 'oci', platform: { os: 'linux', architecture: 'amd64' }, layers: [layer] });
    await upstream.push('team/drain', 'v1', content);
    let headers!: () => void;
    const answered = new Promise<void>((r) => (headers = r));
    // About 3 s to read at 1 MiB/s: SIGTERM arrives mid-body.
    const slow = get(`${mirror.url}/v2/team/drain/blobs/${layer.digest}`, { bytesPerSecond: 1024 * 1024, onHeaders: () => headers() });
    await answered;
    const pids = [...workerPids(mirror.output()).values()];
    const exited = mirror.kill('SIGTERM');
    const result = await slow;
    expect(result.status).toBe(200);
    expect(result.truncated).toBe(false);
    expect(sha256(result.body)).toBe(layer.digest);
    expect(await exited).toBe(0);
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor(() => pids.every((p) => !alive(p)), 10_000, 'the workers to exit');
    expect(mirror.output()).toMatch(/"worker":\d+,"signal":"primary","msg":"shutting down/);
  }, 60_000);
});

describe('two workers and a size-bounded cache', () => {
  it('eviction counts what every worker adds: each worker\'s share alone stays under the high watermark, the sum does not', async () => {
    const config = join(work, 'evict.yaml');
    writeFileSync(config, 'storage:\n  maxSize: 1MiB\n  highWatermark: 0.9\n  lowWatermark: 0.5\n');
    const cache = join(work, 'evict-cache');
    const bounded = await startMirrorProcess(['--workers', '2', '--config', config, '--storage', cache, '--upstream', upstream.url, '--log-level', 'info']);
    try {
      const layers = await Promise.all(Array.from({ length: 6 }, (_, i) => bigLayer(200 * 1024, `evict-${i}`)));
      await upstream.push('team/evict', 'v1', buildImage({ format: 'oci', platform: { os: 'linux', architecture: 'amd64' }, layers }));
      const served = new Map<string, number>();
      // One after the other: the primary deals the connections out in turn, three blobs (600 KiB) each.
      for (const layer of layers) {
        const a = await get(`${bounded.url}/v2/team/evict/blobs/${layer.digest}`);
        expect(sha256(a.body)).toBe(layer.digest);
        const worker = String(a.headers['x-mirror-worker']);
        served.set(worker, (served.get(worker) ?? 0) + 1);
      }
      expect([...served.values()].sort()).toEqual([3, 3]);
      await waitFor(() => bounded.output().includes('evicted least recently used content'), 10_000, 'an eviction');
      const stats = await runCli(['stats', '--json', '--storage', cache]);
      expect((JSON.parse(stats.stdout) as { bytes: number }).bytes).toBeLessThanOrEqual(1024 * 1024);
    } finally {
      await bounded.kill('SIGTERM');
    }
  }, 90_000);
});

describe('two workers and a client\'s miss budget', () => {
  it('clientMisses holds for the whole mirror, not per worker', async () => {
    const config = join(work, 'budget.yaml');
    writeFileSync(config, 'clientMisses:\n  perMinute: 4\n');
    const budgeted = await startMirrorProcess(['--workers', '2', '--config', config, '--storage', join(work, 'budget-cache'), '--upstream', upstream.url]);
    try {
      const answers: { status: number; worker: string }[] = [];
      // One after the other, each a miss (a tag the upstream does not have), alternating workers.
      for (let i = 0; i < 8; i++) {
        const a = await get(`${budgeted.url}/v2/team/storm/manifests/missing-${i}`, { headers: ACCEPT });
        answers.push({ status: a.status, worker: String(a.headers['x-mirror-worker']) });
      }
      expect(new Set(answers.map((a) => a.worker)).size).toBe(2);
      // 4 a minute for 127.0.0.1 in all: per worker it would have been 4 each, 8 in all.
      expect(answers.filter((a) => a.status === 404)).toHaveLength(4);
      expect(answers.filter((a) => a.status === 429)).toHaveLength(4);
    } finally {
      await budgeted.kill('SIGTERM');
    }
  }, 60_000);
});

describe('two workers over TLS', () => {
  function makeCert(name: string): { cert: string; key: string } {
    const cert = join(work, `${name}.crt`);
    const key = join(work, `${name}.key`);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'pipe' });
    return { cert, key };
  }

  it('SIGHUP to the primary reloads the certificate in every worker', async () => {
    const live = { cert: join(work, 'live.crt'), key: join(work, 'live.key') };
    const first = makeCert('first');
    execFileSync('cp', [first.cert, live.cert]);
    execFileSync('cp', [first.key, live.key]);
    const config = join(work, 'tls.yaml');
    writeFileSync(config, `tls:\n  cert: ${live.cert}\n  key: ${live.key}\n`);
    const secure = await startMirrorProcess(['--workers', '2', '--config', config, '--storage', join(work, 'tls-cache'), '--upstream', upstream.url]);
    try {
      expect(secure.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const port = Number(new URL(secure.url).port);
      const fingerprint = () =>
        new Promise<string>((resolve, reject) => {
          const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
            resolve(socket.getPeerCertificate().fingerprint256);
            socket.end();
          });
          socket.on('error', reject);
        });
      /** Six connections: round-robin gives each worker three. */
      const served = async () => new Set(await Promise.all(Array.from({ length: 6 }, fingerprint)));
      const before = await served();
      expect(before.size).toBe(1);
      const second = makeCert('second');
      execFileSync('cp', [second.cert, live.cert]);
      execFileSync('cp', [second.key, live.key]);
      secure.child.kill('SIGHUP');
      await waitFor(() => (secure.output().match(/TLS certificate and htpasswd file reloaded/g) ?? []).length === 2, 10_000, 'both workers to reload');
      const after = await served();
      expect(after.size).toBe(1);
      expect([...after][0]).not.toBe([...before][0]);
    } finally {
      expect(await secure.kill('SIGTERM')).toBe(0);
    }
  }, 60_000);
});
