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
// same content-addressed keys; tmp/ and index.db stay on each replica's own disk.
// Only verified bytes ever enter the store: content is written to a scratch temp file,
// hashed while it streams, fsynced, and committed (an atomic rename, or an upload).

import type { Readable } from 'node:stream';
import type { Digest } from '../oci/reference.js';

export interface StoredObject {
  digest: string;
  size: number;
}

export interface BlobStore {
  readonly kind: 'filesystem' | 's3';
  init(): Promise<void>;
  stat(digest: Digest): Promise<StoredObject | undefined>;
  /** Bytes [start, end] (inclusive). */
  createReadStream(digest: Digest, start?: number, end?: number): Readable;
  read(digest: Digest): Promise<Buffer | undefined>;
  /** Move a verified, fsynced scratch file into the store (the temp file is gone afterwards). */
  commit(tempPath: string, digest: Digest): Promise<void>;
  /** Store small verified content (manifests) in one go. */
  write(digest: Digest, bytes: Uint8Array): Promise<void>;
  delete(digest: Digest): Promise<boolean>;
  list(): AsyncGenerator<StoredObject>;
  /** A short-lived URL a client may fetch the object from directly (S3 with redirects on). */
  directUrl?(digest: Digest): Promise<string | undefined>;
}

/** Read chunk for serving cached blobs: the hit path's throughput depends on it (DESIGN 3b). */
export const READ_CHUNK_BYTES = 1024 * 1024;
