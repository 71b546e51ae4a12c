// The /v2/ routing table: a raw request path → which handler, with what parameters.
// Pure: no I/O, so it can be unit-tested and stays cheap on the hot path.

export type ApiRoute =
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

export function matchApiRoute(path: string): ApiRoute {
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

export type ByteRange = { start: number; end: number };

/**
 * A single `bytes=` range against a known size (RFC 9110 §14.1.2). Returns undefined to
 * serve the whole body (absent, malformed or multi-range headers may be ignored), or
 * 'unsatisfiable' for a 416.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header.trim());
  if (!m) return undefined; // multi-range or another unit: ignoring Range is allowed
  const [, first, last] = m;
  if (first === '' && last === '') return undefined;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (start >= size) return 'unsatisfiable';
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (end < start) return undefined;
  return { start, end };
}
