// A blob download another worker of the same mirror runs (`workers: N`): this worker's
// clients read its temp file as it grows, each at its own pace, exactly as they would read a
// download of their own (growing-file-reader.ts): bytes only as the owner reports them written
// and hashed, the last byte only once it reports the digest verified, and a cut connection if
// it reports a failure. The owner's news arrives over the primary (workers/broker.ts).
//
// When the owner dies mid-way the primary says so ('orphaned'): the download is claimed anew
// and either this worker takes it over or follows whichever worker does. The readers stay:
// the bytes start again in another temp file, and each reader reopens it and waits there
// until the new download passes its position (same digest, same bytes).

import { EventEmitter } from 'node:events';
import { openSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { RegistryError, type ErrorCode } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import type { DownloadNews, SharedError } from './sibling-workers.js';
import { Later, type BlobDownload } from '../cache/downloads.js';
import { GrowingFileReader, type GrowingFile } from '../cache/growing-file-reader.js';

/** The owner had no room for the blob: the asking worker claims the download anew (and may pass it through). */
export class OwnerHadNoRoom extends Error {}

export class RemoteDownload extends EventEmitter implements GrowingFile {
  state: 'running' | 'committing' | 'done' | 'failed' = 'running';
  verified = false;
  written = 0;
  totalSize: number | undefined;
  error: Error | undefined;
  path: string | undefined;
  /** Bumped when the bytes move to another temp file (a takeover). */
  generation = 0;
  readonly ready: Promise<void>;
  readonly finished: Promise<void>;
  private readers = 0;
  private everRead = false;
  private readonly readyLater = new Later();
  private readonly finishedLater = new Later();
  private mirrored: BlobDownload | undefined;

  constructor(
    readonly digest: Digest,
    /** The upstream and repository the download runs for (the access check of a client of another). */
    public repository: string,
    private readonly hooks: {
      /** No client of this worker reads it any more (after one did): stop following. */
      idle(download: RemoteDownload): void;
      /** The owner died: claim the download anew (take it over, or follow the new owner). */
      orphaned(download: RemoteDownload): void;
    },
  ) {
    super();
    this.setMaxListeners(0);
    this.ready = this.readyLater.promise;
    this.finished = this.finishedLater.promise;
  }

  /** The owner's news (or, after a takeover by this worker, its own download's state). */
  apply(news: DownloadNews): void {
    if (this.state === 'done' || this.state === 'failed') return;
    if (news.state === 'orphaned') {
      this.restart();
      this.hooks.orphaned(this);
      return;
    }
    if (news.path !== undefined && news.path !== this.path) this.path = news.path;
    if (news.totalSize !== undefined) this.totalSize = news.totalSize;
    // The contiguous prefix only grows within one temp file.
    if (news.written > this.written) this.written = news.written;
    if (news.verified) this.verified = true;
    if (news.state === 'failed') {
      const error = news.error?.noRoom ? new OwnerHadNoRoom('the worker downloading the blob had no disk room for it') : toError(news.error);
      this.fail(error);
      return;
    }
    if (this.totalSize !== undefined && this.path !== undefined) this.readyLater.resolve();
    if (news.state === 'done') {
      this.state = 'done';
      this.totalSize = this.written;
      this.readyLater.resolve();
      this.finishedLater.resolve();
    } else this.state = news.state;
    this.emit('progress');
  }

  /** This worker took the download over: follow its own download from now on. */
  mirror(download: BlobDownload): void {
    this.mirrored = download;
    const copy = () => {
      if (this.mirrored !== download) return;
      if (download.state === 'failed') {
        this.fail(download.error ?? new Error('download failed'));
        return;
      }
      this.apply({ state: download.state, path: download.tempPath, totalSize: download.totalSize, written: download.written, verified: download.verified });
    };
    download.on('progress', copy);
    download.ready.then(copy, copy);
    download.finished.then(copy, copy);
  }

  fail(error: Error): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.state = 'failed';
    this.error = error;
    this.readyLater.reject(error);
    this.finishedLater.reject(error);
    this.emit('progress');
  }

  /**
   * As BlobDownload.createReader: undefined when there is no temp file to read now, and the
   * caller waits for `finished` (then reads the store, or fails with the download). The news
   * here can lag the owner by an IPC hop: the file may already be in the store (the owner
   * committed), gone (the owner failed) or not yet known (a takeover starting over), all while
   * this worker still believes it running.
   */
  createReader(start: number, end: number | undefined): Readable | undefined {
    if (this.state !== 'running' && this.state !== 'committing') throw new Error('download is not running');
    if (!this.path) return undefined;
    let fd: number;
    try {
      fd = openSync(this.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    this.readers++;
    this.everRead = true;
    return new GrowingFileReader(this, fd, start, end, () => {
      this.readers--;
      if (this.readers === 0) this.hooks.idle(this);
    });
  }

  /** No client reads it and one did: nothing keeps it followed. */
  get unread(): boolean {
    return this.everRead && this.readers === 0;
  }

  /** The bytes start over in a temp file still to come (the size is the digest's, it stays). */
  private restart(): void {
    this.mirrored = undefined;
    this.generation++;
    this.path = undefined;
    this.written = 0;
    this.verified = false;
    this.state = 'running';
    this.emit('progress');
  }
}

/** A failure as the owner reported it: a registry error keeps its code, status and headers. */
export function toError(shared: SharedError | undefined): Error {
  if (!shared) return new Error('the worker downloading the blob failed');
  if (shared.code) return new RegistryError(shared.code as ErrorCode, shared.message, { status: shared.status, detail: shared.detail, headers: shared.headers });
  return new Error(shared.message);
}

/** A failure made fit to cross to another process. */
export function toShared(error: Error | undefined, noRoom: boolean): SharedError {
  if (error instanceof RegistryError) return { code: error.code, message: error.message, status: error.status, detail: error.detail, headers: error.headers };
  return { message: error?.message ?? 'download failed', noRoom: noRoom || undefined };
}
