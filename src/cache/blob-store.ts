// Content-addressed storage for blobs and manifests on the local filesystem.
//
//   <root>/
//     blobs/sha256/ab/ab12…ef        verified content only, named by its digest
//     tmp/<random>                   downloads in progress (swept at start-up)
//     index.db                       the SQLite index (see index.ts)
//
// Only verified bytes ever sit under blobs/: content is written to tmp/, hashed while
// it streams, fsynced, and moved into place with an atomic rename.

import { randomBytes } from 'node:crypto';
import { createReadStream, constants as fsConstants, type ReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, statfs, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/reference.js';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface StoredObject {
  digest: string;
  size: number;
}

export interface TempFile {
  path: string;
  handle: FileHandle;
}

/**
 * Where verified content lives: the local filesystem (the embedded default) or S3-compatible
 * object storage shared by replicas (s3-store.ts). Downloads always land in a local temp
 * file first (scratch), are verified there, and only then are committed to the store.
 */
export interface BlobStore {
  readonly kind: 'filesystem' | 's3';
  init(options?: { sweep?: boolean }): Promise<{ sweptTempFiles: number }>;
  stat(digest: Digest): Promise<StoredObject | undefined>;
  /** Bytes [start, end] (inclusive). */
  createReadStream(digest: Digest, start?: number, end?: number): Readable;
  read(digest: Digest): Promise<Buffer | undefined>;
  /** Room on the local scratch disk for a download of this size? */
  hasSpaceFor(bytes: number): Promise<boolean>;
  createTemp(): Promise<TempFile>;
  /** Move a verified, fsynced temp file into the store (the temp file is gone afterwards). */
  commit(tempPath: string, digest: Digest): Promise<void>;
  write(digest: Digest, bytes: Uint8Array): Promise<void>;
  delete(digest: Digest): Promise<boolean>;
  list(): AsyncGenerator<StoredObject>;
  /** A short-lived URL a client may fetch the object from directly (S3 with redirects on). */
  directUrl?(digest: Digest): Promise<string | undefined>;
}

/** Read chunk for serving cached blobs: the hit path's throughput depends on it (DESIGN 3a). */
export const READ_CHUNK_BYTES = 1024 * 1024;

export class FileBlobStore implements BlobStore {
  readonly kind = 'filesystem' as const;
  readonly root: string;
  readonly blobsDir: string;
  readonly tmpDir: string;

  constructor(root: string) {
    this.root = root;
    this.blobsDir = join(root, 'blobs');
    this.tmpDir = join(root, 'tmp');
  }

  /** Create the layout and remove leftovers of downloads that never finished. */
  async init({ sweep = true }: { sweep?: boolean } = {}): Promise<{ sweptTempFiles: number }> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
    let swept = 0;
    // Maintenance commands run beside a live server: only the server sweeps.
    if (!sweep) return { sweptTempFiles: 0 };
    for (const name of await readdir(this.tmpDir)) {
      // Temp files are named after their process: a live one's (a prewarm or a second server on
      // the same storage) are still being written.
      const pid = Number(name.split('-')[0]);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) continue;
      await rm(join(this.tmpDir, name), { force: true, recursive: true });
      swept++;
    }
    return { sweptTempFiles: swept };
  }

  pathOf(digest: Digest): string {
    return join(this.blobsDir, digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  async stat(digest: Digest): Promise<StoredObject | undefined> {
    try {
      const s = await stat(this.pathOf(digest));
      return s.isFile() ? { digest: digest.value, size: s.size } : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Stream `[start, end]` (inclusive) of a stored object. */
  createReadStream(digest: Digest, start?: number, end?: number): ReadStream {
    return createReadStream(this.pathOf(digest), { start, end, highWaterMark: READ_CHUNK_BYTES });
  }

  async read(digest: Digest): Promise<Buffer | undefined> {
    try {
      return await readFile(this.pathOf(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Is there room for `bytes` more (plus a margin) on the cache's filesystem? */
  async hasSpaceFor(bytes: number): Promise<boolean> {
    try {
      const fs = await statfs(this.tmpDir);
      const free = fs.bavail * fs.bsize;
      const margin = Math.min(64 * 1024 * 1024, fs.blocks * fs.bsize * 0.01);
      return free - margin >= bytes;
    } catch {
      return true; // cannot tell: try, and let a write error decide
    }
  }

  async createTemp(): Promise<TempFile> {
    const path = join(this.tmpDir, `${process.pid}-${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`);
    // Exclusive: two writers never share a temp file.
    const handle = await open(path, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_RDWR, 0o644);
    return { path, handle };
  }

  /** Move a verified, fsynced temp file into place. Atomic: readers see all or nothing. */
  async commit(tempPath: string, digest: Digest): Promise<void> {
    const target = this.pathOf(digest);
    await mkdir(join(this.blobsDir, digest.algorithm, digest.hex.slice(0, 2)), { recursive: true });
    await rename(tempPath, target);
  }

  /** Store small verified content (manifests) in one go. */
  async write(digest: Digest, bytes: Uint8Array): Promise<void> {
    const temp = await this.createTemp();
    try {
      await temp.handle.writeFile(bytes);
      await temp.handle.datasync();
    } finally {
      await temp.handle.close();
    }
    try {
      await this.commit(temp.path, digest);
    } catch (err) {
      await unlink(temp.path).catch(() => undefined);
      throw err;
    }
  }

  async delete(digest: Digest): Promise<boolean> {
    try {
      await unlink(this.pathOf(digest));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Every stored object, for verify and gc. */
  async *list(): AsyncGenerator<StoredObject> {
    let algorithms: string[];
    try {
      algorithms = await readdir(this.blobsDir);
    } catch {
      return;
    }
    for (const algorithm of algorithms) {
      for (const prefix of await readdir(join(this.blobsDir, algorithm))) {
        for (const hex of await readdir(join(this.blobsDir, algorithm, prefix))) {
          const s = await stat(join(this.blobsDir, algorithm, prefix, hex)).catch(() => undefined);
          if (s?.isFile()) yield { digest: `${algorithm}:${hex}`, size: s.size };
        }
      }
    }
  }
}

/** The configured store. The S3 driver (and its SDK, ~40 MiB of RSS) loads only when used. */
export async function createBlobStore(config: {
  storage: { path: string; driver: 'filesystem' | 's3'; s3: import('./s3-store.js').S3StoreOptions | undefined };
}): Promise<BlobStore> {
  const s3 = config.storage.s3;
  if (config.storage.driver === 's3' && s3) {
    const { S3BlobStore } = await import('./s3-store.js');
    return new S3BlobStore(config.storage.path, s3);
  }
  return new FileBlobStore(config.storage.path);
}
