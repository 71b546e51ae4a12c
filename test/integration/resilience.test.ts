// Upstream trouble never becomes the user's trouble (issue 4): stale-if-error, errors that
// name the upstream, retries, token renewal, the circuit breaker, rate-limit awareness and
// offline mode — each fault injected by a counting upstream on loopback, time from a
// manual clock (no sleeping through TTLs).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { deferred } from '../fixtures/wait.js';

const MINUTE = 60_000;
let upstream: FakeUpstream;
let mirror: TestMirror;
const clock = new ManualClock();
let serial = 0;

function errorOf(body: Buffer): { code: string; message: string; detail?: Record<string, unknown> } {
  return JSON.parse(body.toString()).errors[0];
}

/** A new repository with one tag, pulled once through the mirror so it is cached. */
async function cachedTag(): Promise<{ repo: string; url: string; digest: string }> {
  const repo = `team/app${++serial}`;
  const image = addTinyImage(upstream, repo, 'v1', `seed-${serial}`);
  const url = `${mirror.url}/v2/${repo}/manifests/v1`;
  const first = await get(url);
  expect(first.status).toBe(200);
  return { repo, url, digest: image.digest };
}

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  mirror = await startMirror({
    upstreamUrl: upstream.url,
    clock,
    ttl: '10m',
    document: {
      retries: { attempts: 2, baseDelay: '10ms', maxDelay: '1500ms' },
      breaker: { failures: 3, cooldown: '30s' },
      timeouts: { headers: '2s' },
    },
  });
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('stale-if-error', () => {
  it.each([
    ['503', { status: 503 }],
    ['500', { status: 500 }],
    ['429', { status: 429, headers: { 'retry-after': '3600' } }],
  ])('a stale tag whose revalidation gets %s is served from the cache with a Warning', async (_name, fault) => {
    const tag = await cachedTag();
    clock.advance(11 * MINUTE);
    upstream.fault = (r) => (r.kind === 'manifest' ? fault : undefined);
    // prom-client hands out live objects: read the number at once.
    const staleTotal = async () => (await mirror.mirror.metrics.staleServed.get()).values.reduce((sum, v) => sum + v.value, 0);
    const before = await staleTotal();
    const r = await get(tag.url);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(tag.digest);
    expect(r.headers.warning).toMatch(/^110 registry-mirror "Response is stale: upstream docker\.io unavailable/);
    expect(await mirror.accessFor(r.headers)).toMatchObject({ outcome: 'stale', status: 200 });
    expect((await staleTotal()) - before).toBe(1);
    upstream.fault = undefined;
    // Once the upstream is back, the next request revalidates it with one HEAD.
    upstream.reset();
    const fresh = await get(tag.url);
    expect(fresh.headers.warning).toBeUndefined();
    expect(upstream.count({ kind: 'manifest', authorized: true })).toBe(1);
    expect(upstream.count({ method: 'HEAD', kind: 'manifest', authorized: true })).toBe(1);
  });

  it('with nothing cached, a 429 reaches the client as TOOMANYREQUESTS with Retry-After', async () => {
    addTinyImage(upstream, 'team/limited', 'v1', 'limited');
    upstream.fault = (r) => (r.kind === 'manifest' ? { status: 429, headers: { 'retry-after': '3600' } } : undefined);
    const r = await get(`${mirror.url}/v2/team/limited/manifests/v1`);
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('3600');
    const e = errorOf(r.body);
    expect(e.code).toBe('TOOMANYREQUESTS');
    expect(e.message).toMatch(/docker\.io/);
  });

  it('with nothing cached, a 5xx becomes an OCI error naming the upstream and its status', async () => {
    addTinyImage(upstream, 'team/broken', 'v1', 'broken');
    upstream.fault = (r) => (r.kind === 'manifest' ? { status: 500 } : undefined);
    const r = await get(`${mirror.url}/v2/team/broken/manifests/v1`);
    expect(r.status).toBe(502);
    const e = errorOf(r.body);
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.detail).toMatchObject({ upstream: 'docker.io', status: 500 });
  });
});

describe('retries and time-outs', () => {
  it('retries a 503 with back-off and succeeds', async () => {
    addTinyImage(upstream, 'team/flaky', 'v1', 'flaky');
    let n = 0;
    upstream.fault = (r) => (r.kind === 'manifest' && ++n <= 2 ? { status: 503 } : undefined);
    const r = await get(`${mirror.url}/v2/team/flaky/manifests/v1`);
    expect(r.status).toBe(200);
    expect(upstream.count({ kind: 'manifest', authorized: true })).toBe(3);
  });

  it('honours a short Retry-After', async () => {
    addTinyImage(upstream, 'team/slowdown', 'v1', 'slowdown');
    let n = 0;
    upstream.fault = (r) => (r.kind === 'manifest' && ++n === 1 ? { status: 429, headers: { 'retry-after': '1' } } : undefined);
    const started = Date.now();
    const r = await get(`${mirror.url}/v2/team/slowdown/manifests/v1`);
    expect(r.status).toBe(200);
    // One 429, one retry after the second the upstream asked for (not the back-off's 10 ms).
    expect(upstream.requests.filter((q) => q.kind === 'manifest' && q.status !== 401).map((q) => q.status)).toEqual([429, 200]);
    const retries = mirror.logs.filter((l) => l.msg === 'retrying upstream request' && l.path === '/v2/team/slowdown/manifests/v1');
    expect(retries.map((l) => [l.status, l.delayMs])).toEqual([[429, 1000]]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
  });

  it('gives up on an upstream that does not answer within the header time-out', async () => {
    addTinyImage(upstream, 'team/stalled', 'v1', 'stalled');
    // The upstream never answers (until the test is over): only the time-out can end each attempt.
    const never = deferred();
    upstream.fault = (r) => (r.kind === 'manifest' ? { gate: never.promise } : undefined);
    try {
      const r = await get(`${mirror.url}/v2/team/stalled/manifests/v1`);
      expect(r.status).toBe(502);
      const e = errorOf(r.body);
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toMatch(/docker\.io is unreachable: UND_ERR_HEADERS_TIMEOUT/);
      // The first attempt and the two retries configured, each given up on.
      expect(upstream.count({ kind: 'manifest', authorized: true })).toBe(3);
      expect(upstream.requests.filter((q) => q.kind === 'manifest' && q.status !== 401).every((q) => q.status === undefined)).toBe(true);
    } finally {
      never.resolve();
    }
  });
});

describe('token expiry mid-pull', () => {
  it('a 401 with a token that was valid re-negotiates once and continues', async () => {
    const tag = await cachedTag();
    const tokensBefore = upstream.count({ kind: 'token' });
    upstream.expireTokens();
    const r = await get(`${mirror.url}/v2/${tag.repo}/manifests/${tag.digest}`);
    expect(r.status).toBe(200);
    // The manifest is cached by digest: fetch a blob instead, which must go upstream.
    const layer = addTinyImage(upstream, tag.repo, 'v2', `again-${serial}`).layer;
    const b = await get(`${mirror.url}/v2/${tag.repo}/blobs/${layer}`);
    expect(b.status).toBe(200);
    expect(upstream.count({ kind: 'token' }) - tokensBefore).toBe(1);
  });
});

describe('tokens per repository', () => {
  it('asks for one token per repository scope and sends each only where its scope holds (no 401 round trips)', async () => {
    await cachedTag(); // the upstream's challenge is known from here on
    const repos = [`team/scoped-a${serial}`, `team/scoped-b${serial}`];
    const layers = repos.map((repo) => [1, 2, 3].map((i) => upstream.addBlob(Buffer.from(`scoped ${repo} ${i}`), [repo])));
    upstream.reset();
    // Alternate between the two repositories, each blob a cold fetch.
    for (let i = 0; i < 3; i++) {
      for (const [r, repo] of repos.entries()) {
        const b = await get(`${mirror.url}/v2/${repo}/blobs/${layers[r]![i]}`);
        expect(b.status).toBe(200);
        expect(sha256(b.body)).toBe(layers[r]![i]);
      }
    }
    for (const repo of repos) {
      const scope = new URLSearchParams({ scope: `repository:${repo}:pull` }).toString();
      expect([repo, upstream.requests.filter((q) => q.kind === 'token' && q.query.includes(scope)).length]).toEqual([repo, 1]);
    }
    expect(upstream.count({ kind: 'token' })).toBe(2);
    expect(upstream.requests.filter((q) => q.status === 401)).toEqual([]);
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(6);
  });
});

describe('circuit breaker', () => {
  it('after repeated failures answers from the cache at once, then probes once the cooldown is over', async () => {
    const tag = await cachedTag();
    clock.advance(11 * MINUTE);
    upstream.fault = (r) => (r.kind === 'manifest' ? { status: 503 } : undefined);
    upstream.reset();
    // Three failing requests (each with its retries) open the breaker: each one is the upstream's 503, passed on.
    for (let i = 0; i < 3; i++) {
      const missing = await get(`${mirror.url}/v2/team/nothing${i}/manifests/v1`);
      expect(missing.status).toBe(503);
      expect(errorOf(missing.body)).toMatchObject({ code: 'UNAVAILABLE', detail: { upstream: 'docker.io', status: 503 } });
      expect(errorOf(missing.body).message).not.toMatch(/marked down/);
    }
    expect(upstream.count({ kind: 'manifest', authorized: true })).toBe(3 * 3);
    upstream.reset();
    const stale = await get(tag.url);
    expect(stale.status).toBe(200);
    expect(stale.headers.warning).toMatch(/marked down/);
    const down = await get(`${mirror.url}/v2/team/nothing9/manifests/v1`);
    expect(down.status).toBe(503);
    expect(errorOf(down.body).message).toMatch(/marked down/);
    expect(upstream.requests).toHaveLength(0);
    const gauge = await mirror.mirror.metrics.registry.getSingleMetricAsString('mirror_upstream_up');
    expect(gauge).toContain('mirror_upstream_up{upstream="docker.io"} 0');
    // After the cooldown one probe goes; it succeeds and the breaker closes.
    upstream.fault = undefined;
    clock.advance(31_000);
    const recovered = await get(tag.url);
    expect(recovered.status).toBe(200);
    expect(recovered.headers.warning).toBeUndefined();
    expect(upstream.count({ method: 'HEAD', kind: 'manifest', authorized: true })).toBe(1);
  });
});

describe('rate-limit awareness', () => {
  it('records ratelimit-remaining and stops revalidating when it runs low', async () => {
    const repo = `team/ratelimited${++serial}`;
    addTinyImage(upstream, repo, 'v1', repo);
    upstream.fault = (r) => (r.kind === 'manifest' ? { headers: { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '3;w=21600' } } : undefined);
    const url = `${mirror.url}/v2/${repo}/manifests/v1`;
    expect((await get(url)).status).toBe(200);
    const gauge = await mirror.mirror.metrics.rateLimitRemaining.get();
    expect(gauge.values.find((v) => v.labels.upstream === 'docker.io')?.value).toBe(3);
    clock.advance(11 * MINUTE);
    upstream.reset();
    const r = await get(url);
    expect(r.status).toBe(200);
    expect(r.headers.warning).toMatch(/rate limit nearly spent/);
    expect(upstream.requests).toHaveLength(0);
    // Remaining budget recovers: the upstream says so on the next answer it gives.
    upstream.fault = (r2) => (r2.kind === 'manifest' ? { headers: { 'ratelimit-remaining': '90;w=21600' } } : undefined);
    expect((await get(`${mirror.url}/v2/${repo}/manifests/missing`)).status).toBe(404);
  });
});

describe('offline mode', () => {
  it('serves cached tags whatever their age, never calls the upstream, and says a miss is offline', async () => {
    const tag = await cachedTag();
    await mirror.mirror.index.flushAccessTimes();
    const offline = await startMirror({ upstreamUrl: upstream.url, storage: mirror.storage, offline: true, clock });
    try {
      clock.advance(24 * 60 * MINUTE);
      upstream.reset();
      const hit = await get(`${offline.url}/v2/${tag.repo}/manifests/v1`);
      expect(hit.status).toBe(200);
      expect(hit.headers['docker-content-digest']).toBe(tag.digest);
      const miss = await get(`${offline.url}/v2/team/never-pulled/manifests/v1`);
      expect(miss.status).toBe(404);
      expect(errorOf(miss.body).message).toMatch(/offline/);
      const blobMiss = await get(`${offline.url}/v2/team/never-pulled/blobs/sha256:${'1'.repeat(64)}`);
      expect(blobMiss.status).toBe(404);
      expect(upstream.requests).toHaveLength(0);
    } finally {
      await offline.stop({ keepStorage: true });
    }
  });
});
