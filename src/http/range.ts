// The Range request header (RFC 9110 §14.1.2). Pure, no I/O.

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
