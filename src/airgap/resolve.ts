// Image references as users write them → routed requests, and the walk from a tag down to
// the chosen platforms' blobs. Shared by prewarm and export: the same core a client's pull uses.

import type { Mirror } from '../mirror.js';
import { RegistryError } from '../oci/errors.js';
import { formatPlatform, parseManifest, platformMatches, type Descriptor, type Platform } from '../oci/manifest.js';
import { parseDigest, parseImageReference, type ManifestReference } from '../oci/reference.js';
import type { Route } from '../upstream/selector.js';

export interface ResolvedImage {
  /** As the user wrote it. */
  input: string;
  /** Fully qualified: docker.io/library/alpine:3.19 or …@sha256:… */
  canonical: string;
  route: Route;
  tag: string | undefined;
  /** The top manifest (an index or an image manifest). */
  top: { digest: string; mediaType: string; bytes: Buffer };
  /** Platform manifests chosen from an index (or the image itself). */
  images: { digest: string; mediaType: string; bytes: Buffer; platform: Platform | undefined; blobs: Descriptor[] }[];
}

export function routeReference(mirror: Mirror, input: string): { route: Route; reference: ManifestReference; tag: string | undefined; canonical: string } {
  const ref = parseImageReference(input);
  const name = ref.registry ? `${ref.registry}/${ref.repository}` : ref.repository;
  const route = mirror.selector.select(name, null);
  const reference: ManifestReference = ref.digest ? { kind: 'digest', digest: parseDigest(ref.digest) } : { kind: 'tag', tag: ref.tag ?? 'latest' };
  const canonical = `${route.upstream.name}/${route.repository}${ref.digest ? `@${ref.digest}` : `:${ref.tag ?? 'latest'}`}`;
  return { route, reference, tag: ref.digest ? undefined : ref.tag ?? 'latest', canonical };
}

/** Resolve a reference to its manifests for the wanted platforms (all of them when `platforms` is undefined). */
export async function resolveImage(mirror: Mirror, input: string, platforms: Platform[] | undefined): Promise<ResolvedImage> {
  const { route, reference, tag, canonical } = routeReference(mirror, input);
  const top = await mirror.getManifest(route, reference, undefined);
  const parsed = parseManifest(top.bytes, top.mediaType);
  const images: ResolvedImage['images'] = [];
  if (parsed.isIndex) {
    const chosen = parsed.manifests.filter((d) => !platforms || platforms.some((p) => platformMatches(d.platform, p)));
    if (chosen.length === 0) {
      const offered = parsed.manifests.map((d) => (d.platform ? formatPlatform(d.platform) : 'unknown')).join(', ');
      throw new RegistryError('MANIFEST_UNKNOWN', `${canonical} has no manifest for ${platforms!.map(formatPlatform).join(', ')} (it offers ${offered})`);
    }
    for (const d of chosen) {
      const child = await mirror.getManifest(route, { kind: 'digest', digest: parseDigest(d.digest) }, undefined);
      const m = parseManifest(child.bytes, child.mediaType);
      if (m.isIndex) throw new RegistryError('MANIFEST_INVALID', `${canonical}: nested indexes are not supported`);
      images.push({ digest: child.digest, mediaType: child.mediaType, bytes: child.bytes, platform: d.platform, blobs: [...(m.config ? [m.config] : []), ...m.layers] });
    }
  } else {
    images.push({ digest: top.digest, mediaType: top.mediaType, bytes: top.bytes, platform: undefined, blobs: [...(parsed.config ? [parsed.config] : []), ...parsed.layers] });
  }
  return { input, canonical, route, tag, top: { digest: top.digest, mediaType: top.mediaType, bytes: top.bytes }, images };
}
