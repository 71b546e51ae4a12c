// A blob download has a size bound even when the upstream sends no Content-Length (issue 13,
// item 5): the size a stored manifest's descriptor gives, else downloads.maxBlobSize. An
// upstream that goes on past it is cut off at once, nothing is stored, and the next request
// (the upstream fixed) is served the right bytes.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { OCI_MANIFEST } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
let mirror: TestMirror;

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  mirror = await startMirror({ upstreamUrl: upstream.url, document: { downloads: { maxBlobSize: '8MiB' } } });
});
afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

/** An image whose one layer is `layer`; returns the layer's digest. */
function pushImage(repo: string, layer: Buffer): string {
  const layerDigest = upstream.addBlob(layer, [repo]);
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', repo }));
  const config = upstream.addBlob(configBytes, [repo]);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: configBytes.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layerDigest, size: layer.length }],
    }),
  );
  upstream.addManifest(repo, 'v1', manifest, OCI_MANIFEST);
  return layerDigest;
}

const sentFor = (digest: string) => upstream.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.path.endsWith(digest) && r.status === 200);

describe('a blob download without Content-Length', () => {
  it('is cut off as soon as it passes the size its manifest descriptor gives; nothing is stored; the fixed upstream is then served', async () => {
    const layer = pseudoRandomBytes(2 * MiB, 'descriptor-bound');
    const digest = pushImage('team/bound', layer);
    expect((await get(`${mirror.url}/v2/team/bound/manifests/v1`)).status).toBe(200);
    // The upstream streams the layer and then does not stop (64 MiB more).
    upstream.fault = (r) => (r.kind === 'blob' && r.path.endsWith(digest) ? { chunked: true, trailingBytes: 64 * MiB } : undefined);
    const cut = await get(`${mirror.url}/v2/team/bound/blobs/${digest}`);
    expect(cut.status === 200 ? cut.truncated : cut.status >= 500).toBe(true);
    expect(sha256(cut.body)).not.toBe(digest);
    expect(cut.body.length).toBeLessThan(layer.length);
    // The mirror stopped reading right past the bound: the upstream sent far less than it meant to.
    await waitFor(() => sentFor(digest).length === 1 && sentFor(digest)[0]!.bytesSent !== undefined, 5000, 'the upstream answer');
    await waitFor(() => mirror.mirror.downloads.size === 0, 10_000, 'the download to end');
    expect(sentFor(digest)[0]!.bytesSent!).toBeLessThan(layer.length + 24 * MiB);
    expect(existsSync(blobFile(mirror.storage, digest))).toBe(false);
    expect(readdirSync(join(mirror.storage, 'tmp'))).toHaveLength(0);

    upstream.fault = undefined;
    const fixed = await get(`${mirror.url}/v2/team/bound/blobs/${digest}`);
    expect(fixed.status).toBe(200);
    expect(sha256(fixed.body)).toBe(digest);
  });

  it('without a known descriptor, is bounded by downloads.maxBlobSize (a chunked blob under it is served and stored)', async () => {
    const small = pseudoRandomBytes(3 * MiB, 'chunked-under-the-cap');
    const smallDigest = upstream.addBlob(small);
    const big = pseudoRandomBytes(12 * MiB, 'chunked-over-the-cap');
    const bigDigest = upstream.addBlob(big);
    upstream.fault = (r) => (r.kind === 'blob' ? { chunked: true } : undefined);
    try {
      const served = await get(`${mirror.url}/v2/team/app/blobs/${smallDigest}`);
      expect(sha256(served.body)).toBe(smallDigest);
      await waitFor(() => existsSync(blobFile(mirror.storage, smallDigest)), 10_000, 'the small blob to be stored');

      const refused = await get(`${mirror.url}/v2/team/app/blobs/${bigDigest}`);
      expect(refused.status === 200 ? refused.truncated : refused.status >= 500).toBe(true);
      expect(refused.body.length).toBeLessThanOrEqual(8 * MiB);
      await waitFor(() => mirror.mirror.downloads.size === 0, 10_000, 'the download to end');
      expect(existsSync(blobFile(mirror.storage, bigDigest))).toBe(false);
      expect(mirror.logs.some((l) => l.msg.startsWith('blob download failed') && /8388608/.test(String(l.err)))).toBe(true);
    } finally {
      upstream.fault = undefined;
    }
    // With a Content-Length over the cap it is refused before a byte is read.
    upstream.reset();
    const announced = await get(`${mirror.url}/v2/team/app/blobs/${bigDigest}`);
    expect(announced.status).toBe(502);
    expect(JSON.parse(announced.body.toString('utf8')).errors[0].code).toBe('SIZE_INVALID');
    expect(existsSync(blobFile(mirror.storage, bigDigest))).toBe(false);
  });
});
