// Referrers through the mirror (issue 14, items 1 and 2): GET /v2/<name>/referrers/<digest>
// answered from the upstream's referrers API, or from its referrers tag schema (`sha256-<hex>`)
// when it has no API (distribution 2.8, the real test upstream), plus the referrers the
// mirror holds itself; signatures and SBOMs pulled like any other content.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get, type Fetched } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildArtifact, buildCosignSignature, buildImage, buildReferrersIndex, descriptorOf, referrersTagOf, smallLayer } from '../fixtures/oci-images.js';
import {
  ACCEPT_MANIFESTS, byDigest, described, pullByteExact, referrersOf, SBOM_TYPE, sha, SIG_TYPE, type ReferrersIndex,
} from '../fixtures/referrers-client.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';

function errorCode(r: Fetched): string | undefined {
  return (JSON.parse(r.body.toString()) as { errors: { code: string }[] }).errors[0]?.code;
}

describe('referrers through the tag schema of an upstream without the referrers API (distribution 2.8)', () => {
  let upstream: RealUpstream;
  let mirror: TestMirror;
  const work = mkdtempSync(join(tmpdir(), 'referrers-'));
  const repo = 'team/signed';
  const image = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'app/signed', content: 'signed\n' }])], label: 'signed' });
  const unsigned = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'app/unsigned', content: 'unsigned\n' }])], label: 'unsigned' });
  const signature = buildArtifact({
    subject: descriptorOf(image),
    artifactType: SIG_TYPE,
    payload: Buffer.from(JSON.stringify({ critical: { image: { 'docker-manifest-digest': image.manifest.digest } } })),
    payloadMediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
    annotations: { 'dev.cosignproject.cosign/signature': 'MEUCIQDfixture' },
  });
  const sbom = buildArtifact({
    subject: descriptorOf(image),
    artifactType: SBOM_TYPE,
    payload: Buffer.from(JSON.stringify({ spdxVersion: 'SPDX-2.3', name: 'signed', packages: [] })),
    payloadMediaType: SBOM_TYPE,
  });
  const cosignSignature = buildCosignSignature(image.manifest.digest);
  const tagIndex = buildReferrersIndex([signature, sbom]);

  beforeAll(async () => {
    upstream = await startRealUpstream();
    await upstream.push(repo, 'v1', image);
    await upstream.push(repo, 'unsigned', unsigned);
    await upstream.push(repo, signature.manifest.digest, signature);
    await upstream.push(repo, sbom.manifest.digest, sbom);
    // As oras and cosign do on a registry without the API: the referrers index under sha256-<hex>,
    // and cosign's legacy signature tag beside it.
    await upstream.push(repo, referrersTagOf(image.manifest.digest), tagIndex);
    await upstream.push(repo, `${referrersTagOf(image.manifest.digest)}.sig`, cosignSignature);
    mirror = await startMirror({ upstreamUrl: upstream.url });
  });
  afterAll(async () => {
    await mirror?.stop();
    await upstream?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('the upstream really has no referrers API (the test means something)', async () => {
    const direct = await get(`${upstream.registryUrl}/v2/${repo}/referrers/${image.manifest.digest}`);
    expect(direct.status).toBe(404);
  });

  it('lists the signature and the SBOM as an OCI image index', async () => {
    const r = await get(`${mirror.url}/v2/${repo}/referrers/${image.manifest.digest}`);
    const body = referrersOf(r);
    expect(r.headers['oci-filters-applied']).toBeUndefined();
    expect(byDigest(body.manifests)).toEqual(byDigest([described(signature), described(sbom)]));
    expect((await mirror.accessFor(r.headers)).outcome).toBe('miss');
  });

  it('filters by artifactType and says so in OCI-Filters-Applied', async () => {
    const r = await get(`${mirror.url}/v2/${repo}/referrers/${image.manifest.digest}?artifactType=${encodeURIComponent(SBOM_TYPE)}`);
    expect(referrersOf(r).manifests).toEqual([described(sbom)]);
    expect(r.headers['oci-filters-applied']).toBe('artifactType');
    const none = await get(`${mirror.url}/v2/${repo}/referrers/${image.manifest.digest}?artifactType=application%2Fnothing`);
    expect(referrersOf(none).manifests).toEqual([]);
    expect(none.headers['oci-filters-applied']).toBe('artifactType');
  });

  it('answers within the TTL without asking the upstream', async () => {
    upstream.resetCounts();
    const r = await get(`${mirror.url}/v2/${repo}/referrers/${image.manifest.digest}`);
    expect(referrersOf(r).manifests).toHaveLength(2);
    expect((await mirror.accessFor(r.headers)).outcome).toBe('hit');
    expect(upstream.requests).toEqual([]);
  });

  it('answers an empty index, not an error, for a subject with no referrers', async () => {
    for (const subject of [unsigned.manifest.digest, sha(Buffer.from('nothing refers to this'))]) {
      const r = await get(`${mirror.url}/v2/${repo}/referrers/${subject}`);
      expect(referrersOf(r).manifests).toEqual([]);
    }
    // An unknown repository too: nothing refers to anything there.
    const r = await get(`${mirror.url}/v2/team/nosuch/referrers/${image.manifest.digest}`);
    expect(referrersOf(r).manifests).toEqual([]);
  });

  it('refuses a bad digest (DIGEST_INVALID) and a bad name (NAME_INVALID) with a 400', async () => {
    for (const digest of ['sha256:abc', 'latest', `md5:${'0'.repeat(32)}`, `sha256:${'A'.repeat(64)}`]) {
      const r = await get(`${mirror.url}/v2/${repo}/referrers/${digest}`);
      expect(r.status, digest).toBe(400);
      expect(errorCode(r)).toBe('DIGEST_INVALID');
    }
    const bad = await get(`${mirror.url}/v2/Team/Signed/referrers/${image.manifest.digest}`);
    expect(bad.status).toBe(400);
    expect(errorCode(bad)).toBe('NAME_INVALID');
    const n = await get(`${mirror.url}/v2/${repo}/referrers/${image.manifest.digest}?n=-1`);
    expect(n.status).toBe(400);
  });

  it('pulls the referrers, their blobs, the sha256-<hex> index and the cosign .sig tag byte-exact', async () => {
    await pullByteExact(mirror.url, repo, signature);
    await pullByteExact(mirror.url, repo, sbom);
    const index = await get(`${mirror.url}/v2/${repo}/manifests/${referrersTagOf(image.manifest.digest)}`, { headers: ACCEPT_MANIFESTS });
    expect(index.status).toBe(200);
    expect(sha(index.body)).toBe(tagIndex.manifest.digest);
    const sig = await get(`${mirror.url}/v2/${repo}/manifests/${referrersTagOf(image.manifest.digest)}.sig`, { headers: ACCEPT_MANIFESTS });
    expect(sig.status, sig.body.toString()).toBe(200);
    expect(sha(sig.body)).toBe(cosignSignature.manifest.digest);
    expect(sig.headers['docker-content-digest']).toBe(cosignSignature.manifest.digest);
    await pullByteExact(mirror.url, repo, cosignSignature);
  });

  it('keeps them scoped to their repository: not served under another name', async () => {
    const other = 'team/other';
    await upstream.push(other, 'v1', unsigned);
    const sig = await get(`${mirror.url}/v2/${other}/manifests/${referrersTagOf(image.manifest.digest)}.sig`, { headers: ACCEPT_MANIFESTS });
    expect(sig.status).toBe(404);
    const byDigestElsewhere = await get(`${mirror.url}/v2/${other}/manifests/${signature.manifest.digest}`, { headers: ACCEPT_MANIFESTS });
    expect(byDigestElsewhere.status).toBe(404);
    const payload = await get(`${mirror.url}/v2/${other}/blobs/${signature.layers[0]!.digest}`);
    expect(payload.status).toBe(404);
    const listed = await get(`${mirror.url}/v2/${other}/referrers/${image.manifest.digest}`);
    expect(referrersOf(listed).manifests).toEqual([]);
  });

  it('keeps serving them with the upstream stopped (stale, with a Warning), after a restart, and offline', async () => {
    const storage = join(work, 'stale');
    // TTL 0: every request revalidates, so a stopped upstream is noticed at once.
    let m = await startMirror({ upstreamUrl: upstream.url, storage, ttl: '0s' });
    try {
      const fresh = await get(`${m.url}/v2/${repo}/referrers/${image.manifest.digest}`);
      expect(referrersOf(fresh).manifests).toHaveLength(2);
      const sigTag = `${referrersTagOf(image.manifest.digest)}.sig`;
      expect((await get(`${m.url}/v2/${repo}/manifests/${sigTag}`, { headers: ACCEPT_MANIFESTS })).status).toBe(200);
      await upstream.pause();
      const stale = await get(`${m.url}/v2/${repo}/referrers/${image.manifest.digest}`);
      expect(byDigest(referrersOf(stale).manifests)).toEqual(byDigest([described(signature), described(sbom)]));
      expect(stale.headers.warning).toMatch(/^110 .*stale/i);
      expect((await m.accessFor(stale.headers)).outcome).toBe('stale');

      // A restart with the upstream still down: the answer was kept in the index.
      await m.stop({ keepStorage: true });
      m = await startMirror({ upstreamUrl: upstream.url, storage, ttl: '0s' });
      const restarted = await get(`${m.url}/v2/${repo}/referrers/${image.manifest.digest}`);
      expect(byDigest(referrersOf(restarted).manifests)).toEqual(byDigest([described(signature), described(sbom)]));
      expect(restarted.headers.warning).toMatch(/stale/i);

      await m.stop({ keepStorage: true });
      m = await startMirror({ upstreamUrl: 'http://127.0.0.1:9', storage, offline: true });
      const offline = await get(`${m.url}/v2/${repo}/referrers/${image.manifest.digest}`);
      expect(byDigest(referrersOf(offline).manifests)).toEqual(byDigest([described(signature), described(sbom)]));
      expect(offline.headers.warning).toBeUndefined();
      const filtered = await get(`${m.url}/v2/${repo}/referrers/${image.manifest.digest}?artifactType=${encodeURIComponent(SIG_TYPE)}`);
      expect(referrersOf(filtered).manifests).toEqual([described(signature)]);
      const sig = await get(`${m.url}/v2/${repo}/manifests/${sigTag}`, { headers: ACCEPT_MANIFESTS });
      expect(sha(sig.body)).toBe(cosignSignature.manifest.digest);
      const unknown = await get(`${m.url}/v2/${repo}/referrers/${unsigned.manifest.digest}`);
      expect(referrersOf(unknown).manifests).toEqual([]);
    } finally {
      await upstream.resume();
      await m.stop();
    }
  });
});

describe('referrers from an upstream with the referrers API', () => {
  let fake: FakeUpstream;
  let mirror: TestMirror;
  const clock = new ManualClock(Date.now());
  const repo = 'team/api';

  /** An image and `count` artifacts referring to it, all added to the fake upstream. */
  function seed(label: string, count: number, artifactType = (i: number) => (i % 2 === 0 ? SIG_TYPE : SBOM_TYPE)) {
    const subject = buildImage({ format: 'oci', layers: [smallLayer([{ path: `app/${label}`, content: `${label}\n` }])], label });
    fake.addManifest(repo, label, subject.manifest.bytes, subject.manifest.mediaType);
    for (const b of [subject.config, ...subject.layers]) fake.addBlob(b.bytes!, [repo]);
    const artifacts = Array.from({ length: count }, (_, i) => {
      const a = buildArtifact({ subject: descriptorOf(subject), artifactType: artifactType(i), payload: Buffer.from(`${label} payload ${i}`), payloadMediaType: 'application/octet-stream', annotations: { n: String(i) } });
      fake.addManifest(repo, undefined, a.manifest.bytes, a.manifest.mediaType);
      for (const b of [a.config, ...a.layers]) fake.addBlob(b.bytes!, [repo]);
      return a;
    });
    return { subject, artifacts };
  }

  beforeAll(async () => {
    fake = await startFakeUpstream({ referrersApi: true, referrersPageSize: 10 });
    mirror = await startMirror({ upstreamUrl: fake.url, clock, ttl: '10m' });
  });
  afterAll(async () => {
    await mirror?.stop();
    await fake?.stop();
  });

  it('passes the upstream answer through, filters it, and answers again from the cache until the TTL', async () => {
    const { subject, artifacts } = seed('passed', 3);
    const path = `/v2/${repo}/referrers/${subject.manifest.digest}`;
    const upstreamAnswer = JSON.parse((await get(`${fake.url}${path}`)).body.toString()) as ReferrersIndex;
    fake.reset();
    const r = await get(`${mirror.url}${path}`);
    expect(byDigest(referrersOf(r).manifests)).toEqual(byDigest(upstreamAnswer.manifests));
    expect(byDigest(referrersOf(r).manifests)).toEqual(byDigest(artifacts.map(described)));
    const filtered = await get(`${mirror.url}${path}?artifactType=${encodeURIComponent(SBOM_TYPE)}`);
    expect(referrersOf(filtered).manifests).toEqual([described(artifacts[1]!)]);
    expect(filtered.headers['oci-filters-applied']).toBe('artifactType');
    expect(fake.count({ kind: 'referrers', authorized: true })).toBe(1);
    // Past the TTL it asks again, once.
    clock.advance(10 * 60_000 + 1);
    const again = await get(`${mirror.url}${path}`);
    expect(referrersOf(again).manifests).toHaveLength(3);
    expect((await mirror.accessFor(again.headers)).outcome).toBe('revalidated');
    expect(fake.count({ kind: 'referrers', authorized: true })).toBe(2);
    expect(fake.count({ kind: 'manifest' })).toBe(0);
  });

  it('coalesces concurrent identical requests into one upstream call', async () => {
    const { subject } = seed('coalesced', 2);
    fake.reset();
    fake.fault = (req) => (req.kind === 'referrers' ? { delayMs: 400 } : undefined);
    try {
      const answers = await Promise.all(Array.from({ length: 8 }, () => get(`${mirror.url}/v2/${repo}/referrers/${subject.manifest.digest}`)));
      for (const a of answers) expect(referrersOf(a).manifests).toHaveLength(2);
      expect(fake.count({ kind: 'referrers' })).toBe(1);
      const outcomes = await Promise.all(answers.map((a) => mirror.accessFor(a.headers)));
      expect(outcomes.filter((l) => l.outcome === 'miss')).toHaveLength(1);
      expect(outcomes.filter((l) => l.outcome === 'coalesced')).toHaveLength(7);
    } finally {
      fake.fault = undefined;
    }
  });

  it("follows the upstream's pages, and pages its own answer with a Link back at the mirror (ns kept)", async () => {
    const { subject, artifacts } = seed('paged', 25);
    fake.reset();
    const path = `/v2/${repo}/referrers/${subject.manifest.digest}`;
    const whole = await get(`${mirror.url}${path}`);
    expect(referrersOf(whole).manifests).toHaveLength(25);
    expect(whole.headers.link).toBeUndefined();
    expect(fake.count({ kind: 'referrers', authorized: true })).toBe(3);

    const seen: string[] = [];
    let next: string | undefined = `${path}?n=10&ns=docker.io&artifactType=${encodeURIComponent(SIG_TYPE)}`;
    let pages = 0;
    while (next) {
      const r = await get(`${mirror.url}${next}`);
      const page = referrersOf(r).manifests;
      expect(page.length).toBeLessThanOrEqual(10);
      expect(r.headers['oci-filters-applied']).toBe('artifactType');
      seen.push(...page.map((d) => d.digest));
      const link = r.headers.link as string | undefined;
      next = link ? /^<([^>]+)>; rel="next"$/.exec(link)![1] : undefined;
      if (next) {
        expect(next).toMatch(new RegExp(`^${path}\\?`));
        expect(new URL(next, mirror.url).searchParams.get('ns')).toBe('docker.io');
      }
      pages++;
    }
    const signatures = artifacts.filter((a) => a.artifactType === SIG_TYPE).map((a) => a.manifest.digest);
    expect(pages).toBe(2);
    expect([...seen].sort()).toEqual([...signatures].sort());
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('pages a long list at 1000 descriptors without n', async () => {
    // An upstream that sends all 1005 in one answer (the shared one pages by 10).
    const whole = await startFakeUpstream({ referrersApi: true });
    const m = await startMirror({ upstreamUrl: whole.url });
    try {
      const subject = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'app/long', content: 'long\n' }])], label: 'long' });
      whole.addManifest(repo, 'long', subject.manifest.bytes, subject.manifest.mediaType);
      for (let i = 0; i < 1005; i++) {
        const a = buildArtifact({ subject: descriptorOf(subject), artifactType: SIG_TYPE, payload: Buffer.from(`long ${i}`), payloadMediaType: 'application/octet-stream' });
        whole.addManifest(repo, undefined, a.manifest.bytes, a.manifest.mediaType);
      }
      const path = `/v2/${repo}/referrers/${subject.manifest.digest}`;
      const first = await get(`${m.url}${path}`);
      expect(referrersOf(first).manifests).toHaveLength(1000);
      const link = /^<([^>]+)>; rel="next"$/.exec(String(first.headers.link))![1]!;
      const rest = await get(`${m.url}${link}`);
      expect(referrersOf(rest).manifests).toHaveLength(5);
      expect(rest.headers.link).toBeUndefined();
      const all = [...referrersOf(first).manifests, ...referrersOf(rest).manifests].map((d) => d.digest);
      expect(new Set(all).size).toBe(1005);
      expect(whole.count({ kind: 'referrers' })).toBe(1);
    } finally {
      await m.stop();
      await whole.stop();
    }
  });

  it('serves the cached answer, stale with a Warning, when the upstream fails', async () => {
    const { subject } = seed('failing', 2);
    const path = `/v2/${repo}/referrers/${subject.manifest.digest}`;
    expect(referrersOf(await get(`${mirror.url}${path}`)).manifests).toHaveLength(2);
    clock.advance(10 * 60_000 + 1);
    fake.fault = (req) => (req.kind === 'referrers' ? { status: 503 } : undefined);
    try {
      const r = await get(`${mirror.url}${path}`);
      expect(referrersOf(r).manifests).toHaveLength(2);
      expect(r.headers.warning).toMatch(/^110 .*stale/i);
      // Nothing cached for another subject: the upstream's trouble is the answer.
      const { subject: cold } = seed('cold', 1);
      const failed = await get(`${mirror.url}/v2/${repo}/referrers/${cold.manifest.digest}`);
      expect(failed.status).toBeGreaterThanOrEqual(500);
    } finally {
      fake.fault = undefined;
    }
  });

  it("spends the client's budget of misses like a manifest miss; cached answers stay free", async () => {
    const limited = await startMirror({ upstreamUrl: fake.url, document: { clientMisses: { perMinute: 2 } } });
    try {
      const subjects = [seed('budget-a', 1), seed('budget-b', 1), seed('budget-c', 1)].map((s) => s.subject.manifest.digest);
      expect((await get(`${limited.url}/v2/${repo}/referrers/${subjects[0]}`)).status).toBe(200);
      expect((await get(`${limited.url}/v2/${repo}/referrers/${subjects[1]}`)).status).toBe(200);
      const refused = await get(`${limited.url}/v2/${repo}/referrers/${subjects[2]}`);
      expect(refused.status).toBe(429);
      expect(errorCode(refused)).toBe('TOOMANYREQUESTS');
      expect((await get(`${limited.url}/v2/${repo}/referrers/${subjects[0]}`)).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });
});

describe('referrers the mirror holds itself', () => {
  let fake: FakeUpstream;
  let mirror: TestMirror;
  const repo = 'team/local';

  beforeAll(async () => {
    // Neither the API nor the tag: only what the mirror stored can answer.
    fake = await startFakeUpstream();
    mirror = await startMirror({ upstreamUrl: fake.url });
  });
  afterAll(async () => {
    await mirror?.stop();
    await fake?.stop();
  });

  it('lists a manifest with a subject once it was pulled through the mirror, in its repository only', async () => {
    const subject = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'app/local', content: 'local\n' }])], label: 'local' });
    const attestation = buildArtifact({ subject: descriptorOf(subject), artifactType: 'application/vnd.in-toto+json', payload: Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}'), payloadMediaType: 'application/vnd.in-toto+json' });
    fake.addManifest(repo, 'v1', subject.manifest.bytes, subject.manifest.mediaType);
    fake.addManifest(repo, undefined, attestation.manifest.bytes, attestation.manifest.mediaType);
    const path = `/v2/${repo}/referrers/${subject.manifest.digest}`;
    expect(referrersOf(await get(`${mirror.url}${path}`)).manifests).toEqual([]);

    const pulled = await get(`${mirror.url}/v2/${repo}/manifests/${attestation.manifest.digest}`, { headers: ACCEPT_MANIFESTS });
    expect(sha(pulled.body)).toBe(attestation.manifest.digest);
    expect(referrersOf(await get(`${mirror.url}${path}`)).manifests).toEqual([described(attestation)]);
    expect(referrersOf(await get(`${mirror.url}/v2/team/elsewhere/referrers/${subject.manifest.digest}`)).manifests).toEqual([]);
  });

  it('asks for client authentication like every other endpoint when it is on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'referrers-auth-'));
    const htpasswd = join(dir, 'htpasswd');
    writeFileSync(htpasswd, `ops:${bcrypt.hashSync('right-pass', 8).replace(/^\$2b\$/, '$2y$')}\n`);
    const guarded = await startMirror({ upstreamUrl: fake.url, document: { auth: { htpasswd } } });
    try {
      const path = `/v2/${repo}/referrers/${sha(Buffer.from('any subject'))}`;
      const anonymous = await get(`${guarded.url}${path}`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers['www-authenticate']).toMatch(/^Basic /);
      const wrong = await get(`${guarded.url}${path}`, { headers: { authorization: `Basic ${Buffer.from('ops:wrong').toString('base64')}` } });
      expect(wrong.status).toBe(401);
      const allowed = await get(`${guarded.url}${path}`, { headers: { authorization: `Basic ${Buffer.from('ops:right-pass').toString('base64')}` } });
      expect(referrersOf(allowed).manifests).toEqual([]);
    } finally {
      await guarded.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
