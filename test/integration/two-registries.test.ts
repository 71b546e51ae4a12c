// Two real registries behind one mirror (issue 5): two CNCF distribution instances, each
// with its own token endpoint; ns routing and host-prefix routing reach the right one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { mkdtempSync, rmSync } from 'node:fs';
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
    const layer = await get(`${mirror.url}/v2/org/app/blobs/${ghcrImage.layers[0]!.digest}?ns=ghcr.io`);
    expect(layer.status).toBe(200);
    expect(ghcr.count({ kind: 'blob', method: 'GET', status: 200 })).toBe(1);
    expect(hub.count({ kind: 'blob' })).toBe(0);
  });

  it('a host path prefix reaches the right registry (as podman/CRI-O path mirrors send it), with skopeo', async () => {
    await skopeoCopy(`docker://${mirror.host}/ghcr.io/org/app:1.0`, `dir:${join(work, 'ghcr')}`);
    expect(ghcr.count({ kind: 'manifest', status: 200 })).toBeGreaterThan(0);
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
