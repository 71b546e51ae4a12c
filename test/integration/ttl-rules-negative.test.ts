// Issue 15, items 5 and 6 against the real upstream (distribution with Bearer tokens behind a
// counting front) and a fake clock: tag TTL rules decide when a tag is revalidated, and an
// upstream 404 for a manifest is remembered for a short while, so that a storm of requests for
// a missing tag costs one upstream request.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportBundle, importBundle } from '../../src/airgap/bundle.js';
import { prewarmOne } from '../../src/airgap/prewarm.js';
import { ManualClock } from '../../src/clock.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';

const amd64 = { os: 'linux', architecture: 'amd64' };
const image = (label: string): Image =>
  buildImage({ format: 'oci', platform: amd64, layers: [smallLayer([{ path: 'app/VERSION', content: `${label}\n` }])], label });

let upstream: RealUpstream;
let mirror: TestMirror;
const clock = new ManualClock(Date.now());
const work = mkdtempSync(join(tmpdir(), 'ttl-negative-test-'));

const MINUTE = 60_000;
const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Manifest requests the upstream's front saw for `repo:reference`. */
const manifestRequests = (repo: string, reference: string, method?: string) =>
  upstream.count({ kind: 'manifest', method, path: new RegExp(`^/v2/${escape(repo)}/manifests/${escape(reference)}$`) });

beforeAll(async () => {
  upstream = await startRealUpstream({ privateRepos: ['team/secret'] });
  for (const tag of ['latest', '1.0', '1.2.3']) await upstream.push('library/app', tag, image(tag));
  await upstream.push('library/neg', 'exists', image('exists'));
  mirror = await startMirror({
    upstreamUrl: upstream.url,
    clock,
    ttl: '10m',
    document: {
      upstreams: {
        'docker.io': {
          ttlRules: [
            { repository: 'library/*', tag: 'latest', ttl: '5m' },
            { tagRegex: '^v?[0-9]+\\.[0-9]+\\.[0-9]+$', ttl: '1d' },
          ],
        },
      },
    },
  });
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('tag TTL rules', () => {
  it('revalidates a tag under a 5m rule after 5 minutes, one under the default 10m only after 10', async () => {
    for (const tag of ['latest', '1.0', '1.2.3']) expect((await get(`${mirror.url}/v2/library/app/manifests/${tag}`)).status).toBe(200);
    const outcomes = async () => {
      const seen: Record<string, unknown> = {};
      for (const tag of ['latest', '1.0', '1.2.3']) {
        const r = await get(`${mirror.url}/v2/library/app/manifests/${tag}`);
        expect(r.status).toBe(200);
        seen[tag] = (await mirror.accessFor(r.headers)).outcome;
      }
      return seen;
    };

    clock.advance(5 * MINUTE + 1000);
    expect(await outcomes()).toEqual({ latest: 'revalidated', '1.0': 'hit', '1.2.3': 'hit' });
    expect(manifestRequests('library/app', 'latest', 'HEAD')).toBe(1);
    expect(manifestRequests('library/app', '1.0', 'HEAD')).toBe(0);

    // 10 minutes in: `latest` is due again (trusted for 5m from its last check), `1.0` now
    // under the default TTL, `1.2.3` (semver rule: 1 day) not.
    clock.advance(5 * MINUTE);
    expect(await outcomes()).toEqual({ latest: 'revalidated', '1.0': 'revalidated', '1.2.3': 'hit' });
    expect(manifestRequests('library/app', 'latest', 'HEAD')).toBe(2);
    expect(manifestRequests('library/app', '1.0', 'HEAD')).toBe(1);
    expect(manifestRequests('library/app', '1.2.3', 'HEAD')).toBe(0);
  });
});

describe('negative caching of manifests the upstream does not have', () => {
  beforeAll(async () => {
    // The repository's token first: the counts below are of manifest requests alone.
    expect((await get(`${mirror.url}/v2/library/neg/manifests/exists`)).status).toBe(200);
  });

  it('20 concurrent requests for a missing tag cost one upstream request', async () => {
    const answers = await Promise.all(Array.from({ length: 20 }, () => get(`${mirror.url}/v2/library/neg/manifests/missing`)));
    for (const r of answers) {
      expect(r.status).toBe(404);
      expect(errorCode(r.body)).toBe('MANIFEST_UNKNOWN');
    }
    expect(manifestRequests('library/neg', 'missing')).toBe(1);
  });

  it('a request within the TTL gets the same 404 without asking, logged and counted as negative', async () => {
    const r = await get(`${mirror.url}/v2/library/neg/manifests/missing`);
    expect(r.status).toBe(404);
    expect(errorCode(r.body)).toBe('MANIFEST_UNKNOWN');
    const head = await get(`${mirror.url}/v2/library/neg/manifests/missing`, { method: 'HEAD' });
    expect(head.status).toBe(404);
    expect(manifestRequests('library/neg', 'missing')).toBe(1);
    expect((await mirror.accessFor(r.headers)).outcome).toBe('negative');
    const metrics = await mirror.mirror.metrics.registry.metrics();
    expect(metrics).toMatch(/mirror_http_requests_total\{route="manifest",status="404",outcome="negative"\} [1-9]/);
  });

  it('after the TTL (30 s by default) the upstream is asked again', async () => {
    clock.advance(30_001);
    expect((await get(`${mirror.url}/v2/library/neg/manifests/missing`)).status).toBe(404);
    expect(manifestRequests('library/neg', 'missing')).toBe(2);
  });

  it('a tag pushed upstream meanwhile is 404 until the entry expires, then served', async () => {
    expect((await get(`${mirror.url}/v2/library/neg/manifests/soon`)).status).toBe(404);
    const pushed = image('soon');
    await upstream.push('library/neg', 'soon', pushed);
    expect((await get(`${mirror.url}/v2/library/neg/manifests/soon`)).status).toBe(404);
    expect(manifestRequests('library/neg', 'soon')).toBe(1);
    clock.advance(30_001);
    const r = await get(`${mirror.url}/v2/library/neg/manifests/soon`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(pushed.manifest.digest);
  });

  it('by digest too; a digest the mirror then learns by its tag is served at once', async () => {
    const later = image('by-digest');
    const byDigest = `${mirror.url}/v2/library/neg/manifests/${later.manifest.digest}`;
    expect((await get(byDigest)).status).toBe(404);
    expect((await get(byDigest)).status).toBe(404);
    expect(manifestRequests('library/neg', later.manifest.digest)).toBe(1);
    await upstream.push('library/neg', 'by-digest', later);
    expect((await get(`${mirror.url}/v2/library/neg/manifests/by-digest`)).status).toBe(200);
    const r = await get(byDigest);
    expect(r.status).toBe(200);
    expect(manifestRequests('library/neg', later.manifest.digest)).toBe(1);
  });

  it('a tag imported from a bundle is served at once, despite the remembered 404', async () => {
    expect((await get(`${mirror.url}/v2/library/neg/manifests/imported`)).status).toBe(404);
    const pushed = image('imported');
    await upstream.push('library/neg', 'imported', pushed);
    // Exported by another mirror on the same upstream, imported into this one.
    const other = await startMirror({ upstreamUrl: upstream.url });
    const bundle = join(work, 'imported.tar');
    try {
      expect((await prewarmOne(other.mirror, 'library/neg:imported', { platforms: undefined, pin: false, referrers: false })).ok).toBe(true);
      await exportBundle(other.mirror, ['library/neg:imported'], { platforms: undefined, output: bundle, referrers: false });
    } finally {
      await other.stop();
    }
    await importBundle(mirror.mirror, bundle);
    const before = manifestRequests('library/neg', 'imported');
    const r = await get(`${mirror.url}/v2/library/neg/manifests/imported`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(pushed.manifest.digest);
    expect(manifestRequests('library/neg', 'imported')).toBe(before);
  });

  it('a tag deleted upstream: its revalidation 404 is remembered too', async () => {
    const doomed = image('doomed');
    await upstream.push('library/neg', 'doomed', doomed);
    expect((await get(`${mirror.url}/v2/library/neg/manifests/doomed`)).status).toBe(200);
    const bearer = upstream.token.sign([{ type: 'repository', name: 'library/neg', actions: ['pull', 'push', 'delete'] }], 'admin');
    const deleted = await get(`${upstream.registryUrl}/v2/library/neg/manifests/${doomed.manifest.digest}`, { method: 'DELETE', headers: { authorization: `Bearer ${bearer}` } });
    expect(deleted.status).toBe(202);
    clock.advance(10 * MINUTE);
    const gone = await get(`${mirror.url}/v2/library/neg/manifests/doomed`);
    expect(gone.status).toBe(404);
    expect(errorCode(gone.body)).toBe('MANIFEST_UNKNOWN');
    const again = await get(`${mirror.url}/v2/library/neg/manifests/doomed`);
    expect(again.status).toBe(404);
    expect((await mirror.accessFor(again.headers)).outcome).toBe('negative');
    expect(manifestRequests('library/neg', 'doomed', 'HEAD')).toBe(1);
    expect(manifestRequests('library/neg', 'doomed', 'GET')).toBe(1);
  });

  it('does not remember a refusal (401/403): it may be a token glitch, not absence', async () => {
    const first = await get(`${mirror.url}/v2/team/secret/manifests/v1`);
    expect(first.status).toBe(403);
    const once = manifestRequests('team/secret', 'v1');
    expect(once).toBeGreaterThan(0);
    expect((await get(`${mirror.url}/v2/team/secret/manifests/v1`)).status).toBe(403);
    expect(manifestRequests('team/secret', 'v1')).toBe(2 * once);
  });

  it('negativeTtl: 0 turns it off', async () => {
    const off = await startMirror({ upstreamUrl: upstream.url, clock, document: { negativeTtl: 0 } });
    try {
      expect((await get(`${off.url}/v2/library/neg/manifests/exists`)).status).toBe(200);
      const before = manifestRequests('library/neg', 'gone');
      expect((await get(`${off.url}/v2/library/neg/manifests/gone`)).status).toBe(404);
      expect((await get(`${off.url}/v2/library/neg/manifests/gone`)).status).toBe(404);
      expect(manifestRequests('library/neg', 'gone')).toBe(before + 2);
    } finally {
      await off.stop();
    }
  });
});
