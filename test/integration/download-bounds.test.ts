// Bounded memory and work for blob downloads (issue 13, items 4 and 6), against a counting,
// fault-injecting upstream on loopback.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/reference.js';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
const mirrors: TestMirror[] = [];
let serial = 0;

async function mirrorWith(document: Record<string, unknown> = {}): Promise<TestMirror> {
  const m = await startMirror({ upstreamUrl: upstream.url, document: { retries: { attempts: 1, baseDelay: '10ms', maxDelay: '50ms' }, ...document } });
  mirrors.push(m);
  return m;
}

/** A fresh blob nobody has asked for yet. */
function coldBlob(size: number): { digest: string; bytes: Buffer; path: string } {
  const bytes = pseudoRandomBytes(size, `bounds-${++serial}-${Date.now()}`);
  const digest = upstream.addBlob(bytes);
  return { digest, bytes, path: `/v2/team/app/blobs/${digest}` };
}

/** The upstream's blob GETs (not the 401 challenges), in order. */
function blobGets() {
  return upstream.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.status !== 401);
}

async function metric(m: TestMirror, name: string): Promise<number> {
  const text = await m.mirror.metrics.registry.getSingleMetricAsString(name);
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

/** A client that reads the response headers, then nothing until told to. */
function pausedClient(url: string): { headers: Promise<http.IncomingMessage>; readAll(): Promise<Buffer> } {
  let response!: http.IncomingMessage;
  const headers = new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.pause();
      response = res;
      resolve(res);
    });
    req.on('error', reject);
  });
  return {
    headers,
    readAll: async () => {
      const chunks: Buffer[] = [];
      for await (const c of response as AsyncIterable<Buffer>) chunks.push(c);
      return Buffer.concat(chunks);
    },
  };
}

/** Bytes this process has read with read(2) and friends, files and sockets alike (Linux). */
function bytesRead(): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))![1]);
}

/**
 * How many bytes the process read after `baseline`, once reading stopped (under 64 KiB a
 * sample) for `quietSamples` samples in a row; fails as soon as it passes `bound`. With every client paused, what is
 * read for them and not yet taken by them sits in memory.
 */
async function bytesReadUntilQuiet(baseline: number, bound: number, quietSamples = 20): Promise<number> {
  let last = bytesRead() - baseline;
  for (let quiet = 0; quiet < quietSamples; ) {
    await new Promise((r) => setTimeout(r, 50));
    const read = bytesRead() - baseline;
    if (read > bound) throw new Error(`${Math.round(read / MiB)} MiB read for paused clients, past the bound of ${Math.round(bound / MiB)} MiB`);
    // Reading /proc/self/io (and the test runner's own chatter) is a few bytes: not reading for clients.
    quiet = read - last > 64 * 1024 ? 0 : quiet + 1;
    last = read;
  }
  return last;
}

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
});

afterAll(async () => {
  for (const m of mirrors) await m.stop().catch(() => undefined);
  await upstream?.stop();
});

afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('clients that join a download while it commits', () => {
  // Held before the temp file leaves (S3: the upload), or after it is in the store (a request
  // that found the store without it a moment earlier: its stat is made to miss meanwhile).
  it.each(['before', 'after'] as const)('read it with backpressure: eight paused clients on a 32 MiB blob whose commit is held open (%s the move into the store) hold no copy of it in memory', async (when) => {
    const m = await mirrorWith();
    const blob = coldBlob(32 * MiB);
    const url = `${m.url}${blob.path}`;
    // Hold the commit open, as an S3 multipart upload of a big blob does for a while.
    let released = false;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = () => ((released = true), r())));
    const store = m.mirror.store;
    if (when === 'after') {
      const stat = store.stat.bind(store);
      store.stat = async (digest) => (released ? stat(digest) : undefined);
    }
    const commit = store.commit.bind(store);
    store.commit = async (tempPath, digest) => {
      if (when === 'before') await held;
      await commit(tempPath, digest);
      if (when === 'after') await held;
    };
    // The first client gets every byte once they are verified, before the commit.
    const first = await get(url);
    expect(sha256(first.body)).toBe(blob.digest);
    const download = () => m.mirror.downloads.get(parseDigest(blob.digest));
    await waitFor(() => download()?.state === 'committing', 10_000, 'the download to be committing');

    // Count the bodies the server opens (it does so once it knows the blob, during the commit).
    let opened = 0;
    const getBlob = m.mirror.getBlob.bind(m.mirror);
    m.mirror.getBlob = async (...args: Parameters<typeof getBlob>) => {
      const result = await getBlob(...args);
      const open = result.open;
      return open ? { ...result, open: (start: number, end: number | undefined) => (opened++, open(start, end)) } : result;
    };
    try {
      const baseline = bytesRead();
      const clients = Array.from({ length: 8 }, () => pausedClient(url));
      await waitFor(() => opened === 8, 10_000, 'eight bodies opened during the commit');
      expect(download()?.state).toBe('committing');
      release();
      await waitFor(() => download() === undefined, 10_000, 'the commit to finish');
      for (const c of clients) expect((await c.headers).statusCode).toBe(200);
      // Without backpressure the whole blob is read for every client: 8 × 32 MiB.
      expect(await bytesReadUntilQuiet(baseline, 96 * MiB)).toBeLessThan(96 * MiB);
      // And each of them then gets the right bytes.
      for (const c of clients) expect(sha256(await c.readAll())).toBe(blob.digest);
    } finally {
      release();
    }
  });
});

describe('a global limit on concurrent downloads (downloads.maxConcurrent)', () => {
  it('with a limit of 2, four cold blobs at once: never more than 2 upstream blob GETs in flight, and every client gets its bytes', async () => {
    const m = await mirrorWith({ downloads: { maxConcurrent: 2 } });
    const blobs = [1, 2, 3, 4].map(() => coldBlob(4 * MiB));
    let peak = 0;
    upstream.fault = (r) => {
      if (r.kind !== 'blob' || r.method !== 'GET') return undefined;
      // In flight: the upstream has not written all of its body yet (its close event can come a tick late).
      peak = Math.max(peak, blobGets().filter((q) => !q.closed && (q.bytesSent ?? 0) < 4 * MiB).length);
      return { bytesPerSecond: 8 * MiB };
    };
    const results = await Promise.all(blobs.map((b) => get(`${m.url}${b.path}`)));
    results.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(sha256(r.body)).toBe(blobs[i]!.digest);
    });
    expect(blobGets()).toHaveLength(4);
    expect(peak).toBe(2);
    expect(await metric(m, 'mirror_downloads_active')).toBe(0);
    expect(await metric(m, 'mirror_downloads_refused_total')).toBe(0);
  });

  it('past the queue a new cold download is refused with 429 TOOMANYREQUESTS and Retry-After; joining the running one is not limited', async () => {
    const m = await mirrorWith({ downloads: { maxConcurrent: 1, maxQueued: 0 } });
    const [running, refused] = [coldBlob(4 * MiB), coldBlob(1 * MiB)];
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { bytesPerSecond: 4 * MiB } : undefined);
    const first = get(`${m.url}${running.path}`);
    await waitFor(() => blobGets().length === 1, 10_000, 'the first download to start');
    expect(await metric(m, 'mirror_downloads_active')).toBe(1);
    const joiner = get(`${m.url}${running.path}`);
    const no = await get(`${m.url}${refused.path}`);
    expect(no.status).toBe(429);
    expect(JSON.parse(no.body.toString()).errors[0].code).toBe('TOOMANYREQUESTS');
    expect(Number(no.headers['retry-after'])).toBeGreaterThan(0);
    for (const r of [await first, await joiner]) expect(sha256(r.body)).toBe(running.digest);
    expect(blobGets()).toHaveLength(1);
    expect(await metric(m, 'mirror_downloads_refused_total')).toBe(1);
    // With the slot free again, it is downloaded.
    const later = await get(`${m.url}${refused.path}`);
    expect(sha256(later.body)).toBe(refused.digest);
  });

  it('a new download that waits longer than downloads.queueTimeout for a slot is refused the same way', async () => {
    const m = await mirrorWith({ downloads: { maxConcurrent: 1, maxQueued: 10, queueTimeout: '300ms' } });
    const [slow, waiting] = [coldBlob(8 * MiB), coldBlob(1 * MiB)];
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { bytesPerSecond: 2 * MiB } : undefined);
    const first = get(`${m.url}${slow.path}`);
    await waitFor(() => blobGets().length === 1, 10_000, 'the first download to start');
    const no = await get(`${m.url}${waiting.path}`);
    expect(no.status).toBe(429);
    expect(no.headers['retry-after']).toBeDefined();
    expect(blobGets()).toHaveLength(1);
    expect(sha256((await first).body)).toBe(slow.digest);
  });
});

describe('an abandoned download (downloads.abandonAfter)', () => {
  it('is cancelled once no client has read it for the grace period: the upstream connection closes, the temp file goes, the next request starts afresh', async () => {
    const m = await mirrorWith({ downloads: { abandonAfter: '500ms' } });
    const blob = coldBlob(64 * MiB);
    // 16 s at this pace: the download would go on long after its client left.
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { bytesPerSecond: 4 * MiB } : undefined);
    const left = await get(`${m.url}${blob.path}`, { abortAfter: 256 * 1024 });
    expect(left.truncated).toBe(true);
    await waitFor(() => blobGets()[0]?.closed === true, 10_000, 'the upstream connection to close');
    expect(blobGets()[0]!.completed).toBe(false);
    expect(blobGets()[0]!.bytesSent!).toBeLessThan(blob.bytes.length);
    await waitFor(() => readdirSync(join(m.storage, 'tmp')).length === 0, 10_000, 'the temp file to go');
    expect(existsSync(blobFile(m.storage, blob.digest))).toBe(false);
    expect(await metric(m, 'mirror_downloads_abandoned_total')).toBe(1);
    upstream.fault = undefined;
    const again = await get(`${m.url}${blob.path}`);
    expect(sha256(again.body)).toBe(blob.digest);
    expect(blobGets()).toHaveLength(2);
  });

  it('goes on when it is more than half done: the next request is a hit', async () => {
    const m = await mirrorWith({ downloads: { abandonAfter: '200ms' } });
    const blob = coldBlob(8 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { bytesPerSecond: 4 * MiB } : undefined);
    // The client read 5 of 8 MiB: the download has at least that.
    const left = await get(`${m.url}${blob.path}`, { abortAfter: 5 * MiB });
    expect(left.truncated).toBe(true);
    await waitFor(() => existsSync(blobFile(m.storage, blob.digest)), 20_000, 'the blob to be committed');
    expect(blobGets()).toHaveLength(1);
    await waitFor(() => blobGets()[0]!.completed === true, 10_000, 'the upstream response to be sent to its end');
  });
});

describe('segmented downloads', () => {
  it('when one segment fails for good the others are cancelled at once; the client sees a cut connection, and a retry gets the right bytes', async () => {
    const m = await mirrorWith({ downloads: { segments: 4, segmentThreshold: '1MiB', resumeAttempts: 1 } });
    const blob = coldBlob(32 * MiB);
    // Segments of 8 MiB; the third one is refused (final), the others take 4 s each.
    upstream.fault = (r) => {
      if (r.kind !== 'blob' || r.method !== 'GET') return undefined;
      if (r.range?.startsWith(`bytes=${16 * MiB}-`)) return { status: 404 };
      return { bytesPerSecond: 2 * MiB };
    };
    const cut = await get(`${m.url}${blob.path}`);
    expect(cut.truncated || cut.status >= 400).toBe(true);
    const others = () => blobGets().filter((r) => r.status !== 404);
    expect(others()).toHaveLength(3); // the whole-blob GET (the first segment), segments 2 and 4
    await waitFor(() => others().every((r) => r.closed), 10_000, 'every other segment connection to close');
    for (const r of others()) expect(r.completed, `segment ${r.range ?? 'first'}`).toBe(false);
    await waitFor(() => readdirSync(join(m.storage, 'tmp')).length === 0, 10_000, 'the temp file to go');
    upstream.fault = undefined;
    const retry = await get(`${m.url}${blob.path}`);
    expect(sha256(retry.body)).toBe(blob.digest);
  });
});
