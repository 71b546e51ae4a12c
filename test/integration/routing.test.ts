// One mirror for several registries (issue 5): containerd's ?ns=, host path prefixes, the
// default upstream, refusals, repository-scoped content and client credentials.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get, sha256 } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';

let hub: FakeUpstream;
let ghcr: FakeUpstream;
let mirror: TestMirror;

beforeAll(async () => {
  hub = await startFakeUpstream({ auth: true });
  ghcr = await startFakeUpstream({ auth: true });
  mirror = await startMirror({
    upstreamUrl: hub.url,
    document: {
      upstreams: {
        'docker.io': { url: hub.url },
        'ghcr.io': { url: ghcr.url, alias: 'gh', repositories: ['org/**', 'public/*'] },
      },
    },
  });
});
afterAll(async () => {
  await mirror?.stop();
  await hub?.stop();
  await ghcr?.stop();
});
afterEach(() => {
  hub.reset();
  ghcr.reset();
});

function code(body: Buffer): string {
  return JSON.parse(body.toString()).errors[0].code;
}

describe('routing', () => {
  it('?ns= picks the upstream and is echoed as OCI-Namespace', async () => {
    const a = addTinyImage(hub, 'library/alpine', '3.19', 'hub-alpine');
    const b = addTinyImage(ghcr, 'org/app', '1.0', 'ghcr-app');
    const viaHub = await get(`${mirror.url}/v2/library/alpine/manifests/3.19?ns=docker.io`);
    expect(viaHub.headers['docker-content-digest']).toBe(a.digest);
    expect(viaHub.headers['oci-namespace']).toBe('docker.io');
    const viaGhcr = await get(`${mirror.url}/v2/org/app/manifests/1.0?ns=ghcr.io`);
    expect(viaGhcr.headers['docker-content-digest']).toBe(b.digest);
    expect(viaGhcr.headers['oci-namespace']).toBe('ghcr.io');
    // Blobs are routed by ns too: the same repository name on both, each with its own layer.
    const hubSide = addTinyImage(hub, 'org/app', '1.0', 'hub-side-app');
    hub.reset();
    ghcr.reset();
    const layer = await get(`${mirror.url}/v2/org/app/blobs/${b.layer}?ns=ghcr.io`);
    expect(layer.status).toBe(200);
    expect(sha256(layer.body)).toBe(b.layer);
    expect(layer.body.toString()).toBe('layer ghcr-app');
    expect(ghcr.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
    expect(hub.count({ kind: 'blob' })).toBe(0);
    const hubLayer = await get(`${mirror.url}/v2/org/app/blobs/${hubSide.layer}?ns=docker.io`);
    expect(sha256(hubLayer.body)).toBe(hubSide.layer);
    expect(hubLayer.body.toString()).toBe('layer hub-side-app');
    expect(hub.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
    expect(ghcr.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
    // ghcr's layer asked for from Docker Hub: Docker Hub does not have it, whatever the cache holds.
    const crossed = await get(`${mirror.url}/v2/org/app/blobs/${b.layer}?ns=docker.io`);
    expect(crossed.status).toBe(404);
    expect(code(crossed.body)).toBe('BLOB_UNKNOWN');
  });

  it('a host or alias as the first path component routes to that upstream', async () => {
    const b = addTinyImage(ghcr, 'org/tool', '2.0', 'ghcr-tool');
    for (const prefix of ['ghcr.io', 'gh']) {
      const r = await get(`${mirror.url}/v2/${prefix}/org/tool/manifests/2.0`);
      expect(r.status).toBe(200);
      expect(r.headers['docker-content-digest']).toBe(b.digest);
      const layer = await get(`${mirror.url}/v2/${prefix}/org/tool/blobs/${b.layer}`);
      expect(sha256(layer.body)).toBe(b.layer);
    }
    expect(ghcr.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
    expect(hub.count({ kind: 'blob' })).toBe(0);
    const d = addTinyImage(hub, 'library/busybox', '1.36', 'hub-busybox');
    const viaPrefix = await get(`${mirror.url}/v2/docker.io/library/busybox/manifests/1.36`);
    expect(viaPrefix.headers['docker-content-digest']).toBe(d.digest);
  });

  it("Docker Hub's one-component names are official images under library/", async () => {
    const a = addTinyImage(hub, 'library/redis', '7', 'hub-redis');
    const r = await get(`${mirror.url}/v2/redis/manifests/7`);
    expect(r.headers['docker-content-digest']).toBe(a.digest);
    expect(hub.requests.some((q) => q.path === '/v2/library/redis/manifests/7')).toBe(true);
  });

  it('refuses registries it does not mirror and repositories it does not allow, without asking anyone', async () => {
    const unknownNs = await get(`${mirror.url}/v2/library/alpine/manifests/3.19?ns=quay.io`);
    expect(unknownNs.status).toBe(404);
    expect(code(unknownNs.body)).toBe('NAME_UNKNOWN');
    const unknownPrefix = await get(`${mirror.url}/v2/evil.example.com/x/manifests/1`);
    expect(unknownPrefix.status).toBe(404);
    const disallowed = await get(`${mirror.url}/v2/other/thing/manifests/1?ns=ghcr.io`);
    expect(disallowed.status).toBe(403);
    expect(code(disallowed.body)).toBe('DENIED');
    expect(hub.requests).toHaveLength(0);
    expect(ghcr.requests).toHaveLength(0);
  });
});

describe('repository-scoped content', () => {
  it('a blob cached via repository A is checked upstream before it is served under repository B', async () => {
    const a = addTinyImage(hub, 'team/private', 'v1', 'private-layer');
    expect((await get(`${mirror.url}/v2/team/private/manifests/v1`)).status).toBe(200);
    expect(sha256((await get(`${mirror.url}/v2/team/private/blobs/${a.layer}`)).body)).toBe(a.layer);
    hub.reset();
    // B does not contain it upstream: refused, though the bytes are in the cache.
    const guessed = await get(`${mirror.url}/v2/team/other/blobs/${a.layer}`);
    expect(guessed.status).toBe(404);
    expect(code(guessed.body)).toBe('BLOB_UNKNOWN');
    expect(hub.count({ kind: 'blob', method: 'HEAD', authorized: true })).toBe(1);
    // A repository that does contain it upstream is served from the cache after one HEAD.
    addTinyImage(hub, 'team/sibling', 'v1', 'private-layer');
    hub.reset();
    const sibling = await get(`${mirror.url}/v2/team/sibling/blobs/${a.layer}`);
    expect(sibling.status).toBe(200);
    expect(sha256(sibling.body)).toBe(a.layer);
    expect(hub.count({ kind: 'blob', method: 'HEAD', authorized: true })).toBe(1);
    expect(hub.count({ kind: 'blob', method: 'GET' })).toBe(0);
    // And from then on without asking.
    hub.reset();
    expect(sha256((await get(`${mirror.url}/v2/team/sibling/blobs/${a.layer}`)).body)).toBe(a.layer);
    expect(hub.requests).toHaveLength(0);
  });

  it("never forwards a client's credentials upstream", async () => {
    const a = addTinyImage(hub, 'team/creds', 'v1', 'creds');
    const r = await get(`${mirror.url}/v2/team/creds/blobs/${a.layer}`, { headers: { authorization: 'Basic dXNlcjpodWItcGFzc3dvcmQ=' } });
    expect(r.status).toBe(200);
    expect(sha256(r.body)).toBe(a.layer);
    for (const q of hub.requests) expect(q.authorization ?? '').not.toContain('dXNlcjpodWItcGFzc3dvcmQ=');
    const ping = await get(`${mirror.url}/v2/`, { headers: { authorization: 'Basic dXNlcjpodWItcGFzc3dvcmQ=' } });
    expect(ping.status).toBe(200);
  });
});
