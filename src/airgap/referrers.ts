// An image's supply chain, for prewarm and export: every referrer (signature, SBOM,
// attestation) of its top manifest and of each chosen platform manifest, recursively (the
// signature of an SBOM), the referrers tag schema's `sha256-<hex>` indexes, and cosign's legacy
// tags (`sha256-<hex>.sig`, `.att`, `.sbom`). Everything is fetched through the core, as a
// client's pull would be: cached, verified, linked to the repository.

import type { Mirror } from '../mirror.js';
import { digestOf } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { parseManifest } from '../oci/manifest.js';
import { INDEX_MEDIA_TYPES, MediaType } from '../oci/media-types.js';
import { parseDigest } from '../oci/reference.js';
import { cosignTagsOf, descriptorsOfIndex, referrersIndex, referrersTagOf, type ReferrerDescriptor } from '../oci/referrers.js';
import type { Route } from '../upstream/selector.js';

/** How deep referrers of referrers are followed (a signature of an SBOM is depth 2). */
const MAX_DEPTH = 8;
/** At most this many manifests in one image's supply chain. */
const MAX_MANIFESTS = 2000;

export interface ChainManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface ChainTag extends ChainManifest {
  tag: string;
  /**
   * Built here, not the upstream's: the upstream answers the referrers API but keeps no
   * `sha256-<hex>` tag (or its index names a referrer it no longer has). The bundle carries
   * it so that the tag schema answers on the other side too.
   */
  synthesized: boolean;
}

export interface SupplyChain {
  /** Referrers and cosign's signature manifests, with their child manifests when they are indexes. */
  manifests: Map<string, ChainManifest>;
  /** The blobs (configs, layers) of those manifests, by digest → size. */
  blobs: Map<string, number>;
  /** `sha256-<hex>` and `sha256-<hex>.sig/.att/.sbom` tags, with the manifest each points at. */
  tags: ChainTag[];
  /** Referrers the upstream lists but does not have (left out, said in the report). */
  dangling: string[];
}

/** The subjects of an image's supply chain: its top manifest and, for an index, each chosen platform manifest. */
export function subjectsOf(image: { top: { digest: string }; images: { digest: string }[] }): string[] {
  return [...new Set([image.top.digest, ...image.images.map((i) => i.digest)])];
}

/** How many referrers (and cosign signatures) a chain carries, its tag-schema indexes not counted. */
export function referrerCount(chain: SupplyChain): number {
  const indexes = new Set(chain.tags.filter((t) => !t.tag.includes('.')).map((t) => t.digest));
  return [...chain.manifests.keys()].filter((d) => !indexes.has(d)).length;
}

/** Collect the supply chain of `subjects` (an image's top manifest and its chosen platform manifests). */
export async function collectSupplyChain(mirror: Mirror, route: Route, subjects: string[]): Promise<SupplyChain> {
  const chain: SupplyChain = { manifests: new Map(), blobs: new Map(), tags: [], dangling: [] };
  const visited = new Set<string>();
  const queue = subjects.map((digest) => ({ digest, depth: 0 }));
  while (queue.length > 0) {
    const { digest, depth } = queue.shift()!;
    if (visited.has(digest)) continue;
    visited.add(digest);
    const listed = await mirror.referrers(route, parseDigest(digest));
    const carried: ReferrerDescriptor[] = [];
    for (const referrer of listed.descriptors) {
      if (!(await addManifest(mirror, route, chain, referrer.digest))) {
        chain.dangling.push(referrer.digest);
        continue;
      }
      carried.push(referrer);
      if (depth + 1 < MAX_DEPTH) queue.push({ digest: referrer.digest, depth: depth + 1 });
    }
    await addTagSchemaIndex(mirror, route, chain, digest, carried);
    for (const tag of cosignTagsOf(digest)) {
      const manifest = await manifestByTag(mirror, route, tag);
      if (!manifest) continue;
      await addManifest(mirror, route, chain, manifest.digest);
      chain.tags.push({ ...manifest, tag, synthesized: false });
    }
  }
  return chain;
}

/**
 * The subject's `sha256-<hex>` index: the upstream's own when it has one that names only
 * referrers being carried (byte-exact), else one built from the carried referrers.
 */
async function addTagSchemaIndex(mirror: Mirror, route: Route, chain: SupplyChain, subject: string, carried: ReferrerDescriptor[]): Promise<void> {
  const tag = referrersTagOf(subject);
  const upstreamIndex = await manifestByTag(mirror, route, tag);
  if (upstreamIndex && INDEX_MEDIA_TYPES.has(upstreamIndex.mediaType)) {
    let children: ReferrerDescriptor[] = [];
    try {
      children = descriptorsOfIndex(upstreamIndex.bytes);
    } catch {
      // Not an index after all: built below instead.
    }
    let complete = children.length > 0;
    for (const child of children) if (!(await addManifest(mirror, route, chain, child.digest))) complete = false;
    if (complete) {
      chain.manifests.set(upstreamIndex.digest, upstreamIndex);
      chain.tags.push({ ...upstreamIndex, tag, synthesized: false });
      return;
    }
  }
  if (carried.length === 0) return;
  const bytes = Buffer.from(referrersIndex(carried));
  const built = { digest: digestOf(bytes), mediaType: MediaType.OciIndex, bytes };
  chain.manifests.set(built.digest, built);
  chain.tags.push({ ...built, tag, synthesized: true });
}

/** A tag's manifest through the core, or undefined when the upstream has no such tag. */
async function manifestByTag(mirror: Mirror, route: Route, tag: string): Promise<ChainManifest | undefined> {
  try {
    const m = await mirror.getManifest(route, { kind: 'tag', tag }, undefined);
    return { digest: m.digest, mediaType: m.mediaType, bytes: m.bytes };
  } catch (err) {
    if (isUnknown(err)) return undefined;
    throw err;
  }
}

/** A manifest by digest, and (for an index) its children, into the chain; false when the upstream does not have it. */
async function addManifest(mirror: Mirror, route: Route, chain: SupplyChain, digest: string): Promise<boolean> {
  if (chain.manifests.has(digest)) return true;
  if (chain.manifests.size >= MAX_MANIFESTS) throw new RegistryError('UNSUPPORTED', `more than ${MAX_MANIFESTS} manifests in one image's supply chain`, { status: 400 });
  let m;
  try {
    m = await mirror.getManifest(route, { kind: 'digest', digest: parseDigest(digest) }, undefined);
  } catch (err) {
    if (isUnknown(err)) return false;
    throw err;
  }
  chain.manifests.set(digest, { digest: m.digest, mediaType: m.mediaType, bytes: m.bytes });
  const parsed = parseManifest(m.bytes, m.mediaType);
  if (parsed.isIndex) {
    for (const child of parsed.manifests) {
      if (!(await addManifest(mirror, route, chain, child.digest))) {
        chain.manifests.delete(digest);
        return false;
      }
    }
  } else {
    for (const blob of [...(parsed.config ? [parsed.config] : []), ...parsed.layers]) chain.blobs.set(blob.digest, blob.size);
  }
  return true;
}

function isUnknown(err: unknown): boolean {
  return err instanceof RegistryError && (err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN');
}
