// Single-flight downloads with progressive fan-out (issue 3), against a counting,
// fault-injecting upstream on loopback.
import { existsSync, readdirSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { deferred, waitFor } from '../fixtures/wait.js';

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
  // One download is one whole GET (`ranged: false`): on a loaded machine loopback can look like a
  // slow link, and the default segments: auto may add Range GETs for pieces of that download.
  it('20 concurrent clients on a cold 64 MiB blob cause exactly one upstream GET and all get the right bytes', async () => {
    const blob = coldBlob(64 * MiB);
    // The upstream sends 1 MiB, then holds the rest until every client has its answer: all 20
    // overlap with the one download, whatever the machine's pace.
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    let answered = 0;
    const all = Promise.all(Array.from({ length: 20 }, () => get(blob.url, { onHeaders: () => answered++ })));
    await waitFor(() => answered === 20, 30_000, 'all 20 clients to have their response headers');
    // One download: one GET of the whole blob. (The held upstream looks like a slow link, so
    // the default segments: auto may add Range GETs for pieces of that one download.)
    const wholeGets = () => upstream.count({ method: 'GET', kind: 'blob', authorized: true, ranged: false });
    expect(wholeGets()).toBe(1);
    gate.resolve();
    const results = await all;
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.truncated).toBe(false);
      expect(r.body.length).toBe(blob.bytes.length);
      expect(sha256(r.body)).toBe(blob.digest);
    }
    expect(wholeGets()).toBe(1);
    const ranges = upstream.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.status !== 401 && r.range).map((r) => r.range);
    expect(new Set(ranges).size).toBe(ranges.length);
    const lines = () => mirror.accessLog().filter((l) => l.path === `/v2/team/app/blobs/${blob.digest}`);
    await waitFor(() => lines().length === 20);
    // One started the download; the 19 others joined it while it ran (not cache hits).
    expect(lines().map((l) => l.outcome).sort()).toEqual(['miss', ...Array(19).fill('coalesced')].sort());
  });

  it('a client that stops reading does not delay another client on the same cold blob', async () => {
    const blob = coldBlob(16 * MiB);
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    // The stalled client: it starts the download, then reads nothing more.
    let stalled: IncomingMessage | undefined;
    const stalledResult = get(blob.url, { onHeaders: (res) => ((stalled = res), res.pause()) });
    await waitFor(() => stalled !== undefined, 30_000, 'the stalled client to be answered');
    let fastAnswered = false;
    const fastResult = get(blob.url, { onHeaders: () => (fastAnswered = true) });
    await waitFor(() => fastAnswered, 30_000, 'the second client to join the download');
    gate.resolve();
    let stalledDone = false;
    void stalledResult.then(() => (stalledDone = true));
    const fast = await fastResult;
    expect(fast.status).toBe(200);
    expect(sha256(fast.body)).toBe(blob.digest);
    // The whole blob reached the second client while the first still sat on its first bytes.
    expect(stalledDone).toBe(false);
    expect(stalled!.readableFlowing).toBe(false);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true, ranged: false })).toBe(1);
    expect((await mirror.accessFor(fast.headers)).outcome).toBe('coalesced');
    stalled!.resume();
    const late = await stalledResult;
    expect(sha256(late.body)).toBe(blob.digest);
    expect((await mirror.accessFor(late.headers)).outcome).toBe('miss');
  });

  it('a client that disconnects mid-stream does not stop the cache fill; the next request is a hit', async () => {
    const blob = coldBlob(24 * MiB);
    upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 48 * MiB } : undefined);
    const aborted = await get(blob.url, { abortAfter: 1 * MiB });
    expect(aborted.truncated).toBe(true);
    await waitFor(() => existsSync(blobPath(blob.digest)));
    const again = await get(blob.url);
    expect(sha256(again.body)).toBe(blob.digest);
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true, ranged: false })).toBe(1);
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
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true, ranged: false })).toBe(1);
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
    // Both clients are reading the download before the (corrupt) rest of it arrives.
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { corrupt: true, hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    let answered = 0;
    const both = Promise.all([get(blob.url, { onHeaders: () => answered++ }), get(blob.url, { onHeaders: () => answered++ })]);
    await waitFor(() => answered === 2, 30_000, 'both clients to be reading the download');
    gate.resolve();
    for (const r of await both) {
      // The client never receives a complete, wrong blob: its connection is cut.
      expect(r.status).toBe(200);
      expect(r.truncated).toBe(true);
      expect(r.body.length).toBeLessThan(blob.bytes.length);
    }
    expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
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
      // 16 MiB at 2 MiB/s needs 8 s: it was stopped after about a second without a client, and
      // not started again (the slow link may have had it add Range pieces before it stopped).
      expect(upstream.count({ kind: 'blob', method: 'GET', authorized: true, ranged: false })).toBe(1);
      expect(upstream.count({ kind: 'blob', method: 'GET', authorized: true })).toBeLessThanOrEqual(5);
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
    // The upstream answers only once all 10 requests have reached the mirror (each joins the
    // one fetch as it is dispatched: nothing between the request and the join waits on I/O).
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'manifest' ? { gate: gate.promise } : undefined);
    const path = '/v2/team/app/manifests/coalesce';
    let arrived = 0;
    const onRequest = (req: IncomingMessage) => void (req.url === path && arrived++);
    mirror.server.server.on('request', onRequest);
    try {
      const all = Promise.all(Array.from({ length: 10 }, () => get(`${mirror.url}${path}`)));
      await waitFor(() => arrived === 10, 30_000, 'all 10 requests to reach the mirror');
      await waitFor(() => upstream.count({ method: 'GET', kind: 'manifest', authorized: true }) === 1, 30_000, 'the upstream GET');
      gate.resolve();
      const results = await all;
      for (const r of results) {
        expect(r.status).toBe(200);
        expect(r.headers['docker-content-digest']).toBe(digest);
        expect(r.body.equals(manifest)).toBe(true);
      }
      expect(upstream.count({ method: 'GET', kind: 'manifest', authorized: true })).toBe(1);
      const lines = () => mirror.accessLog().filter((l) => l.path === path);
      await waitFor(() => lines().length === 10);
      expect(lines().map((l) => l.outcome).sort()).toEqual(['miss', ...Array(9).fill('coalesced')].sort());
    } finally {
      mirror.server.server.off('request', onRequest);
    }
  });
});
