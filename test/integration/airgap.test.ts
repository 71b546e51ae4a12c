// The air-gap story (issue 6) end to end: mirror A (connected) prewarms two multi-arch
// images for one platform, exports them; mirror B (no upstream reachable, offline) imports
// the bundle and skopeo pulls both images from it by tag and by digest.
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get } from '../fixtures/http-client.js';
import { startMirror } from '../fixtures/mirror.js';
import { runCli } from '../fixtures/mirror-process.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeo, skopeoCopy } from '../fixtures/skopeo-client.js';
import { createHash } from 'node:crypto';

let upstream: RealUpstream;
let content: SeededContent;
const work = mkdtempSync(join(tmpdir(), 'airgap-'));
const storageA = join(work, 'a');
const storageB = join(work, 'b');
const bundle = join(work, 'bundle.tar');
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function stored(storage: string, digest: string): boolean {
  const hex = digest.slice(7);
  return existsSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex));
}

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('prewarm, export, import, pull offline', () => {
  it('mirror A prewarms two multi-arch images for linux/amd64 only', async () => {
    const r = await runCli(['prewarm', 'alpine:3.19', 'docker.io/library/debian:bookworm', '--platform', 'linux/amd64', '--pin', '--storage', storageA, '--upstream', upstream.url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/docker\.io\/library\/alpine:3\.19\s+ok/);
    expect(r.stdout).toMatch(/docker\.io\/library\/debian:bookworm\s+ok/);
    for (const s of [content.alpine, content.debian]) {
      const [amd64, arm64] = s.content.images;
      for (const b of [amd64!.config, ...amd64!.layers]) expect(stored(storageA, b.digest)).toBe(true);
      for (const b of arm64!.layers) expect(stored(storageA, b.digest)).toBe(false);
    }
    // Everything prewarm fetched is committed and indexed before it exits: verify finds nothing to adopt.
    const verify = await runCli(['verify', '--storage', storageA, '--json']);
    expect(verify.code, verify.stdout).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ corrupt: [], missing: [], adopted: [] });
    const again = await runCli(['prewarm', 'alpine:3.19', 'nosuch/image:1', '--platform', 'linux/amd64', '--storage', storageA, '--upstream', upstream.url]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/nosuch\/image:1: /);
  });

  it('exports an OCI image layout archive that skopeo can read', async () => {
    const r = await runCli(['export', 'alpine:3.19', 'debian:bookworm', '--platform', 'linux/amd64', '-o', bundle, '--storage', storageA, '--upstream', upstream.url]);
    expect(r.code, r.stderr).toBe(0);
    const inspected = await skopeo(['inspect', '--raw', `oci-archive:${bundle}:docker.io/library/alpine:3.19`]);
    expect(sha(Buffer.from(inspected.stdout))).toBe(content.alpine.digest);
  });

  it('mirror B imports it offline and skopeo pulls both images by tag and by digest; the other platform is a clear error', async () => {
    const imported = await runCli(['import', bundle, '--storage', storageB, '--offline', '--upstream', 'http://127.0.0.1:9']);
    expect(imported.code, imported.stderr).toBe(0);
    const b = await startMirror({ upstreamUrl: 'http://127.0.0.1:9', storage: storageB, offline: true });
    try {
      for (const s of [content.alpine, content.debian]) {
        const amd64 = s.content.images[0]!;
        for (const ref of [`${s.repository}:${s.tag}`, `${s.repository}@${s.digest}`]) {
          const dest = join(work, `pull-${ref.replace(/[/:@]/g, '_')}`);
          await skopeoCopy(`docker://${b.host}/${ref}`, `dir:${dest}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
          expect(sha(readFileSync(join(dest, 'manifest.json')))).toBe(amd64.manifest.digest);
        }
      }
      const arm64 = content.alpine.content.images[1]!;
      const r = await get(`${b.url}/v2/library/alpine/manifests/${arm64.manifest.digest}`);
      expect(r.status).toBe(404);
      expect(JSON.parse(r.body.toString()).errors[0].message).toMatch(/not cached and the mirror is offline/);
      await expect(skopeoCopy(`docker://${b.host}/library/alpine:3.19`, `dir:${join(work, 'arm')}`, ['--override-arch', 'arm64', '--override-os', 'linux'])).rejects.toThrow(/offline|manifest unknown/i);
    } finally {
      await b.stop({ keepStorage: true });
    }
  });

  it('refuses a truncated bundle and a tampered one, leaving nothing behind', async () => {
    const whole = readFileSync(bundle);
    const truncated = join(work, 'truncated.tar');
    writeFileSync(truncated, whole.subarray(0, Math.floor(whole.length * 0.6)));

    // Tampered: same archive, one byte of one layer changed.
    const layer = content.alpine.content.images[0]!.layers[0]!.digest.slice(7);
    const entries: { header: tar.Header; body: Buffer }[] = [];
    const extract = tar.extract();
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (header, stream, next) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: unknown) => chunks.push(c as Buffer));
        stream.on('end', () => {
          const body = Buffer.concat(chunks);
          if (header.name.endsWith(layer)) body[body.length - 1] = body[body.length - 1]! ^ 0xff;
          entries.push({ header, body });
          next();
        });
      });
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
    extract.end(whole);
    await done;
    const pack = tar.pack();
    for (const e of entries) pack.entry({ ...e.header, size: e.body.length }, e.body);
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
    const tampered = join(work, 'tampered.tar');
    writeFileSync(tampered, Buffer.concat(chunks));

    for (const [file, why] of [[truncated, /truncated/], [tampered, /does not match its digest/]] as const) {
      const storage = join(work, `refused-${statSync(file).size}`);
      const r = await runCli(['import', file, '--storage', storage, '--offline']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(why);
      expect(r.stderr).toMatch(/nothing was added/);
      expect(readdirSync(join(storage, 'tmp'))).toEqual([]);
      expect(existsSync(join(storage, 'blobs', 'sha256')) ? readdirSync(join(storage, 'blobs', 'sha256')) : []).toEqual([]);
    }
  });
  it('refuses a bundle that names a big blob as a manifest without reading it into memory', async () => {
    const big = Buffer.alloc(5 * 1024 * 1024, 7);
    const digest = sha(big);
    const pack = tar.pack();
    pack.entry({ name: 'oci-layout' }, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const index = { schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: big.length, annotations: { 'org.opencontainers.image.ref.name': 'docker.io/library/big:latest' } }] };
    pack.entry({ name: 'index.json' }, JSON.stringify(index));
    pack.entry({ name: `blobs/sha256/${digest.slice(7)}` }, big);
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
    const file = join(work, 'big-manifest.tar');
    writeFileSync(file, Buffer.concat(chunks));
    const storage = join(work, 'refused-big-manifest');
    const r = await runCli(['import', file, '--storage', storage, '--offline']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/referenced as a manifest but is 5242880 bytes/);
    expect(r.stderr).toMatch(/nothing was added/);
  });
});
