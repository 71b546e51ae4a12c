// The store's file reader and its pooled buffers (cache/chunk-pool.ts): byte-exact ranges,
// and a buffer is reused only after its chunk was given back.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { READ_CHUNK_BYTES } from '../../src/cache/blob-store.js';
import { ChunkPool, readChunks } from '../../src/cache/chunk-pool.js';
import { StoredFileReader } from '../../src/cache/stored-file-reader.js';

const dir = mkdtempSync(join(tmpdir(), 'stored-reader-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const content = randomBytes(3 * READ_CHUNK_BYTES + 12345);
const path = join(dir, 'blob');
writeFileSync(path, content);

/** Read all of a reader, copying each chunk (then giving it back when `recycle`). */
async function readAll(reader: StoredFileReader, recycle: boolean): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of reader as AsyncIterable<Buffer>) {
    parts.push(Buffer.from(chunk));
    if (recycle) reader.recycle(chunk);
  }
  return Buffer.concat(parts);
}

describe('StoredFileReader', () => {
  it('reads the whole file and inclusive ranges byte-exact, with chunks recycled or not', async () => {
    for (const recycle of [false, true]) {
      expect((await readAll(new StoredFileReader(path), recycle)).equals(content)).toBe(true);
      expect((await readAll(new StoredFileReader(path, 0, 0), recycle)).equals(content.subarray(0, 1))).toBe(true);
      const start = READ_CHUNK_BYTES - 7;
      const end = 2 * READ_CHUNK_BYTES + 99;
      expect((await readAll(new StoredFileReader(path, start, end), recycle)).equals(content.subarray(start, end + 1))).toBe(true);
      // An end past the file: the stream ends with the file, as fs.createReadStream does.
      expect((await readAll(new StoredFileReader(path, content.length - 10, content.length + 1000), recycle)).equals(content.subarray(-10))).toBe(true);
    }
  });

  it('fails with the open error for a missing file', async () => {
    const error = await readAll(new StoredFileReader(join(dir, 'missing')), false).then(
      () => undefined,
      (err: NodeJS.ErrnoException) => err.code,
    );
    expect(error).toBe('ENOENT');
  });

  it('reuses a chunk’s buffer only once the chunk was given back', async () => {
    const reader = new StoredFileReader(path);
    const seen: Buffer[] = [];
    const copies: Buffer[] = [];
    for await (const chunk of reader as AsyncIterable<Buffer>) {
      // Chunks kept (not given back) keep their bytes while the reader goes on.
      for (let i = 0; i < seen.length; i++) expect(seen[i]!.equals(copies[i]!)).toBe(true);
      seen.push(chunk);
      copies.push(Buffer.from(chunk));
    }
    expect(new Set(seen.map((c) => c.buffer)).size).toBe(seen.length);
    // Given back, the buffers serve the next reader: no fresh allocation per chunk.
    for (const chunk of seen) reader.recycle(chunk);
    const pooled = new Set(seen.map((c) => c.buffer));
    const next = new StoredFileReader(path, 0, 10);
    for await (const chunk of next as AsyncIterable<Buffer>) expect(pooled.has(chunk.buffer)).toBe(true);
  });

  it('gives a chunk back once, and ignores chunks it did not lend', async () => {
    const reader = new StoredFileReader(path, 0, 3);
    const chunks: Buffer[] = [];
    for await (const chunk of reader as AsyncIterable<Buffer>) chunks.push(chunk);
    const before = readChunks.freeCount;
    reader.recycle(chunks[0]!);
    reader.recycle(chunks[0]!);
    reader.recycle(Buffer.alloc(READ_CHUNK_BYTES));
    expect(readChunks.freeCount).toBe(Math.min(before + 1, 8));
  });
});

describe('a consumer that never gives chunks back', () => {
  it('does not make the reader hold what it read: 64 MiB hashed, well under 16 MiB of buffers alive after a GC', async () => {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const bigPath = join(dir, 'big');
    writeFileSync(bigPath, Buffer.alloc(64 * 1024 * 1024, 7));
    const code = `
      import { StoredFileReader } from './src/cache/stored-file-reader.ts';
      const reader = new StoredFileReader(${JSON.stringify(bigPath)});
      let bytes = 0;
      for await (const chunk of reader) bytes += chunk.length;
      globalThis.gc();
      // The reader is still referenced here: only what it holds on to is left.
      console.log(JSON.stringify({ bytes, held: process.memoryUsage().arrayBuffers / 1048576, reader: typeof reader }));
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', code], { cwd: root });
    const result = JSON.parse(stdout) as { bytes: number; held: number };
    expect(result.bytes).toBe(64 * 1024 * 1024);
    expect(result.held).toBeLessThan(16);
  });
});

describe('ChunkPool', () => {
  it('keeps at most its bound of free buffers, of its own size only', () => {
    const pool = new ChunkPool(1024, 2);
    const taken = [pool.take(), pool.take(), pool.take()];
    for (const b of taken) pool.give(b);
    pool.give(Buffer.alloc(512));
    expect(pool.freeCount).toBe(2);
    expect([taken[0], taken[1]]).toContain(pool.take());
  });
});
