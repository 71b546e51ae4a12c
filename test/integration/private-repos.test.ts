// Private repositories on a real upstream (issue 13, "tests that can fail"): CNCF distribution
// behind a token service that grants anonymous pulls of public repositories only. With
// upstream credentials the mirror pulls a private repository through byte-exact; without
// them its clients get a 4xx OCI error and nothing is cached; and content cached from a
// private repository is never served under another name the upstream would refuse.
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashRing } from '../../src/cluster/ring.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { freePort, startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';
const UPSTREAM_USER = 'admin';
const UPSTREAM_PASSWORD = 'admin-password';
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const errorOf = (b: Buffer) => JSON.parse(b.toString()).errors[0] as { code: string; message: string };

let upstream: RealUpstream;
let secret: Image;
let open: Image;
const work = mkdtempSync(join(tmpdir(), 'private-repos-'));

/** Every digest of an image: manifest, config, layers. */
const digestsOf = (image: Image) => [image.manifest.digest, image.config.digest, ...image.layers.map((l) => l.digest)];

function withCredentials(extra: Record<string, unknown> = {}) {
  return { upstreams: { 'docker.io': { url: upstream.url, username: UPSTREAM_USER, password: UPSTREAM_PASSWORD } }, ...extra };
}

beforeAll(async () => {
  upstream = await startRealUpstream({ privateRepos: ['secret/app'] });
  secret = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'secret', content: 'only for the paying customer\n' }])], label: 'private' });
  open = buildImage({ format: 'docker', layers: [smallLayer([{ path: 'open', content: 'anyone may read this\n' }])], label: 'public' });
  await upstream.push('secret/app', '1.0', secret);
  await upstream.push('public/app', '1.0', open);
  upstream.resetCounts();
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('the fixture itself', () => {
  it('refuses an anonymous pull of the private repository and allows the public one (so the tests below mean something)', async () => {
    const anonymous = await fetch(`${upstream.token.realm}?service=${upstream.token.service}&scope=repository:secret/app:pull`);
    const { token } = (await anonymous.json()) as { token: string };
    const refused = await get(`${upstream.registryUrl}/v2/secret/app/manifests/1.0`, { headers: { authorization: `Bearer ${token}`, accept: ACCEPT } });
    expect(refused.status).toBe(401);
    const publicToken = (await (await fetch(`${upstream.token.realm}?service=${upstream.token.service}&scope=repository:public/app:pull`)).json()) as { token: string };
    const allowed = await get(`${upstream.registryUrl}/v2/public/app/manifests/1.0`, { headers: { authorization: `Bearer ${publicToken.token}`, accept: ACCEPT } });
    expect(allowed.status).toBe(200);
  });
});

describe('with upstream credentials', () => {
  let mirror: TestMirror;
  beforeAll(async () => {
    mirror = await startMirror({ upstreamUrl: upstream.url, document: withCredentials() });
  });
  afterAll(async () => {
    await mirror?.stop();
  });

  it('pulls a private repository through byte-exact, with a token issued to the configured user, then serves it from the cache', async () => {
    const pull = async () => {
      const m = await get(`${mirror.url}/v2/secret/app/manifests/1.0`, { headers: { accept: ACCEPT } });
      expect(m.status).toBe(200);
      expect(m.headers['docker-content-digest']).toBe(secret.manifest.digest);
      expect(m.body.equals(secret.manifest.bytes)).toBe(true);
      for (const blob of [secret.config, ...secret.layers]) {
        const b = await get(`${mirror.url}/v2/secret/app/blobs/${blob.digest}`);
        expect([blob.digest, b.status]).toEqual([blob.digest, 200]);
        expect(sha(b.body)).toBe(blob.digest);
        expect(b.body.equals(blob.bytes!)).toBe(true);
      }
    };
    const tokensBefore = upstream.token.issued.length;
    await pull();
    const granted = upstream.token.issued.slice(tokensBefore).filter((t) => t.scopes.includes('repository:secret/app:pull'));
    expect(granted.length).toBeGreaterThan(0);
    expect(granted.every((t) => t.user === UPSTREAM_USER)).toBe(true);
    expect(upstream.count({ kind: 'blob', method: 'GET', status: 200 })).toBe(1 + secret.layers.length);

    upstream.resetCounts();
    await pull();
    expect(upstream.requests).toEqual([]);
    // And a real client, through the cache.
    await skopeoCopy(`docker://${mirror.host}/secret/app:1.0`, `dir:${join(work, 'secret')}`);
    expect(sha(readFileSync(join(work, 'secret', 'manifest.json')))).toBe(secret.manifest.digest);
    expect(upstream.count({ kind: 'blob' })).toBe(0);
  });

  it('never serves content cached from the private repository under another name the upstream refuses it for', async () => {
    // Cached (the test above, or now).
    for (const blob of [secret.config, ...secret.layers]) expect((await get(`${mirror.url}/v2/secret/app/blobs/${blob.digest}`)).status).toBe(200);
    expect((await get(`${mirror.url}/v2/secret/app/manifests/1.0`, { headers: { accept: ACCEPT } })).status).toBe(200);
    for (const digest of digestsOf(secret)) expect(existsSync(blobFile(mirror.storage, digest))).toBe(true);

    for (const name of ['public/app', 'nobody/here']) {
      upstream.resetCounts();
      for (const blob of [secret.config, ...secret.layers]) {
        for (const method of ['GET', 'HEAD']) {
          const r = await get(`${mirror.url}/v2/${name}/blobs/${blob.digest}`, { method });
          expect([name, method, blob.digest, r.status]).toEqual([name, method, blob.digest, 404]);
          if (method === 'GET') expect(errorOf(r.body).code).toBe('BLOB_UNKNOWN');
          expect(r.body.includes(blob.bytes!)).toBe(false);
        }
      }
      const byDigest = await get(`${mirror.url}/v2/${name}/manifests/${secret.manifest.digest}`, { headers: { accept: ACCEPT } });
      expect([name, byDigest.status]).toEqual([name, 404]);
      expect(errorOf(byDigest.body).code).toBe('MANIFEST_UNKNOWN');
      // The refusal is the upstream's word for that name, asked each time (nothing is linked).
      expect(upstream.count({ kind: 'blob', method: 'HEAD', status: 404 })).toBe(2 * (1 + secret.layers.length));
      expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(0);
      expect(mirror.mirror.index.hasLink('docker.io', name, secret.layers[0]!.digest)).toBe(false);
    }

    // A mirror without credentials on the same cache: the public name is refused just the same.
    await mirror.stop({ keepStorage: true });
    const anonymous = await startMirror({ upstreamUrl: upstream.url, storage: mirror.storage });
    try {
      for (const blob of [secret.config, ...secret.layers]) {
        const r = await get(`${anonymous.url}/v2/public/app/blobs/${blob.digest}`);
        expect([blob.digest, r.status]).toEqual([blob.digest, 404]);
        expect(r.body.includes(blob.bytes!)).toBe(false);
      }
    } finally {
      await anonymous.stop();
      mirror = await startMirror({ upstreamUrl: upstream.url, storage: mirror.storage, document: withCredentials() });
    }
  });
});

describe('without upstream credentials', () => {
  let mirror: TestMirror;
  beforeAll(async () => {
    mirror = await startMirror({ upstreamUrl: upstream.url });
  });
  afterAll(async () => {
    await mirror?.stop();
  });

  it('answers a 4xx OCI error for the private repository (never a 5xx), caches nothing, and still pulls public ones', async () => {
    // The mirror works: the public repository pulls through.
    const pub = await get(`${mirror.url}/v2/public/app/manifests/1.0`, { headers: { accept: ACCEPT } });
    expect(pub.status).toBe(200);
    expect(pub.body.equals(open.manifest.bytes)).toBe(true);
    expect(sha((await get(`${mirror.url}/v2/public/app/blobs/${open.layers[0]!.digest}`)).body)).toBe(open.layers[0]!.digest);

    upstream.resetCounts();
    const tokensBefore = upstream.token.issued.length;
    const paths = [
      '/v2/secret/app/manifests/1.0',
      `/v2/secret/app/manifests/${secret.manifest.digest}`,
      `/v2/secret/app/blobs/${secret.layers[0]!.digest}`,
      `/v2/secret/app/blobs/${secret.config.digest}`,
      '/v2/secret/app/tags/list',
    ];
    for (let round = 0; round < 2; round++) {
      for (const path of paths) {
        for (const method of ['GET', 'HEAD']) {
          const r = await get(`${mirror.url}${path}`, { method, headers: { accept: ACCEPT } });
          expect([method, path, r.status]).toEqual([method, path, 403]);
          if (method === 'GET') {
            expect(r.headers['content-type']).toMatch(/^application\/json/);
            const error = errorOf(r.body);
            expect([path, error.code]).toEqual([path, 'DENIED']);
            expect(error.message).toMatch(/docker\.io denied access to secret\/app/);
          }
        }
      }
    }
    // The upstream refused the mirror's anonymous token for that scope, every time it was asked.
    const issued = upstream.token.issued.slice(tokensBefore);
    expect(issued.length).toBeGreaterThan(0);
    for (const t of issued) {
      expect(t.user).toBeUndefined();
      expect(t.granted).toEqual([{ name: 'secret/app', actions: [] }]);
    }
    expect(upstream.count({ status: 200 })).toBe(0);
    expect(upstream.count({ kind: 'blob', method: 'GET', status: 401 })).toBeGreaterThanOrEqual(2);
    // Nothing cached: no bytes, no index rows, no tag, no link; a third request asks again.
    for (const digest of digestsOf(secret)) {
      expect(existsSync(blobFile(mirror.storage, digest))).toBe(false);
      expect(mirror.mirror.index.isIndexed(digest)).toBe(false);
      expect(mirror.mirror.index.hasLink('docker.io', 'secret/app', digest)).toBe(false);
    }
    expect(mirror.mirror.index.tagsOf('docker.io', 'secret/app')).toEqual([]);
    upstream.resetCounts();
    expect((await get(`${mirror.url}/v2/secret/app/manifests/1.0`, { headers: { accept: ACCEPT } })).status).toBe(403);
    expect(upstream.count({ kind: 'manifest', status: 401 })).toBeGreaterThan(0);
  });
});

describe('secrets in the logs', () => {
  it('never logs the upstream password, a client password, a bearer token, the peer secret, or their Basic forms', async () => {
    const clientPassword = 'client-pass-9f3a7c';
    const wrongPassword = 'wrong-pass-51d2e8';
    const peerSecret = 'peer-secret-for-the-log-test-8c1b';
    const htpasswd = join(work, 'htpasswd');
    writeFileSync(htpasswd, `puller:${bcrypt.hashSync(clientPassword, 8).replace(/^\$2b\$/, '$2y$')}\n`);
    const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
    const ports = [await freePort(), await freePort()];
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const pair: TestMirror[] = [];
    const tokensBefore = upstream.token.issued.length;
    try {
      for (const [i, port] of ports.entries()) {
        pair.push(
          await startMirror({
            upstreamUrl: upstream.url,
            document: withCredentials({ listen: `127.0.0.1:${port}`, auth: { htpasswd }, cluster: { self: urls[i], peers: urls, secret: peerSecret } }),
          }),
        );
      }
      // A layer owned by the other replica: fetched from it with a signed request.
      const layer = secret.layers[0]!.digest;
      const owner = new HashRing(urls).owner(layer)!;
      const via = pair.find((m) => m.url !== owner)!;
      const ok = { authorization: basic('puller', clientPassword), accept: ACCEPT };
      expect((await get(`${via.url}/v2/secret/app/manifests/1.0`, { headers: ok })).status).toBe(200);
      for (const blob of [secret.config, ...secret.layers]) expect(sha((await get(`${via.url}/v2/secret/app/blobs/${blob.digest}`, { headers: ok })).body)).toBe(blob.digest);
      // Failures log more: a wrong password, an unknown user, a refused name, a missing blob.
      expect((await get(`${via.url}/v2/secret/app/manifests/1.0`, { headers: { authorization: basic('puller', wrongPassword) } })).status).toBe(401);
      expect((await get(`${via.url}/v2/`, { headers: { authorization: basic('stranger', clientPassword) } })).status).toBe(401);
      expect((await get(`${via.url}/v2/public/app/blobs/${layer}`, { headers: ok })).status).toBe(404);
      expect((await get(`${via.url}/v2/secret/app/blobs/sha256:${'0'.repeat(64)}`, { headers: ok })).status).toBe(404);
      // The owner served the layer to its fellow replica (a signed request, also logged).
      const owning = pair.find((m) => m.url === owner)!;
      await waitFor(() => owning.accessLog().some((l) => l.path === `/v2/secret/app/blobs/${layer}` && l.status === 200), 5000, "the owner's access line");
    } finally {
      for (const m of pair) await m.stop();
    }
    const tokens = upstream.token.issued.slice(tokensBefore).map((t) => t.token);
    expect(tokens.length).toBeGreaterThan(0);
    const secrets: [string, string][] = [
      ['upstream password', UPSTREAM_PASSWORD],
      ['upstream Basic credentials', Buffer.from(`${UPSTREAM_USER}:${UPSTREAM_PASSWORD}`).toString('base64')],
      ['client password', clientPassword],
      ['wrong client password', wrongPassword],
      ['client Basic credentials', Buffer.from(`puller:${clientPassword}`).toString('base64')],
      ['wrong client Basic credentials', Buffer.from(`puller:${wrongPassword}`).toString('base64')],
      ['unknown user Basic credentials', Buffer.from(`stranger:${clientPassword}`).toString('base64')],
      ['peer secret', peerSecret],
      ['peer secret (base64)', Buffer.from(peerSecret).toString('base64')],
      // A token whole, and its signature alone (a log line might cut the token short).
      ...tokens.flatMap((t, i): [string, string][] => [[`bearer token ${i}`, t], [`bearer token ${i} signature`, t.split('.')[2]!]]),
    ];
    const text = pair.flatMap((m) => m.logs).map((l) => JSON.stringify(l)).join('\n');
    expect(text.length).toBeGreaterThan(0);
    for (const [what, value] of secrets) expect([what, text.includes(value)]).toEqual([what, false]);
  });
});
