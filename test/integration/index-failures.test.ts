// The index failing under a running mirror (issue 13: a full disk, SQLITE_BUSY): cached content
// keeps being served, background bookkeeping never throws, nothing batched is lost.
// The fault: the mirror's own SQLite connection switched to query_only, so every write fails
// with SQLITE_READONLY, as writes do on a full disk; reads keep working.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { startFakeUpstream, sha256, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: FakeUpstream;
let mirror: TestMirror;
const clock = new ManualClock(Date.parse('2026-12-01T00:00:00Z'));

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  mirror = await startMirror({ upstreamUrl: upstream.url, clock, ttl: '1m' });
});
afterAll(async () => {
  mirror.mirror.index.db.pragma('query_only = OFF');
  await mirror?.stop();
  await upstream?.stop();
});

describe('an index that refuses writes', () => {
  it('serves cached content, links new repositories in memory, and keeps batched access times for the next flush', async () => {
    const image = addTinyImage(upstream, 'team/app', 'v1', 'index-failures');
    // The same layer is in a second repository at the upstream (not linked in the mirror yet).
    const layerBytes = Buffer.from('layer index-failures');
    upstream.addBlob(layerBytes, ['team/app', 'team/other']);
    expect((await get(`${mirror.url}/v2/team/app/manifests/v1`)).status).toBe(200);
    expect((await get(`${mirror.url}/v2/team/app/blobs/${image.layer}`)).status).toBe(200);
    const index = mirror.mirror.index.db;
    const row = () => index.prepare('SELECT last_access AS at FROM blobs WHERE digest = ?').get(image.layer) as { at: number } | undefined;
    // The last byte goes out before the commit; wait for the blob's row.
    await waitFor(() => row() !== undefined, 10_000, 'the layer to be committed');
    mirror.mirror.flushIndex();
    const lastAccess = () => row()!.at;
    const before = lastAccess();
    index.pragma('query_only = ON');
    expect(() => index.prepare("INSERT INTO counters (name, value) VALUES ('probe', 1)").run()).toThrow(/readonly/i);

    clock.advance(10_000);
    // A hit: served, its access time batched in memory.
    const hit = await get(`${mirror.url}/v2/team/app/blobs/${image.layer}`);
    expect(hit.status).toBe(200);
    expect(sha256(hit.body)).toBe(image.layer);
    // Cached content under a repository not yet linked: the upstream confirms it, and the
    // link that cannot be written must not turn the answer into a 500.
    const other = await get(`${mirror.url}/v2/team/other/blobs/${image.layer}`);
    expect(other.status).toBe(200);
    expect(sha256(other.body)).toBe(image.layer);
    // A stale tag revalidated: extending it in the index fails, the answer does not.
    clock.advance(2 * 60_000);
    const revalidated = await get(`${mirror.url}/v2/team/app/manifests/v1`);
    expect(revalidated.status).toBe(200);
    expect(revalidated.headers['docker-content-digest']).toBe(image.digest);

    // The periodic flush: logged, not thrown, and the batch kept.
    expect(() => mirror.mirror.flushIndex()).not.toThrow();
    expect(mirror.logs.some((l) => l.msg.startsWith('could not write access times to the index'))).toBe(true);
    expect(lastAccess()).toBe(before);

    index.pragma('query_only = OFF');
    mirror.mirror.flushIndex();
    expect(lastAccess()).toBeGreaterThan(before);
  });
});
