// Cache lifecycle (issue 6): bounded size with LRU eviction, pins, gc, verify, ls, stats.
import { existsSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { runCli } from '../fixtures/mirror-process.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;

beforeAll(async () => {
  upstream = await startFakeUpstream();
});
afterAll(async () => {
  await upstream?.stop();
});

describe('bounded cache', () => {
  let mirror: TestMirror;
  const clock = new ManualClock();
  afterAll(async () => {
    await mirror?.stop();
  });

  it('evicts least recently used content past the high watermark, keeps pins and fresh tags, and refetches on the next miss', async () => {
    mirror = await startMirror({
      upstreamUrl: upstream.url,
      clock,
      ttl: '1m',
      document: { storage: { maxSize: '10MiB', highWatermark: 0.9, lowWatermark: 0.5 } },
    });
    // A pinned image whose tag has gone stale: kept anyway.
    const pinned = addTinyImage(upstream, 'team/pinned', 'v1', 'pinned');
    expect((await get(`${mirror.url}/v2/team/pinned/manifests/v1`)).status).toBe(200);
    expect((await get(`${mirror.url}/v2/team/pinned/blobs/${pinned.layer}`)).status).toBe(200);
    mirror.mirror.index.pin('docker.io', 'team/pinned', 'v1');
    clock.advance(5 * 60_000);

    const blobs = Array.from({ length: 4 }, (_, i) => {
      const bytes = pseudoRandomBytes(2 * MiB, `lru-${i}`);
      return { bytes, digest: upstream.addBlob(bytes) };
    });
    for (const b of blobs) {
      clock.advance(1000);
      expect((await get(`${mirror.url}/v2/team/app/blobs/${b.digest}`)).status).toBe(200);
      // The last byte goes out before the rename into the store: wait for the commit (the
      // index row, written after the rename and its directory sync), so that the next request
      // for it is a cache hit (an access) and not a join, and its access time is this second's.
      await waitFor(() => mirror.mirror.index.getBlob(b.digest) !== undefined);
    }
    // Touch the oldest so that it becomes the most recently used.
    clock.advance(1000);
    expect((await get(`${mirror.url}/v2/team/app/blobs/${blobs[0]!.digest}`)).status).toBe(200);
    mirror.mirror.index.flushAccessTimes();
    // 8 MiB now; one more 2 MiB blob passes the 9 MiB high watermark: evict down to 5 MiB.
    const last = pseudoRandomBytes(2 * MiB, 'lru-last');
    const lastDigest = upstream.addBlob(last);
    clock.advance(1000);
    expect((await get(`${mirror.url}/v2/team/app/blobs/${lastDigest}`)).status).toBe(200);
    await waitFor(() => mirror.mirror.evictor.usageBytes <= 5 * MiB);

    const evicted = (await mirror.mirror.metrics.evictions.get()).values[0]?.value ?? 0;
    expect(evicted).toBeGreaterThanOrEqual(2);
    // LRU order: blobs 1 and 2 (least recently used) went; 0 (touched), 3 and the last stayed.
    expect(existsSync(blobFile(mirror.storage, blobs[1]!.digest))).toBe(false);
    expect(existsSync(blobFile(mirror.storage, blobs[2]!.digest))).toBe(false);
    expect(existsSync(blobFile(mirror.storage, blobs[0]!.digest))).toBe(true);
    expect(existsSync(blobFile(mirror.storage, lastDigest))).toBe(true);
    // The pinned image survived although it is the oldest content.
    expect(existsSync(blobFile(mirror.storage, pinned.layer))).toBe(true);
    expect((await get(`${mirror.url}/v2/team/pinned/manifests/${pinned.digest}`)).status).toBe(200);

    // The index and the disk agree.
    const verify = await runCli(['verify', '--storage', mirror.storage, '--json']);
    expect(verify.code).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ corrupt: [], missing: [] });

    // An evicted blob is simply fetched again.
    upstream.reset();
    const again = await get(`${mirror.url}/v2/team/app/blobs/${blobs[1]!.digest}`);
    expect(sha256(again.body)).toBe(blobs[1]!.digest);
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(1);
  });
});

describe('maintenance commands', () => {
  let mirror: TestMirror;
  afterAll(async () => {
    await mirror?.stop();
  });

  it('verify finds and removes a corrupted blob, exits non-zero, and the next pull refetches it', async () => {
    mirror = await startMirror({ upstreamUrl: upstream.url });
    const image = addTinyImage(upstream, 'team/verified', 'v1', 'verified');
    expect((await get(`${mirror.url}/v2/team/verified/manifests/v1`)).status).toBe(200);
    expect((await get(`${mirror.url}/v2/team/verified/blobs/${image.layer}`)).status).toBe(200);
    // The response ends once the digest checks; the rename into the store follows a moment later.
    await waitFor(() => existsSync(blobFile(mirror.storage, image.layer)));
    writeFileSync(blobFile(mirror.storage, image.layer), 'bit rot');

    const r = await runCli(['verify', '--storage', mirror.storage]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`corrupt, removed: ${image.layer}`);
    expect(existsSync(blobFile(mirror.storage, image.layer))).toBe(false);
    const clean = await runCli(['verify', '--storage', mirror.storage]);
    expect(clean.code).toBe(0);
    expect(clean.stdout).toContain('all good');

    upstream.reset();
    const again = await get(`${mirror.url}/v2/team/verified/blobs/${image.layer}`);
    expect(again.body.toString()).toBe('layer verified');
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(1);
  });

  it('ls and stats describe what is cached, with references written as users write them', async () => {
    addTinyImage(upstream, 'library/alpine', '3.19', 'ls-alpine');
    expect((await get(`${mirror.url}/v2/library/alpine/manifests/3.19`)).status).toBe(200);
    expect((await get(`${mirror.url}/v2/library/alpine/manifests/3.19`)).status).toBe(200);
    mirror.mirror.index.flushAccessTimes();
    for (const ref of ['alpine', 'docker.io/library/alpine']) {
      const ls = await runCli(['ls', ref, '--storage', mirror.storage]);
      expect(ls.code).toBe(0);
      expect(ls.stdout).toMatch(/docker\.io\/library\/alpine\s+3\.19\s+sha256:/);
      expect(ls.stdout).not.toContain('team/verified');
    }
    const stats = await runCli(['stats', '--storage', mirror.storage, '--json']);
    const s = JSON.parse(stats.stdout);
    expect(s.objects).toBeGreaterThan(0);
    expect(s.requests).toBeGreaterThanOrEqual(2);
    expect(s.hitRatio).toBeGreaterThan(0);
    expect(s.topRepositories.map((r: { repo: string }) => r.repo)).toContain('library/alpine');
  });
});
