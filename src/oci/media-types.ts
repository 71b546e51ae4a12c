// Manifest media types the mirror understands. We never convert between them:
// a conversion changes the bytes and therefore the digest.

export const MediaType = {
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestV1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  DockerManifestV1: 'application/vnd.docker.distribution.manifest.v1+json',
} as const;

export const INDEX_MEDIA_TYPES: ReadonlySet<string> = new Set([MediaType.OciIndex, MediaType.DockerManifestList]);

/** The modern manifest types, in the order we prefer them. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  MediaType.OciIndex,
  MediaType.OciManifest,
  MediaType.DockerManifestList,
  MediaType.DockerManifest,
];

export const SCHEMA1_MEDIA_TYPES: readonly string[] = [MediaType.DockerManifestV1Signed, MediaType.DockerManifestV1];

export function manifestAcceptList(allowSchema1: boolean): string[] {
  return allowSchema1 ? [...MANIFEST_MEDIA_TYPES, ...SCHEMA1_MEDIA_TYPES] : [...MANIFEST_MEDIA_TYPES];
}

/** Split an Accept header (possibly repeated) into bare media types, parameters dropped. */
export function parseAccept(accept: string | string[] | undefined): string[] {
  if (accept === undefined) return [];
  const joined = Array.isArray(accept) ? accept.join(',') : accept;
  const types: string[] = [];
  for (const part of joined.split(',')) {
    const type = part.split(';')[0]?.trim().toLowerCase();
    if (type) types.push(type);
  }
  return types;
}

/**
 * What a client's Accept header means for tag resolution: `all` when it takes every
 * manifest type we know (or says nothing / `*\/*`), else the sorted subset it named.
 * Tags resolve differently under different Accept headers, so this is part of a tag's key.
 */
const negotiated = new Map<string, { key: string; types: string[] }>();

export function negotiateAccept(accept: string | string[] | undefined, allowSchema1: boolean): { key: string; types: string[] } {
  // Clients send the same few Accept headers over and over: parse each once (bounded).
  if (typeof accept === 'string') {
    const cacheKey = `${allowSchema1 ? 1 : 0}${accept}`;
    let hit = negotiated.get(cacheKey);
    if (!hit) {
      hit = negotiateUncached(accept, allowSchema1);
      if (negotiated.size >= 256) negotiated.clear();
      negotiated.set(cacheKey, hit);
    }
    return hit;
  }
  return negotiateUncached(accept, allowSchema1);
}

function negotiateUncached(accept: string | string[] | undefined, allowSchema1: boolean): { key: string; types: string[] } {
  const known = manifestAcceptList(allowSchema1);
  const asked = parseAccept(accept);
  if (asked.length === 0 || asked.includes('*/*')) return { key: 'all', types: known };
  const wanted = known.filter((t) => asked.includes(t));
  if (wanted.length === known.length) return { key: 'all', types: known };
  // A client that names only types we do not know (or only schema1 while it is off)
  // still gets the modern set: the upstream would answer with one of them anyway.
  if (wanted.length === 0) return { key: 'all', types: known };
  return { key: [...wanted].sort().join(','), types: wanted };
}

export function isManifestMediaType(type: string): boolean {
  return MANIFEST_MEDIA_TYPES.includes(type) || SCHEMA1_MEDIA_TYPES.includes(type);
}
