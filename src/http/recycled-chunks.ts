// A body stream whose chunks live in reused buffers (cache/chunk-pool.ts): the consumer that
// knows when a chunk's bytes have left (the response writer, in its write callback) gives
// it back; a consumer that never does just leaves it to the garbage collector.

import type { Readable } from 'node:stream';

export interface RecyclingReadable extends Readable {
  /** `chunk` (as this stream emitted it) is no longer read by anyone. Call once, or never. */
  recycle(chunk: Buffer): void;
}

export function isRecycling(stream: Readable): stream is RecyclingReadable {
  return typeof (stream as Partial<RecyclingReadable>).recycle === 'function';
}
