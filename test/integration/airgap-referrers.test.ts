// Signed images across the air gap (issue 14, item 3): mirror A prewarms a multi-arch image
// with its supply chain (a signature of the index, an SBOM of the amd64 image, a signature of
// that SBOM, cosign's legacy .sig tag) for linux/amd64, exports it; mirror B imports the bundle
// on fresh storage and, offline, answers the referrers API and the tag schema byte-exact. A
// bundle missing a referrer's blob is refused. Also: an upstream with the referrers API and
// no sha256-<hex> tags still yields a bundle whose tag schema answers on the other side.
import { readFileSync, mkdtempSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportBundle, importBundle } from '../../src/airgap/bundle.js';
import { buildConfig } from '../../src/config.js';
import { createMirror } from '../../src/mirror.js';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror } from '../fixtures/mirror.js';
import { runCli } from '../fixtures/mirror-process.js';
import { buildArtifact, buildCosignSignature, buildImage, buildIndex, buildReferrersIndex, descriptorOf, MT, referrersTagOf, smallLayer } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { ACCEPT_MANIFESTS, byDigest, described, pullByteExact, referrersOf, SBOM_TYPE, sha, SIG_TYPE } from '../fixtures/referrers-client.js';

const work = mkdtempSync(join(tmpdir(), 'airgap-referrers-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Rewrite a bundle (a tar) without the entries `drop` picks. */
async function bundleWithout(source: string, target: string, drop: (name: string) => boolean): Promise<void> {
  const extract = tar.extract();
  const pack = tar.pack();
  const kept = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        if (!drop(header.name)) pack.entry({ ...header }, Buffer.concat(chunks));
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  extract.end(readFileSync(source));
  await kept;
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  writeFileSync(target, Buffer.concat(chunks));
}

/** The reference names in a bundle's index.json. */
async function referenceNames(bundle: string): Promise<string[]> {
  const extract = tar.extract();
  let index: Buffer | undefined;
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        if (header.name === 'index.json') index = Buffer.concat(chunks);
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  extract.end(readFileSync(bundle));
  await done;
  const parsed = JSON.parse(index!.toString()) as { manifests: { annotations: Record<string, string> }[] };
  return parsed.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name']!).sort();
}

describe('a signed multi-arch image from an upstream without the referrers API, through prewarm, export and import', () => {
  let upstream: RealUpstream;
  const repo = 'team/signed-app';
  const amd64 = buildImage({ format: 'oci', platform: { os: 'linux', architecture: 'amd64' }, layers: [smallLayer([{ path: 'app/bin', content: 'amd64\n' }])] });
  const arm64 = buildImage({ format: 'oci', platform: { os: 'linux', architecture: 'arm64' }, layers: [smallLayer([{ path: 'app/bin', content: 'arm64\n' }])] });
  const image = buildIndex([amd64, arm64], 'oci');
  const signature = buildArtifact({ subject: descriptorOf(image), artifactType: SIG_TYPE, payload: Buffer.from('signature of the index'), payloadMediaType: 'application/vnd.dev.cosign.simplesigning.v1+json' });
  const sbom = buildArtifact({ subject: descriptorOf(amd64), artifactType: SBOM_TYPE, payload: Buffer.from('{"spdxVersion":"SPDX-2.3","name":"amd64"}'), payloadMediaType: SBOM_TYPE });
  const sbomSignature = buildArtifact({ subject: descriptorOf(sbom), artifactType: SIG_TYPE, payload: Buffer.from('signature of the sbom'), payloadMediaType: 'application/vnd.dev.cosign.simplesigning.v1+json' });
  const arm64Sbom = buildArtifact({ subject: descriptorOf(arm64), artifactType: SBOM_TYPE, payload: Buffer.from('{"spdxVersion":"SPDX-2.3","name":"arm64"}'), payloadMediaType: SBOM_TYPE });
  const cosignSignature = buildCosignSignature(image.manifest.digest);
  const tagIndexes = {
    image: buildReferrersIndex([signature]),
    amd64: buildReferrersIndex([sbom]),
    sbom: buildReferrersIndex([sbomSignature]),
    arm64: buildReferrersIndex([arm64Sbom]),
  };
  const storageA = join(work, 'a');
  const storageB = join(work, 'b');
  const bundle = join(work, 'signed.tar');
  const stored = (storage: string, digest: string) => existsSync(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7)));

  beforeAll(async () => {
    upstream = await startRealUpstream();
    await upstream.push(repo, 'v1', image);
    for (const a of [signature, sbom, sbomSignature, arm64Sbom]) await upstream.push(repo, a.manifest.digest, a);
    await upstream.push(repo, referrersTagOf(image.manifest.digest), tagIndexes.image);
    await upstream.push(repo, referrersTagOf(amd64.manifest.digest), tagIndexes.amd64);
    await upstream.push(repo, referrersTagOf(sbom.manifest.digest), tagIndexes.sbom);
    await upstream.push(repo, referrersTagOf(arm64.manifest.digest), tagIndexes.arm64);
    await upstream.push(repo, `${referrersTagOf(image.manifest.digest)}.sig`, cosignSignature);
  });
  afterAll(async () => {
    await upstream?.stop();
  });

  it('prewarm fetches the chosen platform with every referrer, recursively, and the cosign tag (referrers are the default)', async () => {
    const r = await runCli(['prewarm', `${repo}:v1`, '--platform', 'linux/amd64', '--pin', '--storage', storageA, '--upstream', upstream.url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/docker\.io\/team\/signed-app:v1\s+ok\s+\d+\s+4\s/);
    for (const content of [amd64, signature, sbom, sbomSignature, cosignSignature]) {
      for (const blob of [content.config, ...content.layers]) expect(stored(storageA, blob.digest), blob.digest).toBe(true);
    }
    for (const blob of arm64Sbom.layers) expect(stored(storageA, blob.digest)).toBe(false);
    for (const blob of arm64.layers) expect(stored(storageA, blob.digest)).toBe(false);
  });

  it('export carries the sha256-<hex> indexes and the .sig tag as references; --no-referrers leaves them out', async () => {
    const r = await runCli(['export', `${repo}:v1`, '--platform', 'linux/amd64', '--with-referrers', '-o', bundle, '--storage', storageA, '--upstream', upstream.url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 images, 4 referrers/);
    const name = (tag: string) => `docker.io/${repo}:${tag}`;
    expect(await referenceNames(bundle)).toEqual(
      [name('v1'), name(referrersTagOf(image.manifest.digest)), name(referrersTagOf(amd64.manifest.digest)), name(referrersTagOf(sbom.manifest.digest)), name(`${referrersTagOf(image.manifest.digest)}.sig`)].sort(),
    );
    const bare = join(work, 'bare.tar');
    const without = await runCli(['export', `${repo}:v1`, '--platform', 'linux/amd64', '--no-referrers', '-o', bare, '--storage', storageA, '--upstream', upstream.url]);
    expect(without.code, without.stderr).toBe(0);
    expect(await referenceNames(bare)).toEqual([name('v1')]);
    const both = await runCli(['export', `${repo}:v1`, '--with-referrers', '--no-referrers', '-o', bare, '--storage', storageA, '--upstream', upstream.url]);
    expect(both.code).toBe(2);
  });

  it('import on fresh storage: offline, the referrers API and the tag schema answer, byte-exact', async () => {
    const imported = await runCli(['import', bundle, '--storage', storageB, '--offline', '--upstream', 'http://127.0.0.1:9']);
    expect(imported.code, imported.stderr).toBe(0);
    const b = await startMirror({ upstreamUrl: 'http://127.0.0.1:9', storage: storageB, offline: true });
    try {
      const list = async (subject: string, query = '') => referrersOf(await get(`${b.url}/v2/${repo}/referrers/${subject}${query}`)).manifests;
      expect(await list(image.manifest.digest)).toEqual([described(signature)]);
      expect(await list(amd64.manifest.digest)).toEqual([described(sbom)]);
      expect(await list(sbom.manifest.digest)).toEqual([described(sbomSignature)]);
      expect(await list(amd64.manifest.digest, `?artifactType=${encodeURIComponent(SIG_TYPE)}`)).toEqual([]);
      expect(await list(arm64.manifest.digest)).toEqual([]);

      for (const [subject, index] of [[image, tagIndexes.image], [amd64, tagIndexes.amd64], [sbom, tagIndexes.sbom]] as const) {
        const tagged = await get(`${b.url}/v2/${repo}/manifests/${referrersTagOf(subject.manifest.digest)}`, { headers: ACCEPT_MANIFESTS });
        expect(tagged.status, tagged.body.toString()).toBe(200);
        expect(sha(tagged.body)).toBe(index.manifest.digest);
      }
      const sig = await get(`${b.url}/v2/${repo}/manifests/${referrersTagOf(image.manifest.digest)}.sig`, { headers: ACCEPT_MANIFESTS });
      expect(sig.status, sig.body.toString()).toBe(200);
      expect(sha(sig.body)).toBe(cosignSignature.manifest.digest);
      for (const content of [signature, sbom, sbomSignature, cosignSignature, amd64]) await pullByteExact(b.url, repo, content);
    } finally {
      await b.stop({ keepStorage: true });
    }
  });

  it("refuses a bundle that lacks a referrer's blob, leaving nothing behind", async () => {
    const broken = join(work, 'broken.tar');
    const payload = sbomSignature.layers[0]!.digest.slice(7);
    await bundleWithout(bundle, broken, (entry) => entry.endsWith(payload));
    const storage = join(work, 'refused');
    const r = await runCli(['import', broken, '--storage', storage, '--offline']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`${payload}.*missing from the bundle`));
    expect(r.stderr).toMatch(/nothing was added/);
    expect(readdirSync(join(storage, 'tmp'))).toEqual([]);
    expect(existsSync(join(storage, 'blobs', 'sha256')) ? readdirSync(join(storage, 'blobs', 'sha256')) : []).toEqual([]);

    // A referrer manifest missing under its sha256-<hex> index is refused too (not taken for an unexported platform).
    const noManifest = join(work, 'no-manifest.tar');
    await bundleWithout(bundle, noManifest, (entry) => entry.endsWith(sbomSignature.manifest.digest.slice(7)));
    const again = await runCli(['import', noManifest, '--storage', join(work, 'refused-2'), '--offline']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(new RegExp(`${sbomSignature.manifest.digest}.*missing from the bundle`));
  });
});

describe('an upstream with the referrers API and no sha256-<hex> tags', () => {
  let fake: FakeUpstream;
  const repo = 'team/api-signed';
  const image = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'app/api', content: 'api\n' }])] });
  const signature = buildArtifact({ subject: descriptorOf(image), artifactType: SIG_TYPE, payload: Buffer.from('signed through the API'), payloadMediaType: 'application/octet-stream' });

  beforeAll(async () => {
    fake = await startFakeUpstream({ referrersApi: true });
    for (const content of [image, signature]) {
      fake.addManifest(repo, content === image ? 'v1' : undefined, content.manifest.bytes, content.manifest.mediaType);
      for (const b of [content.config, ...content.layers]) fake.addBlob(b.bytes!, [repo]);
    }
  });
  afterAll(async () => {
    await fake?.stop();
  });

  it('the bundle carries a sha256-<hex> index built from the API answer, and both answer offline', async () => {
    const logger = pino({ level: 'silent' });
    const storage = join(work, 'api-a');
    const output = join(work, 'api.tar');
    const a = await createMirror({ config: buildConfig({ storage: { path: storage } }, { overrides: { upstream: fake.url } }), logger });
    try {
      const r = await exportBundle(a, [`${repo}:v1`], { platforms: undefined, output, referrers: true });
      expect(r.referrers).toBe(1);
      expect(r.references).toContain(`docker.io/${repo}:${referrersTagOf(image.manifest.digest)}`);
    } finally {
      await a.close();
    }
    expect(fake.count({ kind: 'referrers' })).toBeGreaterThan(0);

    const storageB = join(work, 'api-b');
    const b = await startMirror({ upstreamUrl: 'http://127.0.0.1:9', storage: storageB, offline: true });
    try {
      await importBundle(b.mirror, output);
      const listed = referrersOf(await get(`${b.url}/v2/${repo}/referrers/${image.manifest.digest}`)).manifests;
      expect(byDigest(listed)).toEqual([described(signature)]);
      const tagged = await get(`${b.url}/v2/${repo}/manifests/${referrersTagOf(image.manifest.digest)}`, { headers: ACCEPT_MANIFESTS });
      expect(tagged.status, tagged.body.toString()).toBe(200);
      expect(tagged.headers['content-type']).toBe(MT.ociIndex);
      expect(JSON.parse(tagged.body.toString())).toEqual({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: [described(signature)] });
      expect(sha(tagged.body)).toBe(tagged.headers['docker-content-digest']);
      await pullByteExact(b.url, repo, signature);
    } finally {
      await b.stop({ keepStorage: true });
    }
  });
});
