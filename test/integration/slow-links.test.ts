// Accelerating cold pulls over slow links (issue 8): segmented upstream downloads through a
// shaping upstream (each connection limited to a fixed rate, with latency), safe fallbacks,
// an egress proxy, and bandwidth manners.
import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startHttpProxy } from '../fixtures/http-proxy.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { deferred, waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
let segmented: TestMirror;
let single: TestMirror;
let serial = 0;

function blobPath(m: TestMirror, digest: string): string {
  return blobFile(m.storage, digest);
}

/** The last byte goes out once the digest checks; the fsync and rename into the store follow. */
async function stored(m: TestMirror, digest: string): Promise<boolean> {
  await waitFor(() => existsSync(blobPath(m, digest)), 10_000, `${digest} in the store`);
  return true;
}

function cold(size: number) {
  const bytes = pseudoRandomBytes(size, `slow-${++serial}-${Date.now()}`);
  return { bytes, digest: upstream.addBlob(bytes) };
}

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  const downloads = { segments: 4, segmentThreshold: '8MiB', resumeAttempts: 3 };
  segmented = await startMirror({ upstreamUrl: upstream.url, document: { downloads } });
  single = await startMirror({ upstreamUrl: upstream.url, document: { downloads: { ...downloads, segments: 1 } } });
});
afterAll(async () => {
  await segmented?.stop();
  await single?.stop();
  await upstream?.stop();
});
afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('segmented upstream downloads', () => {
  it('a cold 64 MiB blob is fetched as 4 Range segments in parallel (one stream when segments is 1), byte-identical', async () => {
    const blob = cold(64 * MiB);
    const blobGets = () => upstream.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.status !== 401);
    // One stream: one GET, no Range.
    const one = await get(`${single.url}/v2/team/app/blobs/${blob.digest}`);
    expect(sha256(one.body)).toBe(blob.digest);
    expect(blobGets().map((r) => r.range)).toEqual([undefined]);
    upstream.reset();
    // Segmented: every answer is held until all four requests are open at the upstream at once,
    // so the segments can only complete if the mirror really runs them in parallel (the speed
    // that buys is measured in the bench, not asserted here).
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { hold: { afterBytes: 0, until: gate.promise } } : undefined);
    const pending = get(`${segmented.url}/v2/team/app/blobs/${blob.digest}`);
    await waitFor(() => blobGets().length === 4, 30_000, 'four segment requests open at the upstream at the same time');
    gate.resolve();
    const four = await pending;
    expect(four.body.equals(blob.bytes)).toBe(true);
    const gets = blobGets();
    expect(gets).toHaveLength(4);
    expect(gets[0]!.range).toBeUndefined();
    expect(gets.slice(1).map((r) => r.range).sort()).toEqual(['bytes=16777216-33554431', 'bytes=33554432-50331647', 'bytes=50331648-67108863']);
    expect(gets.slice(1).every((r) => r.status === 206)).toBe(true);
    expect(await stored(segmented, blob.digest)).toBe(true);
  });

  it('falls back to one stream when the upstream ignores Range (200 to a ranged request)', async () => {
    const blob = cold(16 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' && r.range ? { ignoreRange: true } : undefined);
    const r = await get(`${segmented.url}/v2/team/app/blobs/${blob.digest}`);
    expect(r.body.equals(blob.bytes)).toBe(true);
    expect(segmented.logs.some((l) => l.msg === 'segmented download not possible; continuing with one stream' && /ignored Range/.test(String(l.reason)))).toBe(true);
  });

  it('falls back when the content changes between segments (another ETag / length)', async () => {
    const lies: Record<string, string>[] = [{ etag: '"something-else"' }, { 'content-range': `bytes 0-1/99` }];
    for (const headers of lies) {
      const blob = cold(16 * MiB);
      upstream.fault = (r) => (r.kind === 'blob' && r.range ? { headers } : undefined);
      const r = await get(`${segmented.url}/v2/team/app/blobs/${blob.digest}`);
      expect(r.body.equals(blob.bytes)).toBe(true);
      expect(await stored(segmented, blob.digest)).toBe(true);
    }
  });

  it('retries a segment that was reset on its own, from its last byte', async () => {
    const blob = cold(16 * MiB);
    let resets = 0;
    upstream.fault = (r) => (r.kind === 'blob' && r.range?.startsWith('bytes=8388608-') && resets++ === 0 ? { resetAfter: 1 * MiB } : undefined);
    const r = await get(`${segmented.url}/v2/team/app/blobs/${blob.digest}`);
    expect(r.body.equals(blob.bytes)).toBe(true);
    const retried = upstream.requests.filter((q) => q.kind === 'blob' && q.range && !q.range.startsWith('bytes=8388608-') && Number(/bytes=(\d+)-/.exec(q.range)![1]) > 8 * MiB && Number(/bytes=(\d+)-/.exec(q.range)![1]) < 12 * MiB);
    expect(retried).toHaveLength(1);
  });

  it('content that is wrong in one segment never enters the cache', async () => {
    const blob = cold(16 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' && r.range?.startsWith('bytes=12582912-') ? { corrupt: true } : undefined);
    const r = await get(`${segmented.url}/v2/team/app/blobs/${blob.digest}`);
    expect(r.truncated).toBe(true);
    expect(existsSync(blobPath(segmented, blob.digest))).toBe(false);
  });
});

describe('an egress proxy', () => {
  it('carries all upstream traffic when configured, and NO_PROXY hosts bypass it', async () => {
    const proxy = await startHttpProxy();
    const viaProxy = await startMirror({ upstreamUrl: upstream.url, document: { upstreams: { 'docker.io': { url: upstream.url, proxy: proxy.url } } } });
    try {
      const blob = cold(1 * MiB);
      const r = await get(`${viaProxy.url}/v2/team/app/blobs/${blob.digest}`);
      expect(sha256(r.body)).toBe(blob.digest);
      const upstreamHost = new URL(upstream.url).host;
      expect(proxy.carried.length).toBeGreaterThan(0);
      expect(proxy.carried.every((h) => h === upstreamHost)).toBe(true);
    } finally {
      await viaProxy.stop();
    }
    // From the environment: HTTP_PROXY is used, except for NO_PROXY hosts.
    const saved = { HTTP_PROXY: process.env.HTTP_PROXY, NO_PROXY: process.env.NO_PROXY };
    process.env.HTTP_PROXY = proxy.url;
    try {
      for (const noProxy of ['', '127.0.0.1']) {
        process.env.NO_PROXY = noProxy;
        proxy.carried.length = 0;
        const m = await startMirror({ upstreamUrl: upstream.url });
        try {
          const blob = cold(1 * MiB);
          expect(sha256((await get(`${m.url}/v2/team/app/blobs/${blob.digest}`)).body)).toBe(blob.digest);
          if (noProxy) expect(proxy.carried).toEqual([]);
          else expect(proxy.carried.length).toBeGreaterThan(0);
        } finally {
          await m.stop();
        }
      }
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      await proxy.stop();
    }
  });
});

describe('bandwidth manners', () => {
  it('a per-upstream byte rate caps the download speed', async () => {
    const capped = await startMirror({ upstreamUrl: upstream.url, document: { upstreams: { 'docker.io': { url: upstream.url, maxBytesPerSecond: '8MiB', maxConnections: 2 } } } });
    try {
      const blob = cold(8 * MiB);
      const r = await get(`${capped.url}/v2/team/app/blobs/${blob.digest}`);
      expect(sha256(r.body)).toBe(blob.digest);
      // 8 MiB at 8 MiB/s: about a second, not the few milliseconds loopback would take.
      expect(r.ms).toBeGreaterThan(800);
    } finally {
      await capped.stop();
    }
  });
});
