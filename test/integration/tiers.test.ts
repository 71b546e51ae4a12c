// Tiered mirrors (issue 9): a site mirror uses a regional mirror as its upstream, for Docker
// Hub and for another registry, with ns routing preserved across the tiers and the regional
// tier's client auth (Basic) in between. The real upstream sees one fetch per blob.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { get } from '../fixtures/http-client.js';

let hub: RealUpstream;
let quay: FakeUpstream;
let content: SeededContent;
let regional: TestMirror;
const sites: TestMirror[] = [];
const work = mkdtempSync(join(tmpdir(), 'tiers-'));

async function site(): Promise<TestMirror> {
  const creds = { username: 'site', password: 'site-secret', sendNamespace: true };
  const m = await startMirror({
    upstreamUrl: regional.url,
    document: { upstreams: { 'docker.io': { url: regional.url, ...creds }, 'quay.io': { url: regional.url, ...creds } } },
  });
  sites.push(m);
  return m;
}

beforeAll(async () => {
  hub = await startRealUpstream();
  content = await seedStandardContent(hub);
  quay = await startFakeUpstream({ auth: true });
  const htpasswd = join(work, 'htpasswd');
  writeFileSync(htpasswd, `site:${bcrypt.hashSync('site-secret', 8)}\n`);
  regional = await startMirror({
    upstreamUrl: hub.url,
    document: { auth: { htpasswd }, upstreams: { 'docker.io': { url: hub.url }, 'quay.io': { url: quay.url } } },
  });
});
afterAll(async () => {
  for (const s of sites) await s.stop();
  await regional?.stop();
  await quay?.stop();
  await hub?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('site mirror → regional mirror → upstream', () => {
  it('pulls Docker Hub images through two tiers; the upstream sees one fetch per blob', async () => {
    const a = await site();
    const b = await site();
    for (const m of [a, b]) {
      await skopeoCopy(`docker://${m.host}/library/alpine:3.19`, `dir:${join(work, `alpine-${m.host.replace(':', '-')}`)}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
    }
    const amd64 = content.alpine.content.images[0]!;
    for (const blob of [amd64.config, ...amd64.layers]) {
      expect(hub.count({ kind: 'blob', method: 'GET', path: new RegExp(blob.digest), status: 200 })).toBe(1);
    }
    // The regional tier saw the sites' requests routed by ns, authenticated.
    const regionalLines = regional.accessLog();
    expect(regionalLines.some((l) => l.ns === 'docker.io' && l.status === 200)).toBe(true);
    // Each site met the Basic challenge once, then every manifest and blob was answered.
    const answered = regionalLines.filter((l) => /\/(manifests|blobs)\//.test(String(l.path)));
    expect(answered.filter((l) => l.status === 401)).toHaveLength(2);
    expect(answered.filter((l) => l.status !== 401).every((l) => l.status === 200)).toBe(true);
  });

  it('keeps another registry apart across the tiers (ns, or a host prefix at the site)', async () => {
    const image = addTinyImage(quay, 'org/tool', '2.0', 'tiers-quay');
    const a = sites[0]!;
    const r = await get(`${a.url}/v2/quay.io/org/tool/manifests/2.0`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(image.digest);
    const viaNs = await get(`${a.url}/v2/org/tool/blobs/${image.layer}?ns=quay.io`);
    expect(viaNs.body.toString()).toBe('layer tiers-quay');
    expect(quay.count({ kind: 'manifest', method: 'GET', authorized: true })).toBe(1);
    // Docker Hub's tier never heard of it.
    expect(hub.count({ path: /org\/tool/ })).toBe(0);
  });

  it('a site without the regional credentials is refused by the regional tier', async () => {
    const m = await startMirror({ upstreamUrl: regional.url, document: { upstreams: { 'docker.io': { url: regional.url, sendNamespace: true } } } });
    sites.push(m);
    const r = await get(`${m.url}/v2/library/busybox/manifests/1.36`);
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body.toString()).errors[0].code).toBe('DENIED');
  });
});
