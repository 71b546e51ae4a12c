// A stored blob's bytes [start, end] as a stream, read into pooled buffers (chunk-pool.ts):
// what fs.createReadStream does, minus a fresh buffer per read.

import { close, open, read } from 'node:fs';
import { Readable } from 'node:stream';
import { READ_CHUNK_BYTES } from './blob-store.js';
import type { RecyclingReadable } from '../http/recycled-chunks.js';
import { LentChunks } from './chunk-pool.js';

export class StoredFileReader extends Readable implements RecyclingReadable {
  private fd: number | undefined;
  private position: number;
  /** A read is in flight: the fd is closed only after it (no read into a reused fd number). */
  private reading = false;
  private closeWhenRead: (() => void) | undefined;
  private readonly chunks = new LentChunks();

  constructor(
    private readonly path: string,
    start = 0,
    /** Inclusive, like fs.createReadStream's; none: to the end of the file. */
    private readonly end?: number,
  ) {
    super({ highWaterMark: READ_CHUNK_BYTES });
    this.position = start;
  }

  recycle(chunk: Buffer): void {
    this.chunks.giveBack(chunk);
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.path, 'r', (err, fd) => {
      if (err) return callback(err);
      this.fd = fd;
      callback();
    });
  }

  override _read(): void {
    if (this.reading || this.fd === undefined) return;
    const want = Math.min(READ_CHUNK_BYTES, this.end !== undefined ? this.end + 1 - this.position : Infinity);
    if (want <= 0) {
      this.push(null);
      return;
    }
    const buffer = this.chunks.take();
    this.reading = true;
    read(this.fd, buffer, 0, want, this.position, (err, bytesRead) => {
      this.reading = false;
      if (this.closeWhenRead) {
        // Destroyed meanwhile: the buffer is dropped, not pooled (nobody will give it back).
        this.closeWhenRead();
        return;
      }
      if (err) {
        this.destroy(err);
        return;
      }
      if (bytesRead === 0) {
        // The file ends before `end` (like fs.createReadStream: the stream just ends).
        this.push(null);
        return;
      }
      this.position += bytesRead;
      this.push(this.chunks.lend(buffer, buffer.subarray(0, bytesRead)));
    });
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd === undefined) return callback(err);
    const closeFd = () => close(fd, () => callback(err));
    if (this.reading) this.closeWhenRead = closeFd;
    else closeFd();
  }
}
