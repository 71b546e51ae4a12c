// Carry cache content across an air gap as an OCI image layout archive
// (https://github.com/opencontainers/image-spec/blob/main/image-layout.md):
//   oci-layout, index.json (one entry per reference, annotated with the full reference),
//   blobs/sha256/<hex> for every manifest, config and layer of the chosen platforms.
// With referrers, each image's supply chain travels as more references: its `sha256-<hex>`
// indexes (every referrer under them is required, blobs and all) and cosign's `.sig`/`.att`/
// `.sbom` tags. Import verifies every digest before anything becomes visible; a bad or
// incomplete bundle leaves nothing behind.

import { createReadStream, createWriteStream } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import type { Mirror } from '../mirror.js';
import { DigestVerifier } from '../oci/digest.js';
import { childDescriptors, childDigests, MAX_MANIFEST_BYTES, parseManifest, type Platform } from '../oci/manifest.js';
import { MediaType } from '../oci/media-types.js';
import { parseDigest } from '../oci/reference.js';
import { isReferrersTag, referrerFactsOf } from '../oci/referrers.js';
import { prewarmOne } from './prewarm.js';
import { resolveImage, routeReference } from './resolve.js';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export class BundleError extends Error {
  override name = 'BundleError';
}

interface Entry {
  digest: string;
  size: number;
  /** A manifest's bytes, when at hand (a built `sha256-<hex>` index is in no store). */
  bytes?: Buffer;
}

export async function exportBundle(
  mirror: Mirror,
  references: string[],
  options: { platforms: Platform[] | undefined; output: string; referrers: boolean },
): Promise<{ references: string[]; blobs: number; bytes: number; referrers: number; dangling: string[] }> {
  const entries = new Map<string, Entry>();
  const manifests: { mediaType: string; digest: string; size: number; annotations: Record<string, string> }[] = [];
  const named = new Set<string>();
  let referrers = 0;
  const dangling: string[] = [];
  for (const input of references) {
    // Fetch whatever is not cached yet, through the core (fails here if the upstream is unreachable).
    const warmed = await prewarmOne(mirror, input, { platforms: options.platforms, pin: false, referrers: options.referrers });
    if (!warmed.ok) throw new BundleError(`cannot export ${input}: ${warmed.error}`);
    const resolved = await resolveImage(mirror, input, options.platforms);
    entries.set(resolved.top.digest, { digest: resolved.top.digest, size: resolved.top.bytes.length });
    for (const image of resolved.images) {
      entries.set(image.digest, { digest: image.digest, size: image.bytes.length });
      for (const b of image.blobs) entries.set(b.digest, { digest: b.digest, size: b.size });
    }
    const reference = (name: string, m: { mediaType: string; digest: string; size: number }) => {
      if (named.has(name)) return;
      named.add(name);
      manifests.push({ mediaType: m.mediaType, digest: m.digest, size: m.size, annotations: { [REF_NAME_ANNOTATION]: name } });
    };
    reference(resolved.canonical, { mediaType: resolved.top.mediaType, digest: resolved.top.digest, size: resolved.top.bytes.length });
    const chain = warmed.chain;
    if (chain) {
      for (const m of chain.manifests.values()) entries.set(m.digest, { digest: m.digest, size: m.bytes.length, bytes: m.bytes });
      for (const [digest, size] of chain.blobs) entries.set(digest, { digest, size });
      const { upstream, repository } = resolved.route;
      for (const t of chain.tags) reference(`${upstream.name}/${repository}:${t.tag}`, { mediaType: t.mediaType, digest: t.digest, size: t.bytes.length });
      referrers += warmed.referrers;
      dangling.push(...warmed.dangling);
    }
  }
  const pack = tar.pack();
  const temp = `${options.output}.partial-${process.pid}`;
  const written = pipeline(pack, createWriteStream(temp));
  const add = (name: string, body: Buffer) =>
    new Promise<void>((resolve, reject) => pack.entry({ name, size: body.length, mtime: new Date(0) }, body, (err) => (err ? reject(err) : resolve())));
  let bytes = 0;
  try {
    await add('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    for (const entry of entries.values()) {
      const digest = parseDigest(entry.digest);
      if (entry.bytes) {
        await add(`blobs/${digest.algorithm}/${digest.hex}`, entry.bytes);
        bytes += entry.bytes.length;
        continue;
      }
      const stat = await mirror.store.stat(digest);
      if (!stat) throw new BundleError(`${entry.digest} is not in the cache`);
      await new Promise<void>((resolve, reject) => {
        const sink = pack.entry({ name: `blobs/${digest.algorithm}/${digest.hex}`, size: stat.size, mtime: new Date(0) }, (err) => (err ? reject(err) : resolve()));
        const source = mirror.store.createReadStream(digest);
        source.on('error', reject);
        source.pipe(sink);
      });
      bytes += stat.size;
    }
    await add('index.json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }, null, 2)));
    pack.finalize();
    await written;
    await rename(temp, options.output);
  } catch (err) {
    pack.destroy();
    await written.catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  return { references: manifests.map((m) => m.annotations[REF_NAME_ANNOTATION]!), blobs: entries.size, bytes, referrers, dangling };
}

interface Staged {
  digest: string;
  size: number;
  path: string;
}

export interface ImportReport {
  references: string[];
  blobs: number;
  manifests: number;
  bytes: number;
  alreadyCached: number;
}

/** Read an OCI layout archive, verify everything, then make it visible all at once. */
export async function importBundle(mirror: Mirror, path: string): Promise<ImportReport> {
  const staged = new Map<string, Staged>();
  let layout: Buffer | undefined;
  let indexJson: Buffer | undefined;
  const cleanup = async () => {
    await Promise.all([...staged.values()].map((s) => unlink(s.path).catch(() => undefined)));
  };
  try {
    const extract = tar.extract();
    const reading = pipeline(createReadStream(path), extract);
    // Stopping early (a bad digest) closes the stream: that rejection is expected, not an error to report.
    reading.catch(() => undefined);
    for await (const entry of extract) {
      const name = entry.header.name.replace(/^\.\//, '');
      const blob = /^blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(name);
      if (entry.header.type !== 'file') {
        entry.resume();
        continue;
      }
      if (name === 'oci-layout' || name === 'index.json') {
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of entry as AsyncIterable<Buffer>) {
          size += c.length;
          if (size > 16 * 1024 * 1024) throw new BundleError(`${name} is too large`);
          chunks.push(c);
        }
        if (name === 'oci-layout') layout = Buffer.concat(chunks);
        else indexJson = Buffer.concat(chunks);
        continue;
      }
      if (!blob) {
        entry.resume();
        continue;
      }
      const digest = parseDigest(`${blob[1]}:${blob[2]}`);
      const temp = await mirror.scratch.createTemp();
      staged.set(digest.value, { digest: digest.value, size: 0, path: temp.path });
      const verifier = new DigestVerifier(digest);
      let offset = 0;
      try {
        for await (const c of entry as AsyncIterable<Buffer>) {
          verifier.update(c);
          let done = 0;
          while (done < c.length) done += (await temp.handle.write(c, done, c.length - done, offset + done)).bytesWritten;
          offset += c.length;
        }
        await temp.handle.datasync();
      } finally {
        await temp.handle.close();
      }
      const computed = verifier.finish();
      if (computed !== digest.value) throw new BundleError(`${name} does not match its digest (the bundle was altered or damaged): computed ${computed}`);
      staged.get(digest.value)!.size = offset;
    }
    await reading;
  } catch (err) {
    await cleanup();
    if (err instanceof BundleError) throw err;
    throw new BundleError(`the bundle is truncated or unreadable: ${(err as Error).message}`);
  }

  try {
    if (!layout || !/"imageLayoutVersion"\s*:\s*"1\./.test(layout.toString())) throw new BundleError('not an OCI image layout: oci-layout is missing or of an unknown version');
    if (!indexJson) throw new BundleError('index.json is missing: the bundle is truncated, or not an OCI image layout');
    let top: { manifests?: { mediaType?: string; digest?: string; annotations?: Record<string, string> }[] };
    try {
      top = JSON.parse(indexJson.toString()) as typeof top;
    } catch {
      throw new BundleError('index.json is not JSON');
    }
    const refs = (top.manifests ?? []).filter((m) => m.digest && m.annotations?.[REF_NAME_ANNOTATION]);
    if (refs.length === 0) throw new BundleError(`index.json names no references (${REF_NAME_ANNOTATION} annotations)`);

    // Walk every reference: manifests present, and each present image's config and layers present.
    const manifestTypes = new Map<string, string>();
    const closures = new Map<string, Set<string>>();
    const readStaged = async (digest: string): Promise<Buffer> => {
      const s = staged.get(digest);
      // A manifest is small: a bundle naming a big blob as one must not make the import read it whole.
      if (s && s.size > MAX_MANIFEST_BYTES) throw new BundleError(`${digest} is referenced as a manifest but is ${s.size} bytes (a manifest is at most ${MAX_MANIFEST_BYTES})`);
      if (s) {
        const chunks: Buffer[] = [];
        for await (const c of createReadStream(s.path) as AsyncIterable<Buffer>) chunks.push(c);
        return Buffer.concat(chunks);
      }
      const cached = await mirror.store.read(parseDigest(digest), MAX_MANIFEST_BYTES).catch((err: unknown) => {
        throw new BundleError(`${digest} is referenced as a manifest but the cached content is not one: ${(err as Error).message}`);
      });
      if (!cached) throw new BundleError(`${digest} is referenced but missing from the bundle`);
      return cached;
    };
    for (const ref of refs) {
      const closure = new Set<string>();
      // Under a referrers tag (sha256-<hex>) every manifest is a referrer that must be there;
      // under an image's tag, an index's children may be platforms that were not exported.
      const { tag } = routeReference(mirror, ref.annotations![REF_NAME_ANNOTATION]!);
      const childrenRequired = tag !== undefined && isReferrersTag(tag);
      const walk = async (digest: string, mediaType: string | undefined, optional: boolean): Promise<void> => {
        if (!staged.has(digest) && !(await mirror.store.stat(parseDigest(digest)))) {
          if (optional) return; // a platform that was not exported
          throw new BundleError(`${digest} is referenced but missing from the bundle`);
        }
        const bytes = await readStaged(digest);
        const parsed = parseManifest(bytes, mediaType);
        manifestTypes.set(digest, parsed.mediaType);
        closure.add(digest);
        if (parsed.isIndex) {
          for (const child of parsed.manifests) await walk(child.digest, child.mediaType, !childrenRequired);
        } else {
          for (const d of childDigests(parsed)) {
            if (!staged.has(d) && !(await mirror.store.stat(parseDigest(d)))) throw new BundleError(`${d} (of ${digest}) is missing from the bundle`);
            closure.add(d);
          }
        }
      };
      await walk(ref.digest!, ref.mediaType, false);
      closures.set(ref.annotations![REF_NAME_ANNOTATION]!, closure);
    }

    // Everything checks out: make it visible.
    const now = mirror.clock.now();
    let alreadyCached = 0;
    let bytes = 0;
    for (const s of staged.values()) {
      const digest = parseDigest(s.digest);
      if (await mirror.store.stat(digest)) {
        await unlink(s.path).catch(() => undefined);
        alreadyCached++;
      } else {
        await mirror.store.commit(s.path, digest);
      }
      bytes += s.size;
    }
    staged.clear();
    const references: string[] = [];
    for (const ref of refs) {
      const name = ref.annotations![REF_NAME_ANNOTATION]!;
      const { route, tag } = routeReference(mirror, name);
      const link = { upstream: route.upstream.name, repo: route.repository };
      for (const digest of closures.get(name)!) {
        const mediaType = manifestTypes.get(digest);
        if (mediaType) {
          const bytesOf = await mirror.store.read(parseDigest(digest));
          const parsed = parseManifest(bytesOf!, mediaType);
          mirror.index.putManifest({ digest, mediaType, size: bytesOf!.length, children: childDescriptors(parsed), referrer: referrerFactsOf(parsed) }, link, now);
        } else {
          const stat = await mirror.store.stat(parseDigest(digest));
          mirror.index.putBlob(digest, stat!.size, now);
          mirror.index.putLink(link.upstream, link.repo, digest);
        }
      }
      if (tag) {
        mirror.index.putTag({
          upstream: route.upstream.name, repo: route.repository, tag, accept: 'all', digest: ref.digest!, mediaType: manifestTypes.get(ref.digest!)!,
          fetchedAt: now, checkedAt: now, expiresAt: now + route.upstream.ttlFor(route.repository, tag),
        });
        mirror.index.pin(route.upstream.name, route.repository, tag);
      }
      references.push(name);
    }
    return { references, blobs: [...closures.values()].reduce((n, c) => n + c.size, 0), manifests: manifestTypes.size, bytes, alreadyCached };
  } finally {
    await cleanup();
  }
}
