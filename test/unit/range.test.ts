import { describe, expect, it } from 'vitest';
import { multipartByteranges } from '../../src/http/byteranges.js';
import { MAX_RANGES, parseRange, parseRanges } from '../../src/http/range.js';

describe('Range with several ranges', () => {
  it.each([
    ['bytes=0-9,20-29', [{ start: 0, end: 9 }, { start: 20, end: 29 }]],
    ['bytes=0-99,200-299,-50', [{ start: 0, end: 99 }, { start: 200, end: 299 }, { start: 950, end: 999 }]],
    ['bytes=900-,0-0', [{ start: 900, end: 999 }, { start: 0, end: 0 }]],
    ['bytes= 1-2 , 4-5 ', [{ start: 1, end: 2 }, { start: 4, end: 5 }]],
    ['bytes=1-2,,4-5', [{ start: 1, end: 2 }, { start: 4, end: 5 }]],
    ['bytes=990-5000,-5000', [{ start: 0, end: 999 }]],
  ])('%s of 1000 bytes', (header, expected) => {
    expect(parseRanges(header, 1000)).toEqual(expected);
  });

  it('reads one range the way parseRange does', () => {
    for (const header of ['bytes=0-9', 'bytes=10-', 'bytes=-10', 'bytes=90-1000', 'bytes=-1000']) {
      expect(parseRanges(header, 100)).toEqual([parseRange(header, 100)]);
    }
  });

  it('drops unsatisfiable ranges and is unsatisfiable only when none is left', () => {
    expect(parseRanges('bytes=5-9,100-,-0', 100)).toEqual([{ start: 5, end: 9 }]);
    expect(parseRanges('bytes=100-,200-300,-0', 100)).toBe('unsatisfiable');
    expect(parseRanges('bytes=100-', 100)).toBe('unsatisfiable');
  });

  it('coalesces overlapping ranges, ascending, but keeps touching ones apart and the order otherwise', () => {
    expect(parseRanges('bytes=0-99,50-149,-50', 1000)).toEqual([{ start: 0, end: 149 }, { start: 950, end: 999 }]);
    expect(parseRanges('bytes=500-,0-,0-', 1000)).toEqual([{ start: 0, end: 999 }]);
    expect(parseRanges('bytes=0-9,10-19', 1000)).toEqual([{ start: 0, end: 9 }, { start: 10, end: 19 }]);
    expect(parseRanges('bytes=20-29,0-9', 1000)).toEqual([{ start: 20, end: 29 }, { start: 0, end: 9 }]);
  });

  it('ignores what it may ignore, and more than MAX_RANGES ranges', () => {
    expect(parseRanges(undefined, 100)).toBeUndefined();
    expect(parseRanges('items=0-1,5-6', 100)).toBeUndefined();
    expect(parseRanges('bytes=0-1,9-3', 100)).toBeUndefined();
    expect(parseRanges('bytes=0-1,x', 100)).toBeUndefined();
    expect(parseRanges('bytes=0-1,-', 100)).toBeUndefined();
    expect(parseRanges('bytes=', 100)).toBeUndefined();
    const many = (n: number) => `bytes=${Array.from({ length: n }, (_, i) => `${i * 2}-${i * 2}`).join(',')}`;
    expect(parseRanges(many(MAX_RANGES), 1_000_000)).toHaveLength(MAX_RANGES);
    expect(parseRanges(many(MAX_RANGES + 1), 1_000_000)).toBeUndefined();
  });
});

describe('multipart/byteranges framing', () => {
  it('frames each part with its headers, CRLFs and the closing boundary, with the exact length', () => {
    const data = Buffer.from('0123456789abcdefghij');
    const ranges = [{ start: 0, end: 2 }, { start: 15, end: 19 }];
    const body = multipartByteranges(ranges, data.length, 'application/octet-stream', 'XYZ');
    expect(body.contentType).toBe('multipart/byteranges; boundary=XYZ');
    const whole = Buffer.concat([...body.parts.flatMap((p) => [p.head, data.subarray(p.range.start, p.range.end + 1)]), body.tail]);
    expect(whole.toString('latin1')).toBe(
      '--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-2/20\r\n\r\n012' +
        '\r\n--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 15-19/20\r\n\r\nfghij' +
        '\r\n--XYZ--\r\n',
    );
    expect(body.contentLength).toBe(whole.length);
  });

  it('draws a fresh boundary of token characters', () => {
    const a = multipartByteranges([{ start: 0, end: 0 }], 1, 'application/octet-stream');
    const b = multipartByteranges([{ start: 0, end: 0 }], 1, 'application/octet-stream');
    expect(a.contentType).toMatch(/^multipart\/byteranges; boundary=[0-9a-f]{32}$/);
    expect(a.contentType).not.toBe(b.contentType);
  });
});
