// Multi-range requests on blobs (issue 14, item 4), against a real upstream: lazy-pull
// clients (podman's zstd:chunked) ask for `bytes=a-b,c-d,…` and expect 206
// multipart/byteranges, warm from the store and cold while the blob downloads.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get, type Fetched } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { bigLayer, buildImage, type Blob } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: RealUpstream;
let mirror: TestMirror;
let warm: { layer: Blob; bytes: Buffer; url: string };
let cold: { layer: Blob; bytes: Buffer; url: string };

/** Every response goes through here: a 200 must never carry Content-Range. */
async function fetchBlob(url: string, options: { method?: string; range?: string } = {}): Promise<Fetched> {
  const r = await get(url, { method: options.method, headers: options.range ? { range: options.range } : {} });
  expect({ status: r.status, contentRange: r.status === 200 ? r.headers['content-range'] : undefined }).toEqual({ status: r.status, contentRange: undefined });
  return r;
}

interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

/** Split a multipart/byteranges body on the boundary its Content-Type names (RFC 2046 §5.1.1). */
function parseMultipart(body: Buffer, contentType: string | undefined): Part[] {
  const m = /^multipart\/byteranges;\s*boundary=("?)([^";]+)\1$/.exec(contentType ?? '');
  if (!m) throw new Error(`not multipart/byteranges: ${contentType}`);
  const delimiter = Buffer.from(`--${m[2]}`, 'latin1');
  const parts: Part[] = [];
  expect(body.subarray(0, delimiter.length).equals(delimiter)).toBe(true);
  let pos = delimiter.length;
  for (;;) {
    const after = body.subarray(pos, pos + 2).toString('latin1');
    if (after === '--') {
      expect(body.subarray(pos + 2).toString('latin1')).toBe('\r\n');
      return parts;
    }
    expect(after).toBe('\r\n');
    const headerEnd = body.indexOf('\r\n\r\n', pos + 2, 'latin1');
    const headers: Record<string, string> = {};
    for (const line of body.subarray(pos + 2, headerEnd).toString('latin1').split('\r\n')) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const dataStart = headerEnd + 4;
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), dataStart);
    if (next < 0) throw new Error('unterminated part');
    parts.push({ headers, body: body.subarray(dataStart, next) });
    pos = next + 2 + delimiter.length;
  }
}

/** Each part is the slice of `bytes` its Content-Range names, and the parts are `expected`. */
function expectParts(r: Fetched, bytes: Buffer, expected: [number, number][]): void {
  expect(r.status).toBe(206);
  expect(r.truncated).toBe(false);
  expect(r.headers['content-range']).toBeUndefined();
  expect(Number(r.headers['content-length'])).toBe(r.body.length);
  const parts = parseMultipart(r.body, r.headers['content-type']);
  expect(parts.map((p) => p.headers['content-range'])).toEqual(expected.map(([a, b]) => `bytes ${a}-${b}/${bytes.length}`));
  for (const [i, [a, b]] of expected.entries()) {
    expect(parts[i]!.headers['content-type']).toBe('application/octet-stream');
    expect(parts[i]!.body.length).toBe(b - a + 1);
    expect(parts[i]!.body.equals(bytes.subarray(a, b + 1))).toBe(true);
  }
}

async function pushLayer(repository: string, size: number, seed: string): Promise<{ layer: Blob; bytes: Buffer; url: string }> {
  const layer = await bigLayer(size, seed);
  await upstream.push(repository, 'v1', buildImage({ format: 'docker', layers: [layer] }));
  return { layer, bytes: readFileSync(layer.path!), url: `${mirror.url}/v2/${repository}/blobs/${layer.digest}` };
}

beforeAll(async () => {
  upstream = await startRealUpstream();
  mirror = await startMirror({ upstreamUrl: upstream.url });
  warm = await pushLayer('team/ranges-warm', 256 * 1024, 'multirange-warm');
  cold = await pushLayer('team/ranges-cold', 48 * MiB, 'multirange-cold');
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

describe('multi-range requests on blobs', () => {
  it('a warm blob answers 206 multipart/byteranges, every part byte-exact, with the exact Content-Length; HEAD the same headers', async () => {
    const full = await fetchBlob(warm.url);
    expect(full.status).toBe(200);
    expect(full.body.equals(warm.bytes)).toBe(true);
    const size = warm.bytes.length;
    const r = await fetchBlob(warm.url, { range: 'bytes=0-99,200-299,-50' });
    expectParts(r, warm.bytes, [[0, 99], [200, 299], [size - 50, size - 1]]);
    expect(r.headers['docker-content-digest']).toBe(warm.layer.digest);
    const head = await fetchBlob(warm.url, { method: 'HEAD', range: 'bytes=0-99,200-299,-50' });
    expect(head.status).toBe(206);
    expect(head.headers['content-type']).toMatch(/^multipart\/byteranges; boundary=/);
    expect(head.headers['content-length']).toBe(r.headers['content-length']);
    expect(head.headers['content-range']).toBeUndefined();
    expect(head.body.length).toBe(0);
  });

  it('open ranges, overlapping ranges (coalesced) and the order of the header', async () => {
    const size = warm.bytes.length;
    const r = await fetchBlob(warm.url, { range: `bytes=${size - 10}-,0-99,50-149` });
    expectParts(r, warm.bytes, [[0, 149], [size - 10, size - 1]]);
    const ordered = await fetchBlob(warm.url, { range: 'bytes=1000-1009,10-19' });
    expectParts(ordered, warm.bytes, [[1000, 1009], [10, 19]]);
  });

  it('a cold blob: parts on both sides of the download front are byte-exact, from ONE upstream blob GET', async () => {
    upstream.resetCounts();
    const size = cold.bytes.length;
    const expected: [number, number][] = [[0, 4095], [size / 2, size / 2 + 65_535], [size - 100_000, size - 99_001], [size - 64, size - 1]].map(
      ([a, b]) => [Math.floor(a!), Math.floor(b!)] as [number, number],
    );
    const r = await fetchBlob(cold.url, { range: `bytes=${expected.map(([a, b]) => `${a}-${b}`).join(',')}` });
    expectParts(r, cold.bytes, expected);
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(1);
    // Cached now: the same request is answered from the store.
    const again = await fetchBlob(cold.url, { range: `bytes=${expected.map(([a, b]) => `${a}-${b}`).join(',')}` });
    expectParts(again, cold.bytes, expected);
    expect(upstream.count({ kind: 'blob', method: 'GET' })).toBe(1);
  });

  it('many parts (1000) stream byte-exact, without piling listeners on the response', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const expected = Array.from({ length: 1000 }, (_, i) => [i * 200, i * 200 + 99] as [number, number]);
      const r = await fetchBlob(warm.url, { range: `bytes=${expected.map(([a, b]) => `${a}-${b}`).join(',')}` });
      expectParts(r, warm.bytes, expected);
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
  });

  it('unsatisfiable multi-range: 416 with Content-Range bytes */size', async () => {
    const size = warm.bytes.length;
    const r = await fetchBlob(warm.url, { range: `bytes=${size}-,${size + 10}-${size + 20},-0` });
    expect(r.status).toBe(416);
    expect(r.headers['content-range']).toBe(`bytes */${size}`);
    expect(JSON.parse(r.body.toString()).errors[0].code).toBe('RANGE_INVALID');
  });

  it('several ranges of which one is satisfiable: a plain single-range 206', async () => {
    const size = warm.bytes.length;
    const r = await fetchBlob(warm.url, { range: `bytes=5-14,${size + 1}-` });
    expect(r.status).toBe(206);
    expect(r.headers['content-type']).toBe('application/octet-stream');
    expect(r.headers['content-range']).toBe(`bytes 5-14/${size}`);
    expect(r.body.equals(warm.bytes.subarray(5, 15))).toBe(true);
  });

  it('up to 1024 ranges are served as parts; 1025 ranges or an invalid range-spec: the whole blob, 200 without Content-Range', async () => {
    const ranges = (n: number) => Array.from({ length: n }, (_, i) => [i * 2, i * 2] as [number, number]);
    const header = (n: number) => `bytes=${ranges(n).map(([a, b]) => `${a}-${b}`).join(',')}`;
    const most = await fetchBlob(warm.url, { range: header(1024) });
    expectParts(most, warm.bytes, ranges(1024));
    const tooMany = await fetchBlob(warm.url, { range: header(1025) });
    expect(tooMany.status).toBe(200);
    expect(tooMany.body.equals(warm.bytes)).toBe(true);
    const invalid = await fetchBlob(warm.url, { range: 'bytes=0-9,30-20' });
    expect(invalid.status).toBe(200);
    expect(invalid.body.equals(warm.bytes)).toBe(true);
  });

  it('a client that goes away mid-part: its store reads are closed (the blob can be evicted) and the next request is whole', async () => {
    const size = cold.bytes.length;
    // From the store (a download in this test file or started here).
    const file = join(mirror.storage, 'blobs', 'sha256', cold.layer.digest.slice(7, 9), cold.layer.digest.slice(7));
    await fetchBlob(cold.url, { range: 'bytes=0-0' });
    await waitFor(() => existsSync(file), 10_000, 'the blob in the store');
    const range = `bytes=0-${16 * MiB - 1},${24 * MiB}-${size - 1}`;
    const aborted = await get(cold.url, { headers: { range }, abortAfter: 1 * MiB });
    expect(aborted.status).toBe(206);
    expect(aborted.headers['content-type']).toMatch(/^multipart\/byteranges; boundary=/);
    expect(aborted.truncated).toBe(true);
    const again = await fetchBlob(cold.url, { range });
    expectParts(again, cold.bytes, [[0, 16 * MiB - 1], [24 * MiB, size - 1]]);
    // A read left open would keep the blob busy, and eviction would pass it over.
    await waitFor(
      async () => {
        await mirror.mirror.evictor.evict(0);
        return !existsSync(file);
      },
      5_000,
      'the blob to be evicted (no store read left open)',
    );
  });
});
