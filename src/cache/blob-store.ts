// Where verified content lives, keyed by digest: blobs and manifests alike.
//
//   <storage.path>/
//     blobs/sha256/ab/ab12…ef        verified content only, named by its digest (file-store.ts)
//     tmp/<pid>-<time>-<random>      downloads in progress, swept at start-up (scratch.ts)
//     journal/<pid>-<time>-<random>  digests being committed, per process (commit-journal.ts)
//     index.db                       the SQLite index (index.ts)
//     index.db.damaged-<time>        a damaged index, set aside for inspection (index-recovery.ts)
//     index.db.rebuilding            present while the index is rebuilt from the store
//
// With the S3 driver (s3-store.ts) blobs/ lives in a bucket shared by replicas, under the
// same content-addressed keys; tmp/ and index.db stay on each replica's own disk. Beside
// blobs/, the replicas coordinate eviction through a few small objects under _mirror/
// (shared-eviction.ts): the eviction lease and what each replica needs kept.
// Only verified bytes ever enter the store: content is written to a scratch temp file,
// hashed while it streams, fsynced, and committed (an atomic rename, or an upload).

import type { Readable } from 'node:stream';
import type { Digest } from '../oci/reference.js';

export interface StoredObject {
  digest: string;
  size: number;
  /** When it was stored (listings of a bucket say; ms since the epoch). */
  modifiedAt?: number;
}

/** A conditional write found the object not as expected (it exists, or changed since it was read). */
export class PreconditionFailed extends Error {
  constructor(name: string) {
    super(`precondition failed writing ${name}`);
    this.name = 'PreconditionFailed';
  }
}

/**
 * The small objects that replicas sharing a bucket coordinate through (`<prefix>_mirror/<name>`),
 * outside the content-addressed keys.
 */
export interface ControlObjects {
  /** The object and its ETag; refused when bigger than `maxBytes`. */
  get(name: string, maxBytes: number): Promise<{ body: Buffer; etag: string } | undefined>;
  /**
   * Write it: only if absent (`ifAbsent`), only if still at `ifEtag`, or unconditionally.
   * Throws PreconditionFailed when the condition does not hold. Returns the new ETag.
   */
  put(name: string, body: Buffer, condition?: { ifAbsent: true } | { ifEtag: string }): Promise<string>;
  delete(name: string): Promise<void>;
  /** The names under `prefix`, with when each was last written. */
  list(prefix: string): Promise<{ name: string; modifiedAt: number }[]>;
}

export interface BlobStore {
  readonly kind: 'filesystem' | 's3';
  init(): Promise<void>;
  stat(digest: Digest): Promise<StoredObject | undefined>;
  /** Bytes [start, end] (inclusive). */
  createReadStream(digest: Digest, start?: number, end?: number): Readable;
  /**
   * The whole object in memory: only for small content (manifests). Bigger than `maxBytes`
   * → ContentTooLarge, decided by the object's size before any of it is read.
   */
  read(digest: Digest, maxBytes?: number): Promise<Buffer | undefined>;
  /** Move a verified, fsynced scratch file into the store (the temp file is gone afterwards). */
  commit(tempPath: string, digest: Digest): Promise<void>;
  /** Store small verified content (manifests) in one go. */
  write(digest: Digest, bytes: Uint8Array): Promise<void>;
  delete(digest: Digest): Promise<boolean>;
  list(): AsyncGenerator<StoredObject>;
  /** A short-lived URL a client may fetch the object from directly (S3 with redirects on). */
  directUrl?(digest: Digest): Promise<string | undefined>;
  /** A store shared by replicas: where they coordinate (S3). */
  readonly control?: ControlObjects;
}

/** Read chunk for serving cached blobs: the hit path's throughput depends on it (DESIGN 3b). */
export const READ_CHUNK_BYTES = 1024 * 1024;

/** A stored object bigger than its reader's limit (a layer asked for as a manifest): refused unread. */
export class ContentTooLarge extends Error {
  constructor(
    readonly digest: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(`${digest} is ${size} bytes, larger than the ${limit} bytes it may have here`);
  }
}
