// Reading HTTP headers the way every part of the mirror needs them: one value of a header
// that may repeat, a Content-Length, a Content-Range, a Link's next page. Pure, no I/O.

export type HeaderMap = Record<string, string | string[] | undefined>;

/** The first value of a header (undici and node:http give repeated headers as arrays). */
export function headerValue(headers: HeaderMap, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Content-Length as a number; undefined when absent or not a plain decimal. */
export function parseContentLength(headers: HeaderMap): number | undefined {
  const value = headerValue(headers, 'content-length');
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}

export interface ContentRange {
  start: number;
  end: number;
  /** undefined for `bytes a-b/*` (the sender does not know the total). */
  total: number | undefined;
}

/** `bytes 0-99/1234` (RFC 9110 §14.4); undefined when absent or malformed. */
export function parseContentRange(headers: HeaderMap): ContentRange | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headerValue(headers, 'content-range') ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

/** The target of an RFC 8288 `Link: <…>; rel="next"` (as written: relative or absolute), or undefined when there is none. */
export function nextLinkTarget(link: string | undefined): string | undefined {
  if (!link) return undefined;
  for (const part of link.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (m && /;\s*rel\s*=\s*"?([^";]*\s)?next(\s[^";]*)?"?\s*(;|$)/i.test(m[2]!)) return m[1]!;
  }
  return undefined;
}
