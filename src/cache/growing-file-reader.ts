// A reader of a download's temp file while it is still being written: each client that
// joins a download gets one, with its own fd and position, and reads at its own pace.

import { close, openSync, read } from 'node:fs';
import { Readable } from 'node:stream';
import { READ_CHUNK_BYTES } from './blob-store.js';
import type { RecyclingReadable } from '../http/recycled-chunks.js';
import { LentChunks } from './chunk-pool.js';

/** What the reader needs to know of the download writing the file (cache/downloads.ts). */
export interface GrowingFile {
  readonly state: 'running' | 'committing' | 'done' | 'failed';
  readonly error: Error | undefined;
  readonly totalSize: number | undefined;
  /** The whole blob is written and matches its digest. */
  readonly verified: boolean;
  /** Contiguous bytes written (and hashed) so far. */
  readonly written: number;
  /**
   * Set where the bytes can move to another temp file (a download another worker took over):
   * a reader whose generation is behind reopens `path` and reads on from its position there.
   */
  readonly generation?: number;
  readonly path?: string;
  /** 'progress' is emitted whenever any of the above changes. */
  once(event: 'progress', listener: () => void): unknown;
  off(event: 'progress', listener: () => void): unknown;
}

/** Reads a file that another writer is still appending to, waiting for bytes as needed. */
export class GrowingFileReader extends Readable implements RecyclingReadable {
  private position: number;
  private reading = false;
  private waiting = false;
  private released = false;
  private generation: number | undefined;
  /** Pooled read buffers (chunk-pool.ts): a buffer whose read outlives the reader is dropped, never pooled. */
  private readonly chunks = new LentChunks();

  constructor(
    private readonly download: GrowingFile,
    private fd: number,
    start: number,
    private readonly end: number | undefined,
    private readonly onClose: () => void,
  ) {
    super({ highWaterMark: READ_CHUNK_BYTES });
    this.position = start;
    this.generation = download.generation;
  }

  recycle(chunk: Buffer): void {
    this.chunks.giveBack(chunk);
  }

  private readonly onProgress = (): void => {
    this.waiting = false;
    this.pump();
  };

  override _read(): void {
    this.pump();
  }

  private pump(): void {
    if (this.reading || this.waiting || this.released) return;
    const d = this.download;
    if (d.state === 'failed') {
      this.destroy(d.error ?? new Error('download failed'));
      return;
    }
    if (d.generation !== this.generation) {
      // Taken over: the same bytes are being written again into another file.
      let fd: number | undefined;
      try {
        if (d.path !== undefined) fd = openSync(d.path, 'r');
      } catch {
        // not created yet, or already renamed into the store: the next progress says
      }
      if (fd === undefined && d.state === 'done') {
        // The new download finished and left its temp file before this (slow) reader came back to it.
        this.destroy(new Error('the blob moved into the store while this reader was paused; ask again'));
        return;
      }
      if (fd === undefined) {
        this.waiting = true;
        d.once('progress', this.onProgress);
        return;
      }
      close(this.fd, () => undefined);
      this.fd = fd;
      this.generation = d.generation;
    }
    const total = d.totalSize;
    const limit = this.end !== undefined ? this.end + 1 : total;
    if (limit !== undefined && this.position >= limit) {
      this.push(null);
      return;
    }
    // The last byte of the blob is held back until the digest is verified: a client must
    // never receive a complete body whose content turns out wrong (it would keep it).
    const available = d.state === 'done' || d.verified ? d.written : Math.min(d.written, (total ?? Infinity) - 1);
    if (this.position >= available) {
      if (d.state === 'done' || (d.verified && total === undefined)) {
        this.push(null);
        return;
      }
      this.waiting = true;
      d.once('progress', this.onProgress);
      return;
    }
    const want = Math.min(READ_CHUNK_BYTES, available - this.position, limit !== undefined ? limit - this.position : Infinity);
    const buffer = this.chunks.take();
    this.reading = true;
    read(this.fd, buffer, 0, want, this.position, (err, bytesRead) => {
      this.reading = false;
      if (this.released) return;
      if (err) {
        this.destroy(err);
        return;
      }
      if (bytesRead === 0) {
        // Should not happen (we only read below `written`); wait for more rather than spin.
        this.waiting = true;
        d.once('progress', this.onProgress);
        return;
      }
      this.position += bytesRead;
      if (this.push(this.chunks.lend(buffer, buffer.subarray(0, bytesRead)))) this.pump();
    });
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.released = true;
    this.download.off('progress', this.onProgress);
    close(this.fd, () => undefined);
    this.onClose();
    callback(err);
  }
}
