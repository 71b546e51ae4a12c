// Single-flight downloads with progressive fan-out (issue 3), against a counting,
// fault-injecting upstream on loopback.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
let mirror: TestMirror;
let serial = 0;

/** A fresh blob nobody has asked for yet. */
function coldBlob(size: number): { digest: string; bytes: Buffer; url: string } {
  const bytes = pseudoRandomBytes(size, `blob-${++serial}-${Date.now()}`);
  const digest = upstream.addBlob(bytes);
  return { digest, bytes, url: `${mirror.url}/v2/team/app/blobs/${digest}` };
}

function blobPath(digest: string): string {
  return blobFile(mirror.storage, digest);
}

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  mirror = await startMirror({ upstreamUrl: upstream.url, document: { retries: { attempts: 1, baseDelay: '10ms', maxDelay: '50ms' } } });
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('one upstream download for any number of clients', () => {
  it('20 concurrent clients on a cold 64 MiB blob cause exactly one upstream GET and all get the right bytes', async () => {
    const blob = coldBlob(64 * MiB);
    // Slow the upstream a little so that the clients really overlap with the download.
    upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 256 * MiB } : undefined);
    const results = await Promise.all(Array.from({ length: 20 }, () => get(blob.url)));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.truncated).toBe(false);
      expect(r.body.length).toBe(blob.bytes.length);
      expect(sha256(r.body)).toBe(blob.digest);
    }
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
    const lines = () => mirror.accessLog().filter((l) => l.path === `/v2/team/app/blobs/${blob.digest}`);
    await waitFor(() => lines().length === 20);
    const outcomes = lines().map((l) => l.outcome);
    expect(outcomes.filter((o) => o === 'miss')).toHaveLength(1);
    expect(outcomes.filter((o) => o === 'coalesced' || o === 'hit')).toHaveLength(19);
  });

  it('a client reading at ~1 MiB/s does not delay a fast client on the same cold blob', async () => {
    const blob = coldBlob(16 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 32 * MiB } : undefined);
    const slow = get(blob.url, { bytesPerSecond: 1 * MiB, abortAfter: 6 * MiB });
    await new Promise((r) => setTimeout(r, 50));
    const fast = await get(blob.url);
    expect(sha256(fast.body)).toBe(blob.digest);
    // The download itself takes ~0.5 s at 32 MiB/s; the slow reader needs 16 s for the blob.
    expect(fast.ms).toBeLessThan(5_000);
    const slowResult = await slow;
    expect(slowResult.body.length).toBeLessThan(blob.bytes.length);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
  });

  it('a client that disconnects mid-stream does not stop the cache fill; the next request is a hit', async () => {
    const blob = coldBlob(24 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 48 * MiB } : undefined);
    const aborted = await get(blob.url, { abortAfter: 1 * MiB });
    expect(aborted.truncated).toBe(true);
    await waitFor(() => existsSync(blobPath(blob.digest)));
    const again = await get(blob.url);
    expect(sha256(again.body)).toBe(blob.digest);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
    // The access line is written when the server side closes, a moment after the client's end.
    const lines = () => mirror.accessLog().filter((l) => l.path === `/v2/team/app/blobs/${blob.digest}`);
    await waitFor(() => lines().length === 2);
    expect(lines().map((l) => l.outcome).sort()).toEqual(['hit', 'miss']);
  });

  it('parallel Range requests on a cold blob return the right bytes and cause one upstream download', async () => {
    const blob = coldBlob(16 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 64 * MiB } : undefined);
    const quarter = 4 * MiB;
    const ranges = [0, 1, 2, 3].map((i) => [i * quarter, i === 3 ? blob.bytes.length - 1 : (i + 1) * quarter - 1] as const);
    const parts = await Promise.all(ranges.map(([s, e]) => get(blob.url, { headers: { range: `bytes=${s}-${e}` } })));
    parts.forEach((p, i) => {
      const [s, e] = ranges[i]!;
      expect(p.status).toBe(206);
      expect(p.headers['content-range']).toBe(`bytes ${s}-${e}/${blob.bytes.length}`);
      expect(p.body.equals(blob.bytes.subarray(s, e + 1))).toBe(true);
    });
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
    // And from the cache afterwards, a suffix range and an unsatisfiable one.
    await waitFor(() => existsSync(blobPath(blob.digest)));
    const tail = await get(blob.url, { headers: { range: 'bytes=-100' } });
    expect(tail.status).toBe(206);
    expect(tail.body.equals(blob.bytes.subarray(blob.bytes.length - 100))).toBe(true);
    const beyond = await get(blob.url, { headers: { range: `bytes=${blob.bytes.length}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers['content-range']).toBe(`bytes */${blob.bytes.length}`);
  });

  it('an upstream that drops the connection mid-blob is resumed with one Range request', async () => {
    const blob = coldBlob(8 * MiB);
    let blobGets = 0;
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' && ++blobGets === 1 ? { resetAfter: 3 * MiB } : undefined);
    const result = await get(blob.url);
    expect(result.status).toBe(200);
    expect(result.truncated).toBe(false);
    expect(sha256(result.body)).toBe(blob.digest);
    const gets = upstream.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.status !== 401);
    expect(gets).toHaveLength(2);
    expect(gets[0]!.range).toBeUndefined();
    expect(gets[1]!.range).toMatch(/^bytes=\d+-$/);
    expect(Number(/bytes=(\d+)-/.exec(gets[1]!.range!)![1])).toBeGreaterThan(0);
  });

  it('an upstream that ignores Range on the resume still yields the right blob', async () => {
    const blob = coldBlob(4 * MiB);
    let blobGets = 0;
    upstream.fault = (r) => {
      if (r.kind !== 'blob' || r.method !== 'GET') return undefined;
      return ++blobGets === 1 ? { resetAfter: 1 * MiB } : { ignoreRange: true };
    };
    const result = await get(blob.url);
    expect(sha256(result.body)).toBe(blob.digest);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(2);
  });

  it('content that does not match its digest cuts every reader and never enters the cache', async () => {
    const blob = coldBlob(4 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { corrupt: true } : undefined);
    const results = await Promise.all([get(blob.url), get(blob.url)]);
    for (const r of results) {
      // The client never receives a complete, wrong blob: its connection is cut.
      expect(r.truncated || r.status >= 500).toBe(true);
    }
    expect(existsSync(blobPath(blob.digest))).toBe(false);
    // Good bytes next time: fetched again, served, stored.
    upstream.fault = undefined;
    const good = await get(blob.url);
    expect(sha256(good.body)).toBe(blob.digest);
    await waitFor(() => existsSync(blobPath(blob.digest)));
  });

  it('a blob the upstream does not have is a 404 BLOB_UNKNOWN, and a HEAD does not download', async () => {
    const missing = `sha256:${'0'.repeat(64)}`;
    const r = await get(`${mirror.url}/v2/team/app/blobs/${missing}`);
    expect(r.status).toBe(404);
    expect(JSON.parse(r.body.toString()).errors[0].code).toBe('BLOB_UNKNOWN');
    const blob = coldBlob(1 * MiB);
    upstream.reset();
    const head = await get(blob.url, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(blob.bytes.length));
    expect(head.headers['docker-content-digest']).toBe(blob.digest);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(0);
  });
});

describe('an abandoned download', () => {
  it('goes on after its last client leaves, but only for downloads.writeTimeout', async () => {
    const impatient = await startMirror({ upstreamUrl: upstream.url, document: { downloads: { writeTimeout: '1s' } } });
    try {
      const bytes = pseudoRandomBytes(16 * MiB, `abandoned-${Date.now()}`);
      const digest = upstream.addBlob(bytes);
      upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 2 * MiB } : undefined);
      const left = await get(`${impatient.url}/v2/team/app/blobs/${digest}`, { abortAfter: 256 * 1024 });
      expect(left.truncated).toBe(true);
      await waitFor(() => impatient.logs.some((l) => l.msg === 'blob download failed; nothing was cached' && /abandoned/.test(String(l.err))), 10_000);
      await waitFor(() => readdirSync(join(impatient.storage, 'tmp')).length === 0, 10_000);
      const hex = digest.slice(7);
      expect(existsSync(join(impatient.storage, 'blobs', 'sha256', hex.slice(0, 2), hex))).toBe(false);
      // 16 MiB at 2 MiB/s needs 8 s: it was stopped after about a second without a client.
      expect(upstream.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
    } finally {
      upstream.fault = undefined;
      await impatient.stop();
    }
  });
});

describe('manifests are single-flight too', () => {
  it('concurrent identical manifest misses make one upstream GET', async () => {
    const config = upstream.addBlob(Buffer.from('{"architecture":"amd64","os":"linux"}'));
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 37 },
      layers: [],
    }));
    const digest = upstream.addManifest('team/app', 'coalesce', manifest, 'application/vnd.oci.image.manifest.v1+json');
    upstream.fault = (r) => (r.kind === 'manifest' ? { delayMs: 200 } : undefined);
    const results = await Promise.all(Array.from({ length: 10 }, () => get(`${mirror.url}/v2/team/app/manifests/coalesce`)));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.headers['docker-content-digest']).toBe(digest);
      expect(r.body.equals(manifest)).toBe(true);
    }
    expect(upstream.count({ method: 'GET', kind: 'manifest', authorized: true })).toBe(1);
  });
});
