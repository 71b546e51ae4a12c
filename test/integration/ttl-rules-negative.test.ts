// Issue 15, items 5 and 6 against the real upstream (distribution with Bearer tokens behind a
// counting front) and a fake clock: tag TTL rules decide when a tag is revalidated, and an
// upstream 404 for a manifest is remembered for a short while, so that a storm of requests for
// a missing tag costs one upstream request.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Manifest requests the upstream's front saw for `repo:reference`. */
const manifestRequests = (repo: string, reference: string, method?: string) =>
  upstream.count({ kind: 'manifest', method, path: new RegExp(`^/v2/${escape(repo)}/manifests/${escape(reference)}$`) });

beforeAll(async () => {
  upstream = await startRealUpstream();
  for (const tag of ['latest', '1.0', '1.2.3']) await upstream.push('library/app', tag, image(tag));
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
