// Read buffers reused on the blob read paths (the store's files, a download's temp file).
//
// Why: a reader that allocates a fresh 1 MiB buffer per read leaves every served MiB behind
// as garbage outside V8's heap, and V8 collects it only once some 64 MiB of such memory has
// piled up: that pile was most of a worker's peak RSS while serving warm blobs, and every
// fresh buffer also costs the kernel a page fault per 4 KiB. Here a reader takes its buffers
// from a pool, and the one consumer that knows when the bytes have left (the response
// writer, once its write callback has run) gives each back. A consumer that does not give
// chunks back (an export, a hash) costs what a plain reader costs: nothing is ever reused
// unless it was given back, so a chunk can never be overwritten while someone still reads it.

import { READ_CHUNK_BYTES } from './blob-store.js';

/** Buffers kept for reuse at most (the rest is left to the garbage collector). */
const MAX_FREE = 8;
/** Idle this long, the free buffers are dropped: an idle mirror holds none. */
const TRIM_AFTER_MS = 5000;

export class ChunkPool {
  private readonly free: Buffer[] = [];
  private lastTake = 0;
  private trimTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly chunkBytes: number,
    private readonly maxFree = MAX_FREE,
  ) {}

  take(): Buffer {
    this.lastTake = Date.now();
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.chunkBytes);
  }

  /** A buffer from `take` that nobody reads any more. */
  give(buffer: Buffer): void {
    if (buffer.length !== this.chunkBytes || this.free.length >= this.maxFree) return;
    this.free.push(buffer);
    this.trimTimer ??= setTimeout(() => this.trim(), TRIM_AFTER_MS).unref();
  }

  get freeCount(): number {
    return this.free.length;
  }

  private trim(): void {
    this.trimTimer = undefined;
    if (this.free.length === 0) return;
    const idle = Date.now() - this.lastTake;
    if (idle >= TRIM_AFTER_MS) this.free.length = 0;
    else this.trimTimer = setTimeout(() => this.trim(), TRIM_AFTER_MS - idle).unref();
  }
}

/** The pool of the blob read paths (chunks of READ_CHUNK_BYTES). */
export const readChunks = new ChunkPool(READ_CHUNK_BYTES);

/**
 * The chunks one reader handed out, by their memory: a chunk (possibly a shorter view of its
 * buffer) given back returns its whole buffer to the pool, once. Weakly held: a consumer that
 * never gives chunks back (a hash, an export) must not make the reader keep every buffer it
 * read (a strong map held a whole 300 MiB blob that way).
 */
export class LentChunks {
  private readonly lent = new WeakMap<ArrayBufferLike, Buffer>();

  constructor(private readonly pool: ChunkPool = readChunks) {}

  take(): Buffer {
    return this.pool.take();
  }

  /** `buffer` (from `take`) goes out as `chunk` (a view of it). */
  lend(buffer: Buffer, chunk: Buffer): Buffer {
    this.lent.set(buffer.buffer, buffer);
    return chunk;
  }

  giveBack(chunk: Buffer): void {
    const buffer = this.lent.get(chunk.buffer);
    if (!buffer) return;
    this.lent.delete(chunk.buffer);
    this.pool.give(buffer);
  }
}
