// The framing of a multipart/byteranges body (RFC 9110 §14.6, §15.3.7.2; RFC 2046 §5.1.1).
// Pure, no I/O: the caller streams each part's bytes between its head and the next.

import { randomBytes } from 'node:crypto';
import type { ByteRange } from './range.js';

export interface MultipartPart {
  range: ByteRange;
  /** Written before the part's bytes: delimiter and the part's header section. */
  head: Buffer;
}

export interface MultipartByteranges {
  /** The response's Content-Type, with the boundary. */
  contentType: string;
  /** Exact length of the whole body: heads, parts' bytes and the closing delimiter. */
  contentLength: number;
  parts: MultipartPart[];
  /** Written after the last part: the closing delimiter. */
  tail: Buffer;
}

/**
 * Heads, tail and exact length for `ranges` of a representation of `size` bytes:
 *
 *   --B CRLF Content-Type: … CRLF Content-Range: bytes a-b/size CRLF CRLF <bytes>
 *   CRLF --B CRLF … CRLF <bytes>
 *   CRLF --B-- CRLF
 */
export function multipartByteranges(ranges: ByteRange[], size: number, partType: string, boundary = randomBoundary()): MultipartByteranges {
  const parts = ranges.map((range, i) => ({
    range,
    head: Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: ${partType}\r\nContent-Range: bytes ${range.start}-${range.end}/${size}\r\n\r\n`, 'latin1'),
  }));
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
  const contentLength = parts.reduce((n, p) => n + p.head.length + (p.range.end - p.range.start + 1), tail.length);
  return { contentType: `multipart/byteranges; boundary=${boundary}`, contentLength, parts, tail };
}

/** 32 random hex digits: a token (no quoting needed) that blob bytes will not contain by chance. */
function randomBoundary(): string {
  return randomBytes(16).toString('hex');
}
