// Scale-out (issue 9) on a real S3 server: Ceph RADOS Gateway from Debian. Replicas share a
// bucket; a pull through one replica then another fetches nothing from the upstream again;
// presigned redirects let skopeo and dockerd fetch blobs from the bucket itself; a replica
// killed mid-download leaves nothing half-visible and another one takes over. Eviction of the
// shared bucket (issue 13, item 7): one replica at a time evicts (the lease), honouring every
// replica's pins and recent use.
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../src/cache/s3-store.js';
import { parseDigest } from '../../src/oci/reference.js';
import { startShapingFront } from '../bench/slow-link.js';
import { createBucket, startCephRgw, type CephRgw } from '../fixtures/ceph-rgw.js';
import { startDockerd, type Dockerd } from '../fixtures/dockerd-client.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { runCli, startMirrorProcess } from '../fixtures/mirror-process.js';
import { waitFor } from '../fixtures/wait.js';
import { startNginxLb } from '../fixtures/nginx-lb.js';
import { bigLayer, buildImage, smallLayer, type Blob, type Image } from '../fixtures/oci-images.js';
import { freePort, startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';

let rgw: CephRgw;
let upstream: RealUpstream;
let content: SeededContent;
const work = mkdtempSync(join(tmpdir(), 's3-replicas-'));
const mirrors: TestMirror[] = [];
/** What the mirror process killed mid-download wrote (checked for secrets at the end). */
let crashOutput = '';
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function s3Settings(bucket: string, redirect = '0') {
  return { bucket, endpoint: rgw.endpoint, region: rgw.region, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, redirect };
}

async function replica(bucket: string, redirect = '0'): Promise<TestMirror> {
  const m = await startMirror({ upstreamUrl: upstream.url, document: { storage: { driver: 's3', s3: s3Settings(bucket, redirect) } } });
  mirrors.push(m);
  return m;
}

beforeAll(async () => {
  rgw = await startCephRgw();
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
}, 300_000);

afterAll(async () => {
  for (const m of mirrors) await m.stop().catch(() => undefined);
  await upstream?.stop();
  await rgw?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('replicas sharing a bucket', () => {
  it('a pull through replica 1 then replica 2 makes zero upstream blob GETs the second time', async () => {
    await createBucket(rgw, 'shared');
    const [one, two] = [await replica('shared'), await replica('shared')];
    await skopeoCopy(`docker://${one!.host}/library/busybox:1.36`, `dir:${join(work, 'one')}`);
    upstream.resetCounts();
    await skopeoCopy(`docker://${two!.host}/library/busybox:1.36`, `dir:${join(work, 'two')}`);
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(0);
    expect(sha(readFileSync(join(work, 'two', 'manifest.json')))).toBe(content.busybox.digest);
    // Behind nginx (round robin over both replicas), a third image: fetched once, then served by either.
    const lb = await startNginxLb([one!.url, two!.url]);
    try {
      upstream.resetCounts();
      await skopeoCopy(`docker://${lb.host}/library/debian:bookworm`, `dir:${join(work, 'lb1')}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
      const fetched = upstream.count({ kind: 'blob', method: 'GET', status: 200 });
      expect(fetched).toBe(content.debian.content.images[0]!.layers.length + 1);
      upstream.resetCounts();
      for (const i of [2, 3]) await skopeoCopy(`docker://${lb.host}/library/debian:bookworm`, `dir:${join(work, `lb${i}`)}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
      expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(0);
      expect(one!.accessLog().some((l) => String(l.path).startsWith('/v2/library/debian/'))).toBe(true);
      expect(two!.accessLog().some((l) => String(l.path).startsWith('/v2/library/debian/'))).toBe(true);
    } finally {
      await lb.stop();
    }
    // The bytes are in the bucket, under content-addressed keys.
    const store = new S3BlobStore({ ...s3Settings('shared'), prefix: '', forcePathStyle: true, redirectTtlMs: 0 });
    for (const layer of content.busybox.content.layers) expect(await store.stat(parseDigest(layer.digest))).toMatchObject({ size: layer.size });
  });

  it('with peers, 20 concurrent cold pulls spread across three replicas on one bucket make one upstream GET per blob', async () => {
    await createBucket(rgw, 'peers');
    const image: Image = buildImage({
      format: 'oci',
      layers: [await bigLayer(24 * 1024 * 1024, 's3-peers-24'), ...[0, 1, 2, 3].map((i) => smallLayer([{ path: `p/${i}`, content: `peer layer ${i}\n` }]))],
    });
    await upstream.push('team/peers', '1', image);
    const ports = [await freePort(), await freePort(), await freePort()];
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const set: TestMirror[] = [];
    // With the product default, prefetch on: a replica's prefetch goes through the digest's owner too.
    for (const [i, port] of ports.entries()) {
      const m = await startMirror({
        upstreamUrl: upstream.url,
        document: { prefetch: true, listen: `127.0.0.1:${port}`, storage: { driver: 's3', s3: s3Settings('peers') }, cluster: { self: urls[i], peers: urls } },
      });
      mirrors.push(m);
      set.push(m);
    }
    upstream.resetCounts();
    const blobs = [image.config, ...image.layers];
    await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const m = set[i % set.length]!;
        expect((await get(`${m.url}/v2/team/peers/manifests/1`)).status).toBe(200);
        for (const b of blobs) expect(sha((await get(`${m.url}/v2/team/peers/blobs/${b.digest}`)).body)).toBe(b.digest);
      }),
    );
    for (const b of blobs) expect([b.digest, upstream.count({ kind: 'blob', method: 'GET', status: 200, path: new RegExp(b.digest) })]).toEqual([b.digest, 1]);
  });

  it('presigned redirects: blob GETs answer 307 to the bucket, and skopeo and dockerd follow them', async () => {
    await createBucket(rgw, 'redirects');
    const m = await replica('redirects', '5m');
    const layer = content.debian.content.images[0]!.layers[0]!;
    const cold = await get(`${m.url}/v2/library/debian/blobs/${layer.digest}`);
    expect(cold.status).toBe(200);
    // The client had its last byte once the digest checked; the upload to the bucket follows.
    let warm = await get(`${m.url}/v2/library/debian/blobs/${layer.digest}`);
    await waitFor(
      async () => (warm = await get(`${m.url}/v2/library/debian/blobs/${layer.digest}`)).status === 307,
      10_000,
      'the blob to be in the bucket (a redirect to it)',
    );
    expect(String(warm.headers.location)).toContain(`${rgw.endpoint}/redirects/blobs/sha256/`);
    const fromBucket = await fetch(String(warm.headers.location));
    expect(sha(Buffer.from(await fromBucket.arrayBuffer()))).toBe(layer.digest);

    // Warm the whole image, then real clients fetch its blobs from the bucket.
    await skopeoCopy(`docker://${m.host}/library/alpine:3.19`, `dir:${join(work, 'warm')}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
    upstream.resetCounts();
    await skopeoCopy(`docker://${m.host}/library/alpine:3.19`, `dir:${join(work, 'redirected')}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
    expect(upstream.count({ kind: 'blob' })).toBe(0);
    const redirected = m.accessLog().filter((l) => String(l.path).includes('/blobs/') && l.status === 307);
    expect(redirected.length).toBeGreaterThanOrEqual(2);
    let dockerd: Dockerd | undefined;
    try {
      dockerd = await startDockerd({ registryMirrors: [m.url] });
      await dockerd.pull('alpine:3.19');
      const inspect = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', 'alpine:3.19']);
      expect(inspect.stdout).toContain(content.alpine.digest);
    } finally {
      await dockerd?.stop();
    }
  });

  it('a replica killed mid-download leaves nothing half-visible; another replica takes over', async () => {
    await createBucket(rgw, 'crash');
    const layer = await bigLayer(48 * 1024 * 1024, 's3-crash-48');
    const image: Image = buildImage({ format: 'oci', layers: [layer, smallLayer([{ path: 'x', content: 'x\n' }])] });
    await upstream.push('team/crash', '1', image);
    const slow = await startShapingFront(upstream.url, 8 * 1024 * 1024, 20);
    const config = join(work, 'crash.yaml');
    writeFileSync(
      config,
      JSON.stringify({ storage: { path: join(work, 'crash-local'), driver: 's3', s3: { ...s3Settings('crash'), redirect: 0 } } }),
    );
    const doomed = await startMirrorProcess(['--config', config, '--upstream', slow.url, '--log-level', 'info']);
    const store = new S3BlobStore({ ...s3Settings('crash'), prefix: '', forcePathStyle: true, redirectTtlMs: 0 });
    try {
      // Killed mid-download: once the client has had a few MiB of the 48.
      let received = 0;
      const cut = get(`${doomed.url}/v2/team/crash/blobs/${layer.digest}`, { onHeaders: (res) => res.on('data', (c: Buffer) => (received += c.length)) }).catch(() => undefined);
      await waitFor(() => received >= 4 * 1024 * 1024, 30_000, 'the download to be under way');
      await doomed.kill('SIGKILL');
      expect(received).toBeLessThan(layer.size);
      await cut;
      expect(await store.stat(parseDigest(layer.digest))).toBeUndefined();
      const other = await replica('crash');
      const r = await get(`${other.url}/v2/team/crash/blobs/${layer.digest}`);
      expect(r.status).toBe(200);
      expect(sha(r.body)).toBe(layer.digest);
      await waitFor(async () => (await store.stat(parseDigest(layer.digest))) !== undefined, 10_000, 'the blob in the bucket');
      expect(await store.stat(parseDigest(layer.digest))).toMatchObject({ size: layer.size });
    } finally {
      crashOutput = doomed.output();
      await doomed.kill('SIGKILL');
      await slow.stop();
    }
  });

  it('a layer in the bucket asked for as a manifest is refused by its size, never read into memory (issue 13)', async () => {
    await createBucket(rgw, 'big-as-manifest');
    // A 32 MiB "layer" another replica stored: this replica has no index row for it.
    const bytes = Buffer.alloc(32 * 1024 * 1024);
    for (let i = 0; i < bytes.length; i += 4096) bytes.writeUInt32LE(i, i);
    const digest = sha(bytes);
    const store = new S3BlobStore({ ...s3Settings('big-as-manifest'), prefix: '', forcePathStyle: true, redirectTtlMs: 0 });
    await store.write(parseDigest(digest), bytes);
    const m = await replica('big-as-manifest');
    // What the store hands out into memory, whichever way it is asked.
    let readIntoMemory = 0;
    const read = m.mirror.store.read.bind(m.mirror.store);
    m.mirror.store.read = async (...args: Parameters<typeof read>) => {
      const out = await read(...args);
      readIntoMemory += out?.length ?? 0;
      return out;
    };
    const r = await get(`${m.url}/v2/library/alpine/manifests/${digest}`);
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
    expect(readIntoMemory).toBeLessThanOrEqual(4 * 1024 * 1024);
  });

  it('never logs the S3 secret key or a bearer token of the upstream', () => {
    const secrets: [string, string][] = [
      ['S3 secret key', rgw.secretAccessKey],
      ...upstream.token.issued.map((t, i): [string, string] => [`bearer token ${i}`, t.token]),
    ];
    expect(mirrors.length).toBeGreaterThan(0);
    const text = [...mirrors.flatMap((m) => m.logs.map((l) => JSON.stringify(l))), crashOutput].join('\n');
    for (const [what, value] of secrets) expect([what, text.includes(value)]).toEqual([what, false]);
  });
});

describe('eviction of a shared bucket', () => {
  // Small numbers so that tests see several heartbeats: the lease lasts 3 of them, and content
  // anyone used within recentUse is never evicted.
  const sharing = { heartbeat: '300ms', recentUse: '1s' };
  const MiB = 1024 * 1024;

  async function sharingReplica(bucket: string, replicaId: string, maxSize: string | number, ttl?: string): Promise<TestMirror> {
    const m = await startMirror({
      upstreamUrl: upstream.url,
      ttl,
      document: { storage: { driver: 's3', s3: { ...s3Settings(bucket), replicaId, ...sharing }, maxSize, lowWatermark: 0.5 } },
    });
    mirrors.push(m);
    return m;
  }

  const bucketStore = (bucket: string) => new S3BlobStore({ ...s3Settings(bucket), prefix: '', forcePathStyle: true, redirectTtlMs: 0 });
  const inBucket = async (store: S3BlobStore, digest: string) => (await store.stat(parseDigest(digest))) !== undefined;
  const logged = (m: TestMirror, msg: string, fields: Record<string, unknown> = {}) =>
    m.logs.some((l) => l.msg.startsWith(msg) && Object.entries(fields).every(([k, v]) => l[k] === v));

  /** A GET through `m`, checked, then waited for in the bucket (the upload follows the response). */
  async function pull(m: TestMirror, store: S3BlobStore, repo: string, blob: Blob): Promise<void> {
    const r = await get(`${m.url}/v2/${repo}/blobs/${blob.digest}`);
    expect(sha(r.body)).toBe(blob.digest);
    await waitFor(() => inBucket(store, blob.digest), 30_000, `${blob.digest} in the bucket`);
  }

  /** What a replica has published it needs kept. */
  async function publishedBy(store: S3BlobStore, replicaId: string): Promise<{ pinned: string[]; used: [string, number][] } | undefined> {
    const o = await store.control.get(`replicas/${replicaId}.json`, 64 * MiB);
    return o && (JSON.parse(o.body.toString()) as { pinned: string[]; used: [string, number][] });
  }

  async function layers(seed: string, n: number): Promise<Blob[]> {
    return Promise.all(Array.from({ length: n }, (_, i) => bigLayer(MiB, `${seed}-${i}`)));
  }

  it('two replicas with a size limit on one bucket: only the lease holder evicts, the other says it leaves it', async () => {
    await createBucket(rgw, 'evict-lease');
    const store = bucketStore('evict-lease');
    const blobs = await layers('evict-lease', 8);
    await upstream.push('team/evict-lease', '1', buildImage({ format: 'oci', layers: blobs }));
    const a = await sharingReplica('evict-lease', 'replica-a', '6MiB');
    await waitFor(() => logged(a, 'took the eviction lease'), 30_000, 'replica a to take the lease');
    const b = await sharingReplica('evict-lease', 'replica-b', '6MiB');
    await waitFor(() => logged(b, 'another replica holds the eviction lease', { holder: 'replica-a' }), 30_000, 'replica b to see a holds it');
    // b alone stores 6 MiB: past its high watermark (5.4 MiB) on its own.
    for (const blob of blobs.slice(0, 2)) await pull(a, store, 'team/evict-lease', blob);
    for (const blob of blobs.slice(2)) await pull(b, store, 'team/evict-lease', blob);
    const evicted = (m: TestMirror) => logged(m, 'evicted least recently used content');
    await waitFor(() => evicted(a) || evicted(b), 30_000, 'a replica to evict');
    expect(evicted(b)).toBe(false);
    expect(evicted(a)).toBe(true);
    expect((await b.mirror.metrics.evictionSkipped.get()).values[0]?.value).toBeGreaterThan(0);
    expect((await a.mirror.metrics.evictionLeaseHeld.get()).values[0]?.value).toBe(1);
    expect((await b.mirror.metrics.evictionLeaseHeld.get()).values[0]?.value).toBe(0);
  });

  it("content pinned on replica B is not deleted by replica A's eviction", async () => {
    await createBucket(rgw, 'evict-pins');
    const store = bucketStore('evict-pins');
    const pinnedImage = buildImage({ format: 'oci', layers: await layers('evict-pins-pinned', 1) });
    await upstream.push('team/pinned', '1', pinnedImage);
    const fillers = await layers('evict-pins-filler', 5);
    await upstream.push('team/filler', '1', buildImage({ format: 'oci', layers: fillers }));
    const a = await sharingReplica('evict-pins', 'replica-a', '4MiB');
    await waitFor(() => logged(a, 'took the eviction lease'), 30_000, 'replica a to take the lease');
    // No limit: b never evicts. TTL 0: its tag is never fresh, only the pin keeps the image.
    const b = await sharingReplica('evict-pins', 'replica-b', 0, '0');

    // a pulls the image first (by digest: no tag of its own keeps it): in a's LRU it is the oldest content.
    expect((await get(`${a.url}/v2/team/pinned/manifests/${pinnedImage.manifest.digest}`)).status).toBe(200);
    for (const blob of [pinnedImage.config, ...pinnedImage.layers]) await pull(a, store, 'team/pinned', blob);
    // b pins it (as `mirror prewarm --pin` on b's storage would).
    expect((await get(`${b.url}/v2/team/pinned/manifests/1`)).status).toBe(200);
    b.mirror.index.pin('docker.io', 'team/pinned', '1');
    const layer = pinnedImage.layers[0]!.digest;
    await waitFor(async () => (await publishedBy(store, 'replica-b'))?.pinned.includes(layer) === true, 30_000, 'replica b to publish its pin');

    for (const blob of fillers) await pull(a, store, 'team/filler', blob);
    await waitFor(async () => !(await inBucket(store, fillers[0]!.digest)), 30_000, 'replica a to evict the oldest filler');
    for (const digest of [pinnedImage.manifest.digest, pinnedImage.config.digest, layer]) expect([digest, await inBucket(store, digest)]).toEqual([digest, true]);

    // `mirror gc` on a's storage, down to nothing: the whole bucket, keeping b's pins too.
    const gcConfig = join(work, 'evict-pins-gc.yaml');
    writeFileSync(gcConfig, JSON.stringify({ storage: { path: a.storage, driver: 's3', s3: { ...s3Settings('evict-pins'), redirect: 0, ...sharing }, maxSize: '4MiB' } }));
    const gc = await runCli(['gc', '--config', gcConfig, '--target', '0', '--json']);
    expect(gc.code, gc.stderr).toBe(0);
    expect(JSON.parse(gc.stdout)).toMatchObject({ usageBefore: expect.any(Number) });
    for (const digest of [pinnedImage.manifest.digest, pinnedImage.config.digest, layer]) expect([digest, await inBucket(store, digest)]).toEqual([digest, true]);
  });

  it('content replica B served recently is kept: the LRU order is the latest use by any replica', async () => {
    await createBucket(rgw, 'evict-recent');
    const store = bucketStore('evict-recent');
    const [x, w1, w2, w3, w4, v] = await layers('evict-recent', 6);
    await upstream.push('team/recent', '1', buildImage({ format: 'oci', layers: [x!, w1!, w2!, w3!, w4!, v!] }));
    const a = await sharingReplica('evict-recent', 'replica-a', '6MiB');
    await waitFor(() => logged(a, 'took the eviction lease'), 30_000, 'replica a to take the lease');
    const b = await sharingReplica('evict-recent', 'replica-b', 0);

    // 5 MiB through a, x first (a's least recently used); under the high watermark (5.4 MiB).
    for (const blob of [x!, w1!, w2!, w3!, w4!]) await pull(a, store, 'team/recent', blob);
    // b serves x from the bucket.
    expect(sha((await get(`${b.url}/v2/team/recent/blobs/${x!.digest}`)).body)).toBe(x!.digest);
    await waitFor(async () => (await publishedBy(store, 'replica-b'))?.used.some(([d]) => d === x!.digest) === true, 30_000, 'replica b to publish its use');
    // One more through a: past the high watermark, a evicts down to 3 MiB.
    await pull(a, store, 'team/recent', v!);
    await waitFor(async () => !(await inBucket(store, w1!.digest)), 30_000, 'replica a to evict w1');
    expect(await inBucket(store, x!.digest)).toBe(true);
  });

  it('when the holder dies without giving the lease up, it expires and another replica takes over and evicts', async () => {
    await createBucket(rgw, 'evict-takeover');
    const store = bucketStore('evict-takeover');
    const blobs = await layers('evict-takeover', 7);
    await upstream.push('team/takeover', '1', buildImage({ format: 'oci', layers: blobs }));
    const config = join(work, 'takeover.yaml');
    writeFileSync(
      config,
      JSON.stringify({
        storage: { path: join(work, 'takeover-a'), driver: 's3', s3: { ...s3Settings('evict-takeover'), redirect: 0, replicaId: 'replica-a', ...sharing }, maxSize: '6MiB', lowWatermark: 0.5 },
      }),
    );
    const holder = await startMirrorProcess(['--config', config, '--upstream', upstream.url, '--log-level', 'info']);
    try {
      await waitFor(() => holder.output().includes('took the eviction lease'), 30_000, 'the process to take the lease');
      const b = await sharingReplica('evict-takeover', 'replica-b', '6MiB');
      await waitFor(() => logged(b, 'another replica holds the eviction lease', { holder: 'replica-a' }), 30_000, 'replica b to see a holds it');
      await holder.kill('SIGKILL');
      await waitFor(() => logged(b, 'took the eviction lease', { takenFrom: 'replica-a' }), 30_000, 'replica b to take the expired lease over');
      for (const blob of blobs) await pull(b, store, 'team/takeover', blob);
      await waitFor(() => logged(b, 'evicted least recently used content'), 30_000, 'replica b to evict');
      const lease = await store.control.get('eviction-lease.json', MiB);
      expect(JSON.parse(lease!.body.toString())).toMatchObject({ holder: 'replica-b' });
    } finally {
      await holder.kill('SIGKILL');
    }
  });
});
