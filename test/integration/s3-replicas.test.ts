// Scale-out (issue 9) on a real S3 server: Ceph RADOS Gateway from Debian. Replicas share a
// bucket; a pull through one replica then another fetches nothing from the upstream again;
// presigned redirects let skopeo and dockerd fetch blobs from the bucket itself; a replica
// killed mid-download leaves nothing half-visible and another one takes over.
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
import { startMirrorProcess } from '../fixtures/mirror-process.js';
import { startNginxLb } from '../fixtures/nginx-lb.js';
import { bigLayer, buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { freePort, startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { waitFor } from '../fixtures/wait.js';

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
    for (const [i, port] of ports.entries()) {
      const m = await startMirror({
        upstreamUrl: upstream.url,
        document: { listen: `127.0.0.1:${port}`, storage: { driver: 's3', s3: s3Settings('peers') }, cluster: { self: urls[i], peers: urls } },
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
