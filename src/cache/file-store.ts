// The content store on the local filesystem (the embedded default); the layout is drawn
// at the top of blob-store.ts.

import { mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Digest } from '../oci/reference.js';
import { ContentTooLarge, type BlobStore, type StoredObject } from './blob-store.js';
import { StoredFileReader } from './stored-file-reader.js';
import type { ScratchSpace } from './scratch.js';

export class FileBlobStore implements BlobStore {
  readonly kind = 'filesystem' as const;
  readonly blobsDir: string;

  constructor(
    root: string,
    private readonly scratch: ScratchSpace,
  ) {
    this.blobsDir = join(root, 'blobs');
  }

  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true });
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

  /** Stream `[start, end]` (inclusive) of a stored object, in pooled chunks (its consumer may recycle them). */
  createReadStream(digest: Digest, start?: number, end?: number): StoredFileReader {
    return new StoredFileReader(this.pathOf(digest), start, end);
  }

  async read(digest: Digest, maxBytes = Infinity): Promise<Buffer | undefined> {
    let handle;
    try {
      handle = await open(this.pathOf(digest), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const { size } = await handle.stat();
      if (size > maxBytes) throw new ContentTooLarge(digest.value, size, maxBytes);
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  /**
   * Move a verified, fsynced temp file into place. Atomic: readers see all or nothing.
   * Durable: the directory that received the name is synced (and so are the ones that
   * received newly created directories), or a power loss could undo a commit that the
   * index already records.
   */
  async commit(tempPath: string, digest: Digest): Promise<void> {
    const target = this.pathOf(digest);
    const dir = dirname(target);
    const created = await mkdir(dir, { recursive: true });
    await rename(tempPath, target);
    await syncDirectory(dir);
    // mkdir made `created` and everything below it down to `dir`: each one's entry is in its parent.
    if (created !== undefined) {
      for (let d = dirname(dir); ; d = dirname(d)) {
        await syncDirectory(d);
        if (d === dirname(created) || d === dirname(d)) break;
      }
    }
  }

  /** Store small verified content (manifests) in one go. */
  async write(digest: Digest, bytes: Uint8Array): Promise<void> {
    const temp = await this.scratch.createTemp();
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

/** fsync a directory: the names created, renamed or removed in it are durable. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
