// Two real registries behind one mirror (issue 5): two CNCF distribution instances, each
// with its own token endpoint; ns routing and host-prefix routing reach the right one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get, sha256 } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let hub: RealUpstream;
let ghcr: RealUpstream;
let mirror: TestMirror;
let hubImage: Image;
let ghcrImage: Image;
const work = mkdtempSync(join(tmpdir(), 'two-registries-'));

beforeAll(async () => {
  [hub, ghcr] = await Promise.all([startRealUpstream(), startRealUpstream()]);
  // The same repository name and tag in both, with different content.
  hubImage = buildImage({ format: 'docker', layers: [smallLayer([{ path: 'which', content: 'docker hub\n' }])] });
  ghcrImage = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'which', content: 'ghcr\n' }])] });
  await hub.push('org/app', '1.0', hubImage);
  await ghcr.push('org/app', '1.0', ghcrImage);
  await ghcr.push('org/app', 'via-prefix', ghcrImage);
  hub.resetCounts();
  ghcr.resetCounts();
  mirror = await startMirror({
    upstreamUrl: hub.url,
    document: { upstreams: { 'docker.io': { url: hub.url }, 'ghcr.io': { url: ghcr.url, repositories: ['org/*'] } } },
  });
});
afterAll(async () => {
  await mirror?.stop();
  await hub?.stop();
  await ghcr?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('two registries behind one mirror', () => {
  it('?ns= reaches the right registry', async () => {
    const a = await get(`${mirror.url}/v2/org/app/manifests/1.0?ns=docker.io`);
    const b = await get(`${mirror.url}/v2/org/app/manifests/1.0?ns=ghcr.io`);
    expect(a.headers['docker-content-digest']).toBe(hubImage.manifest.digest);
    expect(b.headers['docker-content-digest']).toBe(ghcrImage.manifest.digest);
    expect(b.headers['oci-namespace']).toBe('ghcr.io');
    expect(a.body.equals(hubImage.manifest.bytes)).toBe(true);
    expect(b.body.equals(ghcrImage.manifest.bytes)).toBe(true);
    // Each registry's layer (and config), byte-exact, fetched from that registry only.
    for (const blob of [ghcrImage.config, ...ghcrImage.layers]) {
      const r = await get(`${mirror.url}/v2/org/app/blobs/${blob.digest}?ns=ghcr.io`);
      expect(r.status).toBe(200);
      expect(sha256(r.body)).toBe(blob.digest);
      expect(r.body.equals(blob.bytes!)).toBe(true);
    }
    expect(ghcr.count({ kind: 'blob', method: 'GET', status: 200 })).toBe(2);
    expect(hub.count({ kind: 'blob' })).toBe(0);
    for (const blob of [hubImage.config, ...hubImage.layers]) {
      const r = await get(`${mirror.url}/v2/org/app/blobs/${blob.digest}?ns=docker.io`);
      expect(sha256(r.body)).toBe(blob.digest);
      expect(r.body.equals(blob.bytes!)).toBe(true);
    }
    expect(hub.count({ kind: 'blob', method: 'GET', status: 200 })).toBe(2);
    expect(ghcr.count({ kind: 'blob', method: 'GET' })).toBe(2);
    // One registry's layer asked for from the other: refused (that registry does not have it), though cached.
    ghcr.resetCounts();
    const crossed = await get(`${mirror.url}/v2/org/app/blobs/${hubImage.layers[0]!.digest}?ns=ghcr.io`);
    expect(crossed.status).toBe(404);
    expect(JSON.parse(crossed.body.toString()).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(ghcr.count({ kind: 'blob', method: 'HEAD', status: 404 })).toBe(1);
  });

  it('a host path prefix reaches the right registry (as podman/CRI-O path mirrors send it), with skopeo', async () => {
    hub.resetCounts();
    ghcr.resetCounts();
    // A tag nothing has asked for yet: the mirror must fetch it, and only from ghcr.
    await skopeoCopy(`docker://${mirror.host}/ghcr.io/org/app:via-prefix`, `dir:${join(work, 'ghcr')}`);
    expect(ghcr.count({ kind: 'manifest', method: 'GET', path: /\/org\/app\/manifests\/via-prefix$/, status: 200 })).toBe(1);
    expect(hub.requests).toEqual([]);
    // skopeo's dir: layout names each blob by its hex digest: the ghcr content, verified.
    expect(sha256(readFileSync(join(work, 'ghcr', 'manifest.json')))).toBe(ghcrImage.manifest.digest);
    for (const blob of [ghcrImage.config, ...ghcrImage.layers]) {
      expect(sha256(readFileSync(join(work, 'ghcr', blob.digest.slice('sha256:'.length))))).toBe(blob.digest);
    }
    const viaDefault = await get(`${mirror.url}/v2/org/app/manifests/1.0`);
    expect(viaDefault.headers['docker-content-digest']).toBe(hubImage.manifest.digest);
  });

  it('refuses an unconfigured registry and a disallowed repository without asking either', async () => {
    hub.resetCounts();
    ghcr.resetCounts();
    expect((await get(`${mirror.url}/v2/org/app/manifests/1.0?ns=quay.io`)).status).toBe(404);
    expect((await get(`${mirror.url}/v2/quay.io/org/app/manifests/1.0`)).status).toBe(404);
    const denied = await get(`${mirror.url}/v2/other/app/manifests/1.0?ns=ghcr.io`);
    expect(denied.status).toBe(403);
    expect(hub.requests).toEqual([]);
    expect(ghcr.requests).toEqual([]);
  });
});
