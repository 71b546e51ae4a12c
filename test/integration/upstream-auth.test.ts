// Authentication with the upstream without wasted round trips, and Docker Hub's pull quota
// spread over several credentials (issue 15, items 3 and 4), against the real upstream:
// CNCF distribution behind a counting front, its Bearer tokens from the fixture's token
// service, which reports each credential's pulls left the way Docker Hub does.
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { waitFor } from '../fixtures/wait.js';

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json';

function image(label: string, layers = 1): Image {
  return buildImage({
    format: 'oci',
    label,
    layers: Array.from({ length: layers }, (_, i) => smallLayer([{ path: `layer${i}`, content: `${label} layer ${i}\n` }])),
  });
}

/** Token requests per scope, e.g. { 'repository:team/a:pull': 1 }. */
function tokensPerScope(upstream: RealUpstream): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const t of upstream.token.issued) for (const s of t.scopes) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

describe('no wasted round trips', () => {
  let upstream: RealUpstream;
  const repos = ['team/one', 'team/two', 'team/three', 'team/four'];
  const images = new Map<string, Image>();

  beforeAll(async () => {
    upstream = await startRealUpstream();
    for (const repo of repos) {
      const img = image(repo, 3);
      images.set(repo, img);
      await upstream.push(repo, 'v1', img);
    }
  });
  afterAll(async () => {
    await upstream?.stop();
  });

  it('20 concurrent first requests on a fresh mirror cost one 401 and one token per scope', async () => {
    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      upstream.resetCounts();
      upstream.token.issued.length = 0;
      // Per repository: the manifest, the config and three layers — 20 different requests.
      const urls = repos.flatMap((repo) => {
        const img = images.get(repo)!;
        return [
          `${mirror.url}/v2/${repo}/manifests/v1`,
          ...[img.config, ...img.layers].map((b) => `${mirror.url}/v2/${repo}/blobs/${b.digest}`),
        ];
      });
      expect(urls).toHaveLength(20);
      const responses = await Promise.all(urls.map((u) => get(u, { headers: { accept: ACCEPT } })));
      expect(responses.map((r) => r.status)).toEqual(urls.map(() => 200));
      expect(upstream.count({ status: 401 })).toBe(1);
      expect(tokensPerScope(upstream)).toEqual(Object.fromEntries(repos.map((r) => [`repository:${r}:pull`, 1])));
    } finally {
      await mirror.stop();
    }
  });

  it('renews a token in use before it expires, in the background: no request waits for the token service', async () => {
    // Tokens live 300 s (the fixture's default); the mirror's clock is moved by hand, the
    // registry's is real, so the old token stays valid upstream throughout. The mirror's clock
    // is an hour off, so it does not take the token service's issued_at for its own time.
    const clock = new ManualClock(Date.now() + 3_600_000);
    const mirror = await startMirror({ upstreamUrl: upstream.url, clock });
    try {
      upstream.resetCounts();
      upstream.token.issued.length = 0;
      const [busy, idle] = ['team/one', 'team/two'];
      const blobs = (repo: string) => [images.get(repo)!.config, ...images.get(repo)!.layers];
      expect((await get(`${mirror.url}/v2/${busy}/manifests/v1`, { headers: { accept: ACCEPT } })).status).toBe(200);
      expect((await get(`${mirror.url}/v2/${idle}/manifests/v1`, { headers: { accept: ACCEPT } })).status).toBe(200);
      expect(tokensPerScope(upstream)).toEqual({ [`repository:${busy}:pull`]: 1, [`repository:${idle}:pull`]: 1 });

      // Near the end of its life, the busy scope's token is used again while the token
      // service holds every request open: the request is answered with the old token anyway,
      // and the renewal reaches the token service.
      clock.advance(260_000);
      const release = upstream.token.hold();
      try {
        const during = await get(`${mirror.url}/v2/${busy}/blobs/${blobs(busy)[0]!.digest}`);
        expect(during.status).toBe(200);
        await waitFor(() => upstream.token.issued.length === 3, 10_000, 'the background renewal to reach the token service');
      } finally {
        release();
      }
      expect(tokensPerScope(upstream)).toEqual({ [`repository:${busy}:pull`]: 2, [`repository:${idle}:pull`]: 1 });

      // Past the old token's end, requests of the busy scope use the renewed one without
      // fetching; the idle scope was never renewed (idle scopes cost no token requests).
      clock.advance(40_000);
      expect((await get(`${mirror.url}/v2/${busy}/blobs/${blobs(busy)[1]!.digest}`)).status).toBe(200);
      expect(tokensPerScope(upstream)).toEqual({ [`repository:${busy}:pull`]: 2, [`repository:${idle}:pull`]: 1 });
      // The idle scope's token has lapsed: its next request fetches one, on the request path.
      expect((await get(`${mirror.url}/v2/${idle}/blobs/${blobs(idle)[0]!.digest}`)).status).toBe(200);
      expect(tokensPerScope(upstream)).toEqual({ [`repository:${busy}:pull`]: 2, [`repository:${idle}:pull`]: 2 });
      expect(upstream.count({ status: 401 })).toBe(1);
    } finally {
      await mirror.stop();
    }
  });
});

describe('Docker Hub quota economy: several credentials', () => {
  let upstream: RealUpstream;
  let mirror: TestMirror;
  const secrets = { alice: 'alice-hub-token-5f2c', bob: 'bob-hub-token-91ad' };
  const repo = 'team/quota';

  beforeAll(async () => {
    upstream = await startRealUpstream({ users: { ...secrets, carol: 'carol-secret' }, pullLimits: { alice: 2, bob: 4, carol: 5, anonymous: 100 } });
    const img = image(repo);
    for (let i = 1; i <= 7; i++) await upstream.push(repo, `t${i}`, img);
    mirror = await startMirror({
      upstreamUrl: upstream.url,
      document: {
        upstreams: {
          'docker.io': {
            url: upstream.url,
            credentials: [
              { username: 'alice', password: secrets.alice },
              { username: 'bob', password: secrets.bob },
            ],
          },
        },
      },
    });
  });
  afterAll(async () => {
    await mirror?.stop();
    await upstream?.stop();
  });

  it('pulls with the credential that has most left, then the other, then anonymously; tokens are per credential', async () => {
    upstream.resetCounts();
    for (let i = 1; i <= 7; i++) {
      expect((await get(`${mirror.url}/v2/${repo}/manifests/t${i}`, { headers: { accept: ACCEPT } })).status).toBe(200);
    }
    const pulls = upstream.requests.filter((r) => r.kind === 'manifest' && r.method === 'GET' && r.status === 200).map((r) => r.subject);
    // Unknown counts as full: alice first (first listed), then bob (unknown); bob has more
    // left until they are level; alice's last pull, bob's last pull, then anonymous.
    expect(pulls).toEqual(['alice', 'bob', 'bob', 'bob', 'alice', 'bob', 'anonymous']);
    expect(upstream.count({ status: 429 })).toBe(0);
    const tokenUsers = upstream.token.issued.filter((t) => t.scopes.includes(`repository:${repo}:pull`)).map((t) => t.user ?? 'anonymous');
    expect(tokenUsers.sort()).toEqual(['alice', 'anonymous', 'bob']);
  });

  it('exports each credential’s pulls left by user name, never the secret', async () => {
    const metrics = (await get(`${mirror.url}/metrics`)).body.toString();
    expect(metrics).toContain('mirror_upstream_ratelimit_remaining{upstream="docker.io",credential="alice"} 0');
    expect(metrics).toContain('mirror_upstream_ratelimit_remaining{upstream="docker.io",credential="bob"} 0');
    expect(metrics).toContain('mirror_upstream_ratelimit_remaining{upstream="docker.io",credential="anonymous"} 99');
    const status = JSON.parse((await get(`${mirror.url}/status.json`)).body.toString()) as {
      upstreams: { name: string; rateLimitRemaining: number | null; credentials: { name: string; remaining: number | null }[] }[];
    };
    const hub = status.upstreams.find((u) => u.name === 'docker.io')!;
    expect(hub.credentials).toEqual([
      { name: 'alice', remaining: 0, limit: 2 },
      { name: 'bob', remaining: 0, limit: 4 },
      { name: 'anonymous', remaining: 99, limit: 100 },
    ]);
    expect(hub.rateLimitRemaining).toBe(99);
    const page = (await get(`${mirror.url}/`)).body.toString();
    expect(page).toContain('alice: 0 · bob: 0 · anonymous: 99');
    const everything = [metrics, page, JSON.stringify(status), ...mirror.logs.map((l) => JSON.stringify(l))].join('\n');
    for (const secret of Object.values(secrets)) expect(everything).not.toContain(secret);
    expect(everything).not.toMatch(/Basic [A-Za-z0-9+/=]{8,}/);
  });

  it('a pull refused because its credential was spent elsewhere goes again with the next (here anonymously)', async () => {
    const other = await startMirror({
      upstreamUrl: upstream.url,
      document: {
        upstreams: { 'docker.io': { url: upstream.url, credentials: [{ username: 'carol', password: 'carol-secret' }] } },
        // No retries: the switch to the next credential is no back-off-and-retry (Docker Hub's
        // pull-limit 429 may say to come back in hours).
        retries: { attempts: 0 },
      },
    });
    try {
      upstream.resetCounts();
      expect((await get(`${other.url}/v2/${repo}/manifests/t1`, { headers: { accept: ACCEPT } })).status).toBe(200);
      // Someone else spends carol's other four pulls; the mirror still believes she has four.
      const tokenUrl = `${upstream.token.realm}?service=${upstream.token.service}&scope=repository:${repo}:pull`;
      const tokenResponse = await request(tokenUrl, { headers: { authorization: `Basic ${Buffer.from('carol:carol-secret').toString('base64')}` } });
      const { token } = (await tokenResponse.body.json()) as { token: string };
      for (let i = 0; i < 4; i++) {
        const r = await request(`${upstream.url}/v2/${repo}/manifests/t1`, { headers: { authorization: `Bearer ${token}`, accept: ACCEPT } });
        await r.body.dump();
        expect(r.statusCode).toBe(200);
      }
      upstream.resetCounts();
      const r = await get(`${other.url}/v2/${repo}/manifests/t2`, { headers: { accept: ACCEPT } });
      expect(r.status).toBe(200);
      const pulls = upstream.requests.filter((q) => q.kind === 'manifest' && q.method === 'GET').map((q) => `${q.subject} ${q.status}`);
      expect(pulls).toEqual(['carol 429', 'anonymous 200']);
    } finally {
      await other.stop();
    }
  });
});
