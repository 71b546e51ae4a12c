// The Range request header (RFC 9110 §14.1.2, §14.2). Pure, no I/O.

export type ByteRange = { start: number; end: number };

/**
 * At most this many range-specs in one header; more is answered with the whole body (200),
 * as RFC 9110 §14.2 allows for "a set of many small ranges". 1024 is what containers/storage
 * (podman's zstd:chunked) sends at most in one request, so a lazy-pulling client is never
 * degraded to a full download, while a header of thousands of tiny parts is.
 */
export const MAX_RANGES = 1024;

/**
 * A single `bytes=` range against a known size (RFC 9110 §14.1.2). Returns undefined to
 * serve the whole body (absent, malformed or multi-range headers may be ignored), or
 * 'unsatisfiable' for a 416. See parseRanges for headers with several ranges.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=([^,]*)$/.exec(header.trim());
  if (!m) return undefined; // multi-range or another unit: ignoring Range is allowed
  return parseRangeSpec(m[1]!, size);
}

/**
 * One or several `bytes=` ranges against a known size. Returns undefined to serve the whole
 * body (absent or malformed header, another unit, an invalid range-spec such as `9-3`, more
 * than MAX_RANGES specs), 'unsatisfiable' for a 416 when no range-spec is satisfiable, or the
 * satisfiable ranges (unsatisfiable specs are dropped, RFC 9110 §14.1.1).
 *
 * Against abuse (RFC 9110 §14.2, §15.3.7.2): ranges that overlap are coalesced, so the parts
 * of a multipart answer never repeat a byte and their total never exceeds the blob's size
 * (`bytes=0-,0-,0-,…` is one range). Ranges that only touch are NOT merged: containers/image
 * expects exactly one part per requested chunk and fails on fewer. Without overlaps the ranges
 * keep the order of the header (RFC 9110 §15.3.7.2's SHOULD); with overlaps they come out
 * coalesced in ascending order.
 */
export function parseRanges(header: string | undefined, size: number): ByteRange[] | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(.*)$/s.exec(header.trim());
  if (!m) return undefined;
  // Empty list elements (`0-1,,5-6`) are allowed by the list syntax (RFC 9110 §5.6.1.2).
  const specs = m[1]!.split(',').filter((s) => s.trim() !== '');
  if (specs.length === 0 || specs.length > MAX_RANGES) return undefined;
  const ranges: ByteRange[] = [];
  for (const spec of specs) {
    const range = parseRangeSpec(spec, size);
    if (range === undefined) return undefined; // one invalid spec: the header may be ignored
    if (range !== 'unsatisfiable') ranges.push(range);
  }
  if (ranges.length === 0) return 'unsatisfiable';
  return coalesceOverlaps(ranges);
}

/** `first-last`, `first-` or `-suffix`; undefined when invalid. */
function parseRangeSpec(spec: string, size: number): ByteRange | 'unsatisfiable' | undefined {
  const m = /^\s*(\d*)\s*-\s*(\d*)\s*$/.exec(spec);
  if (!m) return undefined;
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

function coalesceOverlaps(ranges: ByteRange[]): ByteRange[] {
  if (ranges.length === 1) return ranges;
  const sorted = [...ranges].sort((a, b) => a.start - b.start || a.end - b.end);
  let overlaps = false;
  for (let i = 1; i < sorted.length; i++) if (sorted[i]!.start <= sorted[i - 1]!.end) overlaps = true;
  if (!overlaps) return ranges;
  const merged: ByteRange[] = [{ ...sorted[0]! }];
  for (const r of sorted.slice(1)) {
    const last = merged[merged.length - 1]!;
    if (r.start <= last.end) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return merged;
}
