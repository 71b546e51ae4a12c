// Client-provoked outages and wrong 5xx answers (issue 13), against a real upstream (CNCF
// distribution with Bearer token auth behind a counting front): requests an anonymous client
// can make on purpose must not mark the upstream down for everyone, a client's bad request is
// a 4xx, and one client's cold misses are bounded without touching anyone else's.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { pseudoRandomBytes, sha256, startFakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: RealUpstream;
let content: SeededContent;
let mirror: TestMirror;
const clock = new ManualClock(Date.now());

const errorOf = (b: Buffer) => JSON.parse(b.toString()).errors[0] as { code: string; message: string; detail?: Record<string, unknown> };
const upGauge = async (m: TestMirror) => m.mirror.metrics.registry.getSingleMetricAsString('mirror_upstream_up');

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
  mirror = await startMirror({
    upstreamUrl: upstream.url,
    clock,
    document: {
      retries: { attempts: 2, baseDelay: '10ms', maxDelay: '100ms' },
      breaker: { failures: 5, cooldown: '30s' },
    },
  });
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

describe('requests a client provokes do not mark the upstream down', () => {
  it('six requests for a 255-character one-component name, then six for a layer asked as a manifest: a cold pull of another image still gets 200', async () => {
    const longName = 'a'.repeat(255);
    const layer = content.debian.content.images[0]!.layers[0]!.digest;
    const longNameStatuses: number[] = [];
    for (let i = 0; i < 6; i++) longNameStatuses.push((await get(`${mirror.url}/v2/${longName}/manifests/latest`)).status);
    let pull = await get(`${mirror.url}/v2/library/busybox/manifests/${content.busybox.tag}`);
    expect(pull.status).toBe(200);
    expect(pull.headers['docker-content-digest']).toBe(content.busybox.digest);
    expect(await upGauge(mirror)).toContain('mirror_upstream_up{upstream="docker.io"} 1');
    expect(longNameStatuses).toEqual(Array(6).fill(400));

    // The same with a request that does reach the upstream and gets its 500.
    upstream.resetCounts();
    for (let i = 0; i < 6; i++) await get(`${mirror.url}/v2/library/debian/manifests/${layer}`);
    expect(upstream.count({ kind: 'manifest', path: new RegExp(`/manifests/${layer}$`), status: 500 })).toBeGreaterThanOrEqual(6);
    pull = await get(`${mirror.url}/v2/library/debian/manifests/${content.debian.tag}`);
    expect(pull.status).toBe(200);
    expect(pull.headers['docker-content-digest']).toBe(content.debian.digest);
    expect(await upGauge(mirror)).toContain('mirror_upstream_up{upstream="docker.io"} 1');
  });
});

describe("a client's bad request is a 4xx from the mirror", () => {
  it('a 250-character one-component name (258 with library/) is 400 NAME_INVALID without asking the upstream', async () => {
    upstream.resetCounts();
    const r = await get(`${mirror.url}/v2/${'a'.repeat(250)}/manifests/latest`);
    expect(r.status).toBe(400);
    expect(errorOf(r.body).code).toBe('NAME_INVALID');
    const blob = await get(`${mirror.url}/v2/${'b'.repeat(250)}/blobs/sha256:${'1'.repeat(64)}`);
    expect(blob.status).toBe(400);
    expect(errorOf(blob.body).code).toBe('NAME_INVALID');
    const tags = await get(`${mirror.url}/v2/${'c'.repeat(250)}/tags/list`);
    expect(tags.status).toBe(400);
    expect(upstream.requests).toHaveLength(0);
    expect(upstream.count({})).toBe(0);
  });

  it('a layer digest asked as a manifest is a 4xx (404 MANIFEST_UNKNOWN once the mirror holds the layer as a blob)', async () => {
    const layer = content.alpine.content.images[0]!.layers[0]!;
    const blob = await get(`${mirror.url}/v2/library/alpine/blobs/${layer.digest}`);
    expect(blob.status).toBe(200);
    upstream.resetCounts();
    for (const method of ['GET', 'HEAD']) {
      const r = await get(`${mirror.url}/v2/library/alpine/manifests/${layer.digest}`, { method });
      expect(r.status).toBe(404);
      if (method === 'GET') expect(errorOf(r.body).code).toBe('MANIFEST_UNKNOWN');
    }
    // The upstream was asked (it might have had a manifest with those bytes) and answered 5xx.
    expect(upstream.count({ kind: 'manifest', status: 500 })).toBeGreaterThan(0);
    // The blob is still served.
    expect((await get(`${mirror.url}/v2/library/alpine/blobs/${layer.digest}`)).status).toBe(200);
  });
});

describe('per-client budget of upstream misses', () => {
  /** GET from a given loopback source address (Linux routes all of 127/8 to loopback). */
  function getFrom(localAddress: string, url: string): Promise<{ status: number; code: string | undefined; retryAfter: string | undefined }> {
    return new Promise((resolve, reject) => {
      http
        .get(url, { localAddress, agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            const code = status >= 400 ? (JSON.parse(Buffer.concat(chunks).toString()) as { errors: { code: string }[] }).errors[0]!.code : undefined;
            const retryAfter = res.headers['retry-after'];
            resolve({ status, code, retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined });
          });
          res.on('error', reject);
        })
        .on('error', reject);
    });
  }

  it('a client past its misses gets 429 for cold requests; its cache hits and other clients are still served', async () => {
    const budgetClock = new ManualClock(Date.now());
    const limited = await startMirror({ upstreamUrl: upstream.url, clock: budgetClock, document: { clientMisses: { perMinute: 3 } } });
    try {
      const alpine = content.alpine;
      const amd64 = alpine.content.images[0]!;
      const A = '127.0.0.2';
      const B = '127.0.0.3';
      // Three cold requests spend client A's budget.
      expect((await getFrom(A, `${limited.url}/v2/library/alpine/manifests/${alpine.tag}`)).status).toBe(200);
      expect((await getFrom(A, `${limited.url}/v2/library/alpine/manifests/${amd64.manifest.digest}`)).status).toBe(200);
      expect((await getFrom(A, `${limited.url}/v2/library/alpine/blobs/${amd64.config.digest}`)).status).toBe(200);
      upstream.resetCounts();
      const refused = await getFrom(A, `${limited.url}/v2/library/alpine/blobs/${amd64.layers[0]!.digest}`);
      expect(refused.status).toBe(429);
      expect(refused.code).toBe('TOOMANYREQUESTS');
      expect(Number(refused.retryAfter)).toBeGreaterThan(0);
      const refusedManifest = await getFrom(A, `${limited.url}/v2/library/busybox/manifests/${content.busybox.tag}`);
      expect(refusedManifest.status).toBe(429);
      // Refused requests never reached the upstream.
      expect(upstream.count({})).toBe(0);
      // Cache hits are always served.
      expect((await getFrom(A, `${limited.url}/v2/library/alpine/manifests/${alpine.tag}`)).status).toBe(200);
      expect((await getFrom(A, `${limited.url}/v2/library/alpine/blobs/${amd64.config.digest}`)).status).toBe(200);
      // Another client address is served, cold.
      const other = await getFrom(B, `${limited.url}/v2/library/alpine/blobs/${amd64.layers[0]!.digest}`);
      expect(other.status).toBe(200);
      expect(upstream.count({ kind: 'blob', method: 'GET' })).toBeGreaterThan(0);
      // The budget refills with time.
      budgetClock.advance(60_000);
      expect((await getFrom(A, `${limited.url}/v2/library/busybox/manifests/${content.busybox.tag}`)).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });

  it('clients joining a download in flight for the same repository spend no budget and cost no upstream request', async () => {
    // A blob asked for directly (no manifest first, so no link yet), held in flight by a slow upstream.
    const slow = await startFakeUpstream();
    const bytes = pseudoRandomBytes(1024 * 1024, 'joiners');
    const digest = slow.addBlob(bytes, ['library/joined']);
    slow.fault = (req) => (req.kind === 'blob' && req.method === 'GET' ? { bytesPerSecond: 512 * 1024 } : undefined);
    const limited = await startMirror({ upstreamUrl: slow.url, document: { clientMisses: { perMinute: 3 } } });
    try {
      const url = `${limited.url}/v2/library/joined/blobs/${digest}`;
      const first = get(url);
      await waitFor(() => slow.count({ kind: 'blob', method: 'GET' }) === 1, 10_000, 'the download to start');
      const joiners = await Promise.all(Array.from({ length: 10 }, () => get(url)));
      const all = [await first, ...joiners];
      expect(all.map((r) => r.status)).toEqual(Array(11).fill(200));
      for (const r of all) expect(sha256(r.body)).toBe(digest);
      expect(slow.count({ kind: 'blob', method: 'GET' })).toBe(1);
      expect(slow.count({ kind: 'blob', method: 'HEAD' })).toBe(0);
    } finally {
      await limited.stop();
      await slow.stop();
    }
  });
});
