// The /v2/ API paths: a raw request path → which endpoint, with what parameters.
// Pure: no I/O, so it can be unit-tested and stays cheap on the hot path.

export type ApiPath =
  | { kind: 'base' }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'upload'; name: string }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string }
  | { kind: 'catalog' }
  | { kind: 'unknown' };

const MANIFEST_RE = /^\/v2\/(.+)\/manifests\/([^/]+)$/;
const BLOB_UPLOAD_RE = /^\/v2\/(.+)\/blobs\/uploads(?:\/.*)?$/;
const BLOB_RE = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
const TAGS_RE = /^\/v2\/(.+)\/tags\/list$/;
const REFERRERS_RE = /^\/v2\/(.+)\/referrers\/([^/]+)$/;

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

export function matchApiPath(path: string): ApiPath {
  if (path === '/v2/' || path === '/v2') return { kind: 'base' };
  if (!path.startsWith('/v2/')) return { kind: 'unknown' };
  if (path === '/v2/_catalog') return { kind: 'catalog' };
  let m = MANIFEST_RE.exec(path);
  if (m) return { kind: 'manifest', name: m[1]!, reference: decode(m[2]!) };
  m = BLOB_UPLOAD_RE.exec(path);
  if (m) return { kind: 'upload', name: m[1]! };
  m = BLOB_RE.exec(path);
  if (m) return { kind: 'blob', name: m[1]!, digest: decode(m[2]!) };
  m = TAGS_RE.exec(path);
  if (m) return { kind: 'tags', name: m[1]! };
  m = REFERRERS_RE.exec(path);
  if (m) return { kind: 'referrers', name: m[1]!, digest: decode(m[2]!) };
  return { kind: 'unknown' };
}
