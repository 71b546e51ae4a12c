// Layer prefetch (issue 15): an image manifest fetched from the upstream starts the downloads
// of its config and layers at once, so a client's later blob requests join them (coalesced)
// or find them stored (hit), and the upstream sends each blob once. Against the real upstream
// (distribution with token auth, counted at its front), and against the fake one with held
// blobs to watch the per-upstream concurrency bound and the abandonment timer.
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { OCI_MANIFEST } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, buildIndex, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { blobFile } from '../fixtures/storage.js';
import { deferred, waitFor } from '../fixtures/wait.js';

const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** An image of `layers` small distinct layers (distinct per name, so images share nothing). */
function imageOf(name: string, layers: number, architecture = 'amd64'): Image {
  return buildImage({
    format: 'oci',
    platform: { os: 'linux', architecture },
    label: name,
    layers: Array.from({ length: layers }, (_, i) => smallLayer([{ path: `${name}/${architecture}/file-${i}`, content: `${name} ${architecture} layer ${i}\n` }])),
  });
}

const blobDigests = (image: Image) => [image.config.digest, ...image.layers.map((l) => l.digest)];

async function metric(mirror: TestMirror, name: string, labels: Record<string, string> = {}): Promise<number> {
  const found = (await mirror.mirror.metrics.registry.getMetricsAsJSON()).find((m) => m.name === name);
  const values = (found?.values ?? []) as { value: number; labels: Record<string, string | number> }[];
  return values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((n, v) => n + v.value, 0);
}

describe('prefetch against the real upstream', () => {
  let upstream: RealUpstream;
  let mirror: TestMirror;
  const app = imageOf('app', 4);
  const other = imageOf('other', 2);
  const amd64 = imageOf('multi', 3, 'amd64');
  const arm64 = imageOf('multi', 3, 'arm64');
  const off = imageOf('off', 3);

  /** Upstream GETs that sent `digest` (200: the token challenge's 401 is not a download). */
  const blobGets = (digest: string) => upstream.count({ method: 'GET', kind: 'blob', status: 200, path: new RegExp(`/blobs/${digest}$`) });
  const idle = (m: TestMirror) => waitFor(() => m.mirror.downloads.size === 0, 30_000, 'the mirror to have no download running');

  beforeAll(async () => {
    upstream = await startRealUpstream();
    await upstream.push('team/app', 'v1', app);
    await upstream.push('team/other', 'v1', other);
    await upstream.push('team/multi', 'v1', buildIndex([amd64, arm64], 'oci'));
    await upstream.push('team/off', 'v1', off);
    mirror = await startMirror({ upstreamUrl: upstream.url, document: { prefetch: true } });
  }, 60_000);

  afterAll(async () => {
    await mirror?.stop();
    await upstream?.stop();
  });

  it('a manifest by tag starts the config and every layer; the client then gets them without another upstream GET', async () => {
    const r = await get(`${mirror.url}/v2/team/app/manifests/v1`, { headers: { accept: ACCEPT } });
    expect(r.status).toBe(200);
    expect(await mirror.accessFor(r.headers)).toMatchObject({ outcome: 'miss' });
    // No client asked for a blob, yet every one of them is fetched.
    await waitFor(() => blobDigests(app).every((d) => blobGets(d) === 1), 30_000, 'the config and the 4 layers to be fetched upstream');
    expect(mirror.accessLog().filter((l) => String(l.path).includes('/blobs/'))).toEqual([]);
    for (const [i, blob] of [app.config, ...app.layers].entries()) {
      const b = await get(`${mirror.url}/v2/team/app/blobs/${blob.digest}`);
      expect(b.status).toBe(200);
      expect(sha256(b.body)).toBe(blob.digest);
      // Joined the prefetch while it ran, or found it stored: never a download of its own.
      expect(['hit', 'coalesced'], `blob ${i}`).toContain((await mirror.accessFor(b.headers)).outcome);
    }
    for (const d of blobDigests(app)) expect(blobGets(d), d).toBe(1);
    expect(await metric(mirror, 'mirror_prefetch_started_total', { upstream: 'docker.io' })).toBe(5);
    await idle(mirror);
    // Every prefetched byte was asked for by the client: nothing is left unclaimed.
    expect(await metric(mirror, 'mirror_prefetch_bytes_total')).toBe([app.config, ...app.layers].reduce((n, b) => n + b.size, 0));
    expect(await metric(mirror, 'mirror_prefetch_unclaimed_bytes')).toBe(0);
  });

  it('an index prefetches nothing; the platform manifest the client asks for prefetches its own blobs only', async () => {
    const index = await get(`${mirror.url}/v2/team/multi/manifests/v1`, { headers: { accept: ACCEPT } });
    expect(index.status).toBe(200);
    const platform = await get(`${mirror.url}/v2/team/multi/manifests/${amd64.manifest.digest}`, { headers: { accept: ACCEPT } });
    expect(platform.status).toBe(200);
    await waitFor(() => blobDigests(amd64).every((d) => blobGets(d) === 1), 30_000, 'the amd64 blobs to be fetched upstream');
    await idle(mirror);
    for (const d of blobDigests(arm64)) expect(blobGets(d), `arm64 blob ${d}`).toBe(0);
    // Nobody pulled them: what the bench reports as downloaded for no client.
    expect(await metric(mirror, 'mirror_prefetch_unclaimed_bytes')).toBe([amd64.config, ...amd64.layers].reduce((n, b) => n + b.size, 0));
  });

  it('a warm manifest hit starts nothing, even when the layers are gone from the store', async () => {
    // The layers vanish behind the mirror's back; the manifest stays cached and fresh.
    for (const d of blobDigests(app)) rmSync(blobFile(mirror.storage, d), { force: true });
    const r = await get(`${mirror.url}/v2/team/app/manifests/v1`, { headers: { accept: ACCEPT } });
    expect(await mirror.accessFor(r.headers)).toMatchObject({ outcome: 'hit' });
    // A later miss's prefetch runs to its end: one the hit had started would have by then too.
    await get(`${mirror.url}/v2/team/other/manifests/v1`, { headers: { accept: ACCEPT } });
    await waitFor(() => blobDigests(other).every((d) => blobGets(d) === 1), 30_000, 'the other image to be prefetched');
    await idle(mirror);
    for (const d of blobDigests(app)) expect(blobGets(d), d).toBe(1);
  });

  it('a revalidated tag that moved prefetches the new image; one that kept its digest starts nothing', async () => {
    const before = imageOf('moving-1', 2);
    const after = imageOf('moving-2', 2);
    await upstream.push('team/moving', 'v1', before);
    // TTL 0: every GET by tag revalidates with a HEAD.
    const revalidating = await startMirror({ upstreamUrl: upstream.url, ttl: '0s', document: { prefetch: true } });
    try {
      const first = await get(`${revalidating.url}/v2/team/moving/manifests/v1`, { headers: { accept: ACCEPT } });
      expect(await revalidating.accessFor(first.headers)).toMatchObject({ outcome: 'miss' });
      await waitFor(() => blobDigests(before).every((d) => blobGets(d) === 1), 30_000, 'the first image to be prefetched');
      await idle(revalidating);
      const startedBefore = await metric(revalidating, 'mirror_prefetch_started_total');
      // A prefetch of the cached image would show as skipped (cached), not as started.
      const skippedBefore = await metric(revalidating, 'mirror_prefetch_skipped_total');
      const same = await get(`${revalidating.url}/v2/team/moving/manifests/v1`, { headers: { accept: ACCEPT } });
      expect(await revalidating.accessFor(same.headers)).toMatchObject({ outcome: 'revalidated' });
      await upstream.push('team/moving', 'v1', after);
      const moved = await get(`${revalidating.url}/v2/team/moving/manifests/v1`, { headers: { accept: ACCEPT } });
      expect(moved.headers['docker-content-digest']).toBe(after.manifest.digest);
      await waitFor(() => blobDigests(after).every((d) => blobGets(d) === 1), 30_000, 'the moved tag\'s image to be prefetched');
      await idle(revalidating);
      // The new image's 3 blobs and nothing for the revalidation that kept the digest.
      expect(await metric(revalidating, 'mirror_prefetch_started_total')).toBe(startedBefore + 3);
      expect(await metric(revalidating, 'mirror_prefetch_skipped_total')).toBe(skippedBefore);
      for (const d of blobDigests(before)) expect(blobGets(d)).toBe(1);
    } finally {
      await revalidating.stop();
    }
  });

  it('prefetch: false (per upstream, over the top-level default) starts nothing: the first blob is a miss of its own', async () => {
    const quiet = await startMirror({ upstreamUrl: upstream.url, document: { prefetch: true, upstreams: { 'docker.io': { url: upstream.url, prefetch: false } } } });
    try {
      const r = await get(`${quiet.url}/v2/team/off/manifests/v1`, { headers: { accept: ACCEPT } });
      expect(r.status).toBe(200);
      const config = await get(`${quiet.url}/v2/team/off/blobs/${off.config.digest}`);
      expect(sha256(config.body)).toBe(off.config.digest);
      expect(await quiet.accessFor(config.headers)).toMatchObject({ outcome: 'miss' });
      await idle(quiet);
      for (const layer of off.layers) expect(blobGets(layer.digest)).toBe(0);
      expect(await metric(quiet, 'mirror_prefetch_started_total')).toBe(0);
    } finally {
      await quiet.stop();
    }
  });
});

describe('prefetch bounds, with held blobs', () => {
  let upstream: FakeUpstream;
  let mirror: TestMirror;
  const ABANDON_MS = 150;

  beforeAll(async () => {
    upstream = await startFakeUpstream({ auth: true });
    mirror = await startMirror({
      upstreamUrl: upstream.url,
      // segments: 1: the counts below are one GET per download; on a loaded machine the held
      // blobs look like a slow link and `auto` would add Range GETs for pieces of them.
      document: { prefetch: { concurrency: 2 }, downloads: { abandonAfter: `${ABANDON_MS}ms`, segments: 1 }, retries: { attempts: 1, baseDelay: '10ms', maxDelay: '50ms' } },
    });
  });

  afterAll(async () => {
    await mirror?.stop();
    await upstream?.stop();
  });

  it('at most `concurrency` prefetches per upstream at once; unread ones are not abandoned; clients join them', async () => {
    const repo = 'team/held';
    // Big enough that a download held at its first KiB is not "worth finishing" (downloads.ts):
    // a client's download in that state would be abandoned after abandonAfter.
    const blobs = Array.from({ length: 7 }, (_, i) => pseudoRandomBytes(10 * 1024 * 1024, `held-${i}-${Date.now()}`));
    const digests = blobs.map((b) => upstream.addBlob(b, [repo]));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digests[0], size: blobs[0]!.length },
        layers: digests.slice(1).map((digest, i) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: blobs[i + 1]!.length })),
      }),
    );
    upstream.addManifest(repo, 'v1', manifest, OCI_MANIFEST);
    const gates = new Map(digests.map((d) => [d, deferred()]));
    const isBlobGet = (r: { kind: string; method: string; status?: number }) => r.kind === 'blob' && r.method === 'GET' && r.status !== 401;
    const open = () => upstream.requests.filter((r) => isBlobGet(r) && !r.closed).length;
    let mostOpen = 0;
    upstream.fault = (r) => {
      if (!isBlobGet(r)) return undefined;
      mostOpen = Math.max(mostOpen, open());
      const digest = /blobs\/(sha256:[a-f0-9]{64})/.exec(r.path)![1]!;
      return { hold: { afterBytes: 1024, until: gates.get(digest)!.promise } };
    };
    const started = (d: string) => upstream.count({ method: 'GET', kind: 'blob', authorized: true, path: new RegExp(`/blobs/${d}$`) });
    try {
      const r = await get(`${mirror.url}/v2/${repo}/manifests/v1`, { headers: { accept: ACCEPT } });
      expect(r.status).toBe(200);
      await waitFor(() => open() === 2, 10_000, 'two prefetches to start');
      // The behaviour under test is a timer: nobody reads these two for several abandonAfter
      // periods, and they must still be running (a client's download would be cancelled).
      const since = Date.now();
      await waitFor(() => Date.now() - since > 3 * ABANDON_MS, 5_000, 'three abandonAfter periods to pass');
      expect(open()).toBe(2);
      expect(await metric(mirror, 'mirror_downloads_abandoned_total')).toBe(0);
      // A client joins a running prefetch: its answer starts while the upstream still holds the blob.
      const first = digests.find((d) => started(d) === 1)!;
      let answered = false;
      const joined = get(`${mirror.url}/v2/${repo}/blobs/${first}`, { onHeaders: () => (answered = true) });
      await waitFor(() => answered, 10_000, 'the client to join the prefetch');
      expect(started(first)).toBe(1);
      // The rest start as slots free up (the bound was checked at each upstream request).
      for (const g of gates.values()) g.resolve();
      const client = await joined;
      expect(sha256(client.body)).toBe(first);
      expect(await mirror.accessFor(client.headers)).toMatchObject({ outcome: 'coalesced' });
      await waitFor(() => digests.every((d) => started(d) === 1) && mirror.mirror.downloads.size === 0, 20_000, 'all seven blobs to be prefetched');
      expect(mostOpen).toBe(2);
      for (const d of digests) expect(started(d), d).toBe(1);
      expect(await metric(mirror, 'mirror_downloads_abandoned_total')).toBe(0);
      expect(await metric(mirror, 'mirror_prefetch_started_total')).toBe(7);
    } finally {
      upstream.fault = undefined;
      for (const g of gates.values()) g.resolve();
    }
  });
});
