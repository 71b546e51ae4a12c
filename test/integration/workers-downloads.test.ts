// One upstream download per digest across the workers of one mirror (issue 16 item 2): a
// client on any worker reads the one download as it grows; a digest mismatch cuts every
// reader on every worker; the owner killed mid-way is taken over by another worker, and
// nothing half-written is ever served or stored. Against the fault-injecting upstream,
// whose `hold` keeps every client overlapping the one download whatever the machine's pace.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get, type Fetched } from '../fixtures/http-client.js';
import { startMirrorProcess, type MirrorProcess } from '../fixtures/mirror-process.js';
import { blobFile } from '../fixtures/storage.js';
import { deferred, waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
let mirror: MirrorProcess;
let work: string;
let storage: string;
let serial = 0;

function coldBlob(size: number): { digest: string; bytes: Buffer; url: string } {
  const bytes = pseudoRandomBytes(size, `workers-blob-${++serial}-${Date.now()}`);
  const digest = upstream.addBlob(bytes);
  return { digest, bytes, url: `${mirror.url}/v2/team/app/blobs/${digest}` };
}

/** Whole-blob GETs the upstream answered (not the 401 of the token dance). */
const blobGets = () => upstream.count({ method: 'GET', kind: 'blob', authorized: true });

/** The workers' pids by id, from their "worker listening" lines (restarts add lines). */
function workerPids(): Map<number, number> {
  const pids = new Map<number, number>();
  for (const m of mirror.output().matchAll(/"worker":(\d+),"pid":(\d+),"msg":"worker listening"/g)) pids.set(Number(m[1]), Number(m[2]));
  return pids;
}

/** `n` clients at once, each on a connection of its own (the primary deals connections round-robin). */
function clients(n: number, url: string, onHeaders: () => void): Promise<Fetched>[] {
  return Array.from({ length: n }, () => get(url, { onHeaders }));
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'mirror-workers-dl-'));
  storage = join(work, 'cache');
  upstream = await startFakeUpstream({ auth: true });
  const config = join(work, 'mirror.yaml');
  // One stream per download: the counts below are of whole-blob GETs, not of Range segments
  // a held (slow-looking) download would otherwise add.
  writeFileSync(config, 'downloads:\n  segments: 1\nretries:\n  attempts: 1\n  baseDelay: 10ms\n  maxDelay: 50ms\n');
  mirror = await startMirrorProcess(['--workers', '2', '--config', config, '--storage', storage, '--upstream', upstream.url, '--log-level', process.env.MIRROR_LOG_LEVEL ?? 'info']);
}, 60_000);

afterAll(async () => {
  if (process.env.DUMP_MIRROR) writeFileSync(process.env.DUMP_MIRROR, mirror?.output() ?? '');
  await mirror?.kill('SIGKILL');
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('one download per digest across two workers', () => {
  it('20 concurrent clients on a cold blob, on both workers: one upstream GET, every body byte-identical', async () => {
    const blob = coldBlob(24 * MiB);
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    let answered = 0;
    const all = Promise.all(clients(20, blob.url, () => answered++));
    // Every client has its answer (200, the size) while the upstream still holds all but 1 MiB.
    await waitFor(() => answered === 20, 30_000, 'all 20 clients to have their response headers');
    expect(blobGets()).toBe(1);
    gate.resolve();
    const results = await all;
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.truncated).toBe(false);
      expect(sha256(r.body)).toBe(blob.digest);
    }
    const workers = new Set(results.map((r) => r.headers['x-mirror-worker']));
    expect(workers.size).toBe(2);
    expect(blobGets()).toBe(1);
    // The access log says so too: one miss, nineteen coalesced (the logs flush within a second).
    const outcomes = () => [...mirror.output().matchAll(new RegExp(`"path":"/v2/team/app/blobs/${blob.digest}","status":200,"outcome":"(\\w+)"`, 'g'))].map((m) => m[1]);
    await waitFor(() => outcomes().length === 20, 10_000, 'the 20 requests in the access log');
    expect(outcomes().filter((o) => o === 'miss')).toHaveLength(1);
    expect(outcomes().filter((o) => o === 'coalesced')).toHaveLength(19);
    await waitFor(() => existsSync(blobFile(storage, blob.digest)), 10_000, 'the blob in the store');
    // Stored once; the next client on either worker is a hit.
    const again = await Promise.all(clients(4, blob.url, () => undefined));
    for (const r of again) expect(sha256(r.body)).toBe(blob.digest);
    expect(blobGets()).toBe(1);
  }, 60_000);

  it('content that does not match its digest cuts every reader on every worker and is not stored', async () => {
    const blob = coldBlob(4 * MiB);
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { corrupt: true, hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    let answered = 0;
    const all = Promise.all(clients(8, blob.url, () => answered++));
    await waitFor(() => answered === 8, 30_000, 'all 8 clients reading the download');
    gate.resolve();
    const results = await all;
    expect(new Set(results.map((r) => r.headers['x-mirror-worker'])).size).toBe(2);
    for (const r of results) {
      // Never a complete, wrong blob: the connection is cut before the last byte.
      expect(r.status).toBe(200);
      expect(r.truncated).toBe(true);
      expect(r.body.length).toBeLessThan(blob.bytes.length);
    }
    expect(blobGets()).toBe(1);
    expect(existsSync(blobFile(storage, blob.digest))).toBe(false);
    upstream.fault = undefined;
    const good = await get(blob.url);
    expect(sha256(good.body)).toBe(blob.digest);
    expect(blobGets()).toBe(2);
  }, 60_000);

  it('the worker that owns a download killed mid-way: another worker takes it over, its clients get the right bytes, nothing half-written is kept', async () => {
    const blob = coldBlob(16 * MiB);
    const gate = deferred();
    let first = true;
    // The first download is held after 1 MiB (and dies with its worker); the takeover's is not.
    upstream.fault = (r) => {
      if (r.kind !== 'blob' || r.method !== 'GET') return undefined;
      if (!first) return undefined;
      first = false;
      return { hold: { afterBytes: 1 * MiB, until: gate.promise } };
    };
    // The first client's worker claims the download: it is the owner.
    let ownerAnswered = false;
    let ownerWorker: string | undefined;
    const ownerClient = get(blob.url, {
      onHeaders: (res) => {
        ownerWorker = String(res.headers['x-mirror-worker']);
        ownerAnswered = true;
      },
    });
    await waitFor(() => ownerAnswered, 30_000, 'the first client to be answered');
    let answered = 0;
    const others = Promise.all(clients(10, blob.url, () => answered++));
    await waitFor(() => answered === 10, 30_000, 'the other clients to have their answers');
    const pids = workerPids();
    const ownerPid = pids.get(Number(ownerWorker));
    expect(ownerPid).toBeDefined();
    process.kill(ownerPid!, 'SIGKILL');
    const results = await others;
    const cut = await ownerClient;
    expect(cut.truncated).toBe(true);
    // The survivors' clients: the whole blob, right; the dead worker's: cut, never complete.
    const survivors = results.filter((r) => r.headers['x-mirror-worker'] !== ownerWorker);
    expect(survivors.length).toBeGreaterThan(0);
    for (const r of survivors) {
      expect(r.truncated).toBe(false);
      expect(sha256(r.body)).toBe(blob.digest);
    }
    for (const r of results.filter((r) => r.headers['x-mirror-worker'] === ownerWorker)) expect(r.truncated).toBe(true);
    // One more download, by the worker that took over.
    expect(blobGets()).toBe(2);
    gate.resolve();
    await waitFor(() => existsSync(blobFile(storage, blob.digest)), 10_000, 'the blob in the store');
    expect(sha256(await import('node:fs').then((fs) => fs.readFileSync(blobFile(storage, blob.digest))))).toBe(blob.digest);
    await waitFor(() => mirror.output().includes('the worker downloading this blob died; claiming the download anew'), 5000, 'the takeover in the log');
    // The primary restarts the dead worker; the mirror is whole again.
    await waitFor(async () => (await get(`${mirror.url}/readyz`)).status === 200, 30_000, '/readyz ready');
  }, 90_000);
});
