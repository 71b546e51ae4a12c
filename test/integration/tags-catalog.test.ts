// Listing what is there (issue 14): tags/list pages that point back at the mirror (paged
// here, or the upstream's own pages with their opaque tokens), the catalog of repositories
// the mirror holds, sha512 digests, and a manifest asked for as a blob (containerd does).
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get, type Fetched } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: RealUpstream;
let image: Image;
const work = mkdtempSync(join(tmpdir(), 'tags-catalog-'));

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sha512 = (b: Buffer) => `sha512:${createHash('sha512').update(b).digest('hex')}`;
const errorCode = (r: Fetched) => JSON.parse(r.body.toString()).errors[0].code as string;

beforeAll(async () => {
  upstream = await startRealUpstream();
  image = buildImage({ layers: [smallLayer([{ path: 'etc/listing', content: 'tags and catalog' }])], format: 'oci' });
});

afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The target of a `Link: <…>; rel="next"` header, or undefined. */
function nextLink(r: Fetched): string | undefined {
  const link = r.headers.link;
  if (link === undefined) return undefined;
  const m = /^<([^>]+)>;\s*rel="?next"?$/.exec(String(link));
  expect(m, `Link header ${String(link)}`).not.toBeNull();
  return m![1];
}

/** Follow `Link` from `first` to the end (bounded); every page's tags, and every Link target. */
async function followPages(mirror: TestMirror, first: string, key: 'tags' | 'repositories'): Promise<{ items: string[]; links: string[]; pages: number }> {
  const items: string[] = [];
  const links: string[] = [];
  let path: string | undefined = first;
  let pages = 0;
  while (path !== undefined) {
    if (++pages > 30) throw new Error(`more than 30 pages: ${links.join('\n')}`);
    const r = await get(`${mirror.url}${path}`);
    expect([path, r.status]).toEqual([path, 200]);
    items.push(...(JSON.parse(r.body.toString())[key] as string[]));
    path = nextLink(r);
    if (path !== undefined) links.push(path);
  }
  return { items, links, pages };
}

describe('tags/list pagination', () => {
  it('pages an upstream that ignores n and last (distribution 2.8): Link points at the mirror, every tag once, in lexical order, ns kept', async () => {
    const tags = Array.from({ length: 60 }, (_, i) => `v${i}`);
    for (const tag of tags) await upstream.push('team/many', tag, image);
    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      const plain = await followPages(mirror, '/v2/team/many/tags/list?n=10', 'tags');
      expect(plain.items).toEqual([...tags].sort());
      expect(new Set(plain.items).size).toBe(60);
      expect(plain.pages).toBe(6);
      for (const link of plain.links) expect(link).toMatch(/^\/v2\/team\/many\/tags\/list\?n=10&last=v\d+$/);
      // Routed by containerd's ?ns=: the namespace stays in every Link.
      const viaNs = await followPages(mirror, '/v2/team/many/tags/list?n=10&ns=docker.io', 'tags');
      expect(viaNs.items).toEqual([...tags].sort());
      expect(viaNs.links).toHaveLength(5);
      for (const link of viaNs.links) expect(new URL(link, mirror.url).searchParams.get('ns')).toBe('docker.io');
    } finally {
      await mirror.stop();
    }
  });

  it("passes an upstream's own pages through: its opaque next_page token, its order, a Link that points at the mirror", async () => {
    const paging = await startFakeUpstream({ tagPaging: 'token' });
    // Added in an order that is not lexical: the upstream's order must survive.
    const tags = Array.from({ length: 25 }, (_, i) => `r${(i * 7) % 25}`);
    const first = addTinyImage(paging, 'team/paged', tags[0]!, 'paged');
    for (const tag of tags.slice(1)) paging.setTag('team/paged', tag, first.digest);
    const mirror = await startMirror({ upstreamUrl: paging.url });
    try {
      const plain = await followPages(mirror, '/v2/team/paged/tags/list?n=10', 'tags');
      expect(plain.items).toEqual(tags);
      expect(plain.pages).toBe(3);
      for (const link of plain.links) {
        expect(link).toMatch(/^\/v2\/team\/paged\/tags\/list\?/);
        const q = new URL(link, mirror.url).searchParams;
        expect(q.get('n')).toBe('10');
        expect(q.get('next_page')).toMatch(/^[A-Za-z0-9_-]+$/);
      }
      // The mirror forwarded the client's token to the upstream.
      const tagRequests = paging.requests.filter((r) => r.kind === 'tags' && r.status === 200);
      expect(tagRequests.filter((r) => r.query.includes('next_page=')).length).toBe(2);
      const viaNs = await followPages(mirror, '/v2/team/paged/tags/list?n=10&ns=docker.io', 'tags');
      expect(viaNs.items).toEqual(tags);
      for (const link of viaNs.links) expect(new URL(link, mirror.url).searchParams.get('ns')).toBe('docker.io');
    } finally {
      await mirror.stop();
      await paging.stop();
    }
  });
});

describe('the catalog', () => {
  let fake: FakeUpstream;
  beforeAll(async () => {
    fake = await startFakeUpstream();
    addTinyImage(fake, 'library/alpine', '3.19', 'alpine');
    addTinyImage(fake, 'team/app', 'v1', 'app');
    addTinyImage(fake, 'org/app', 'v1', 'ghcr-app');
    addTinyImage(fake, 'team/never-pulled', 'v1', 'never');
  });
  afterAll(async () => {
    await fake?.stop();
  });

  const twoUpstreams = () => ({ upstreams: { 'docker.io': { url: fake.url }, 'ghcr.io': { url: fake.url } } });

  async function pullSome(mirror: TestMirror): Promise<void> {
    for (const path of ['/v2/alpine/manifests/3.19', '/v2/team/app/manifests/v1', '/v2/ghcr.io/org/app/manifests/v1']) {
      expect([path, (await get(`${mirror.url}${path}`)).status]).toEqual([path, 200]);
    }
    // Only a blob, no tag: the repository is known by its link.
    const blob = fake.addBlob(Buffer.from('a lone blob'), ['team/blob-only']);
    expect((await get(`${mirror.url}/v2/team/blob-only/blobs/${blob}`)).status).toBe(200);
    // Its link is written when the download commits, just after the response.
    await waitFor(() => mirror.mirror.index.hasLink('docker.io', 'team/blob-only', blob), 10_000, 'the lone blob to be linked');
  }

  it('lists the repositories the mirror holds as clients name them, sorted, paged with n, last and Link', async () => {
    const mirror = await startMirror({ upstreamUrl: fake.url, document: twoUpstreams() });
    try {
      await pullSome(mirror);
      const expected = ['ghcr.io/org/app', 'library/alpine', 'team/app', 'team/blob-only'];
      const all = await get(`${mirror.url}/v2/_catalog`);
      expect(all.status).toBe(200);
      expect(all.headers['content-type']).toMatch(/^application\/json/);
      expect(JSON.parse(all.body.toString())).toEqual({ repositories: expected });
      expect(all.headers.link).toBeUndefined();
      const paged = await followPages(mirror, '/v2/_catalog?n=3', 'repositories');
      expect(paged.items).toEqual(expected);
      expect(paged.links).toHaveLength(1);
      expect(new URL(paged.links[0]!, mirror.url).pathname).toBe('/v2/_catalog');
      expect(new URL(paged.links[0]!, mirror.url).searchParams.get('last')).toBe('team/app');
      const after = await get(`${mirror.url}/v2/_catalog?n=2&last=ghcr.io/org/app`);
      expect(JSON.parse(after.body.toString())).toEqual({ repositories: ['library/alpine', 'team/app'] });
      const bad = await get(`${mirror.url}/v2/_catalog?n=many`);
      expect(bad.status).toBe(400);
      // The names it lists are names a client can pull by.
      expect((await get(`${mirror.url}/v2/ghcr.io/org/app/tags/list`)).status).toBe(200);
    } finally {
      await mirror.stop();
    }
  });

  it('is behind client authentication when it is on', async () => {
    const htpasswd = join(work, 'htpasswd');
    writeFileSync(htpasswd, `lister:${bcrypt.hashSync('list-pass', 10).replace(/^\$2b\$/, '$2y$')}\n`);
    const mirror = await startMirror({ upstreamUrl: fake.url, document: { auth: { htpasswd } } });
    try {
      const authorization = `Basic ${Buffer.from('lister:list-pass').toString('base64')}`;
      expect((await get(`${mirror.url}/v2/team/app/manifests/v1`, { headers: { authorization } })).status).toBe(200);
      const anonymous = await get(`${mirror.url}/v2/_catalog`);
      expect(anonymous.status).toBe(401);
      expect(errorCode(anonymous)).toBe('UNAUTHORIZED');
      const ok = await get(`${mirror.url}/v2/_catalog`, { headers: { authorization } });
      expect(ok.status).toBe(200);
      expect(JSON.parse(ok.body.toString())).toEqual({ repositories: ['team/app'] });
    } finally {
      await mirror.stop();
    }
  });

  it('is turned off by catalog: false (404 UNSUPPORTED)', async () => {
    const mirror = await startMirror({ upstreamUrl: fake.url, document: { catalog: false } });
    try {
      expect((await get(`${mirror.url}/v2/team/app/manifests/v1`)).status).toBe(200);
      const r = await get(`${mirror.url}/v2/_catalog`);
      expect(r.status).toBe(404);
      expect(errorCode(r)).toBe('UNSUPPORTED');
    } finally {
      await mirror.stop();
    }
  });
});

describe('sha512 digests', () => {
  it('a blob pushed under its sha512 digest is served, verified, stored under blobs/sha512 and then a hit; unknown algorithms are 400', async () => {
    const bytes = Buffer.from('content addressed by sha512, '.repeat(1000));
    const digest = sha512(bytes);
    await upstream.push('team/sha512', 'v1', image);
    const bearer = `Bearer ${upstream.token.sign([{ type: 'repository', name: 'team/sha512', actions: ['pull', 'push'] }], 'admin')}`;
    const start = await request(`${upstream.registryUrl}/v2/team/sha512/blobs/uploads/`, { method: 'POST', headers: { authorization: bearer, 'content-length': '0' } });
    await start.body.dump();
    const location = new URL(String(start.headers.location), upstream.registryUrl);
    location.searchParams.set('digest', digest);
    const put = await request(location, { method: 'PUT', headers: { authorization: bearer, 'content-type': 'application/octet-stream' }, body: bytes });
    await put.body.dump();
    // distribution 2.8 accepts a sha512 upload (and serves it by that digest).
    expect(put.statusCode).toBe(201);

    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      upstream.resetCounts();
      const cold = await get(`${mirror.url}/v2/team/sha512/blobs/${digest}`);
      expect(cold.status).toBe(200);
      expect(cold.headers['docker-content-digest']).toBe(digest);
      expect(cold.headers['content-length']).toBe(String(bytes.length));
      expect(cold.body.equals(bytes)).toBe(true);
      expect(upstream.count({ kind: 'blob', method: 'GET', status: 200 })).toBe(1);
      const hex = digest.slice('sha512:'.length);
      await waitFor(() => existsSync(join(mirror.storage, 'blobs', 'sha512', hex.slice(0, 2), hex)), 10_000, 'the sha512 blob in the store');
      expect(existsSync(join(mirror.storage, 'blobs', 'sha512', hex.slice(0, 2), hex))).toBe(true);
      upstream.resetCounts();
      const warm = await get(`${mirror.url}/v2/team/sha512/blobs/${digest}`);
      expect(warm.body.equals(bytes)).toBe(true);
      expect(warm.headers['docker-content-digest']).toBe(digest);
      expect((await mirror.accessFor(warm.headers)).outcome).toBe('hit');
      expect(upstream.requests).toHaveLength(0);
      for (const bad of ['md5:0123456789abcdef0123456789abcdef', `sha384:${'a'.repeat(96)}`]) {
        for (const kind of ['blobs', 'manifests']) {
          const r = await get(`${mirror.url}/v2/team/sha512/${kind}/${bad}`);
          expect([kind, bad, r.status, errorCode(r)]).toEqual([kind, bad, 400, 'DIGEST_INVALID']);
        }
      }
      expect(upstream.requests).toHaveLength(0);
    } finally {
      await mirror.stop();
    }
  });

  it('a sha512 blob whose bytes do not match is refused and never cached', async () => {
    const fake = await startFakeUpstream();
    const bytes = Buffer.from('sha512 bytes that get corrupted on the way, '.repeat(2000));
    const digest = fake.addBlob(bytes, ['team/app'], 'sha512');
    expect(digest).toBe(sha512(bytes));
    const mirror = await startMirror({ upstreamUrl: fake.url });
    try {
      fake.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { corrupt: true } : undefined);
      const bad = await get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      // Answered (the size was known), then cut before the last byte: never a complete wrong blob.
      expect(bad.status).toBe(200);
      expect(bad.truncated).toBe(true);
      expect(bad.body.length).toBeLessThan(bytes.length);
      const hex = digest.slice('sha512:'.length);
      expect(existsSync(join(mirror.storage, 'blobs', 'sha512', hex.slice(0, 2), hex))).toBe(false);
      fake.fault = undefined;
      fake.reset();
      const good = await get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      expect(good.status).toBe(200);
      expect(good.body.equals(bytes)).toBe(true);
      expect(good.headers['docker-content-digest']).toBe(digest);
      // Not from a cache: the bad copy was never kept.
      expect(fake.count({ kind: 'blob', method: 'GET' })).toBe(1);
    } finally {
      await mirror.stop();
      await fake.stop();
    }
  });
});

describe('a manifest asked for as a blob (containerd retries /blobs/ when /manifests/ 404s)', () => {
  it('serves exactly the manifest bytes, cold (fetched by its manifest endpoint, verified, stored) and warm', async () => {
    const other = buildImage({ layers: [smallLayer([{ path: 'etc/as-blob', content: 'manifest as a blob' }])], format: 'oci', label: 'as-blob' });
    await upstream.push('team/as-blob', 'v1', other);
    await upstream.push('team/warm-blob', 'v1', image);
    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      // Cold: the mirror has never seen it (distribution answers 404 on its blob endpoint).
      const path = `/v2/team/as-blob/blobs/${other.manifest.digest}`;
      const cold = await get(`${mirror.url}${path}`);
      expect(cold.status).toBe(200);
      expect(cold.body.equals(other.manifest.bytes)).toBe(true);
      expect(cold.headers['content-length']).toBe(String(other.manifest.bytes.length));
      expect(cold.headers['docker-content-digest']).toBe(other.manifest.digest);
      expect(sha256(cold.body)).toBe(other.manifest.digest);
      const head = await get(`${mirror.url}${path}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers['content-length']).toBe(String(other.manifest.bytes.length));
      // Stored: again from the cache, and as a manifest too.
      upstream.resetCounts();
      const again = await get(`${mirror.url}${path}`);
      expect(again.body.equals(other.manifest.bytes)).toBe(true);
      const asManifest = await get(`${mirror.url}/v2/team/as-blob/manifests/${other.manifest.digest}`);
      expect(asManifest.body.equals(other.manifest.bytes)).toBe(true);
      expect(upstream.requests).toHaveLength(0);

      // Warm: pulled as a manifest first, then asked for as a blob.
      const manifest = await get(`${mirror.url}/v2/team/warm-blob/manifests/v1`, { headers: { accept: image.manifest.mediaType } });
      expect(manifest.headers['docker-content-digest']).toBe(image.manifest.digest);
      upstream.resetCounts();
      const warm = await get(`${mirror.url}/v2/team/warm-blob/blobs/${image.manifest.digest}`);
      expect(warm.status).toBe(200);
      expect(warm.body.equals(image.manifest.bytes)).toBe(true);
      expect(warm.headers['content-length']).toBe(String(image.manifest.bytes.length));
      expect(warm.headers['docker-content-digest']).toBe(image.manifest.digest);
      expect(upstream.requests).toHaveLength(0);

      // A digest that is neither a blob nor a manifest upstream stays a 404 BLOB_UNKNOWN.
      const missing = await get(`${mirror.url}/v2/team/as-blob/blobs/sha256:${'1'.repeat(64)}`);
      expect(missing.status).toBe(404);
      expect(errorCode(missing)).toBe('BLOB_UNKNOWN');
    } finally {
      await mirror.stop();
    }
  });
});
