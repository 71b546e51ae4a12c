// Keeping the index true to the store. The store is the truth for what content exists; the
// index can be lost or disagree:
//   - a damaged index file (not a database, or failing SQLite's check) is set aside for
//     inspection and a new index is rebuilt from the store in the background: blobs and
//     manifests come back (manifests recognised by their content), tags and links do not (they
//     are refetched and confirmed with the upstream as clients ask again);
//   - after an unclean end, the digests the journals of gone processes list (commit-journal.ts)
//     are reconciled: a file without a row is adopted, a row without a file is dropped. Only
//     those digests: start-up work is proportional to what changed, not to the cache.
// Adopted files are not hashed again: only verified, synced content is ever renamed into the
// store (manifests are read to be recognised and are checked on the way). `mirror verify`
// re-hashes everything.

import { referrerFactsOf } from '../oci/referrers.js';
import { existsSync, statSync } from 'node:fs';
import { rename, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { digestOf } from '../oci/digest.js';
import { childDescriptors, MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest } from '../oci/manifest.js';
import { parseDigest, type Digest } from '../oci/reference.js';
import type { BlobStore } from './blob-store.js';
import { CommitJournal } from './commit-journal.js';
import { CacheIndex } from './index.js';

/** SQLite says the file is not (or no longer) a sound database. */
function isDamage(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT'));
}

class IndexDamaged extends Error {
  readonly code = 'SQLITE_CORRUPT';
}

export interface RecoveredIndex {
  index: CacheIndex;
  journal: CommitJournal;
  /** The index is new (or its rebuild was interrupted): the store must be walked (startIndexRebuild). */
  needsRebuild: boolean;
}

/**
 * Open the index of the storage at `storagePath`, setting a damaged one aside, and reconcile
 * what the journals of gone processes list. Then start this process's journal.
 */
export async function openIndex(
  storagePath: string,
  store: BlobStore,
  deps: { logger: Logger; now: () => number },
): Promise<RecoveredIndex> {
  const { logger } = deps;
  const path = join(storagePath, 'index.db');
  const rebuilding = `${path}.rebuilding`;
  const left = await CommitJournal.leftBehind(storagePath);
  // A file that never held an index: a rebuild adopts what the store has (nothing, on a new
  // cache). On S3 the bucket is shared: a new replica learns of its content as it is asked for.
  const fresh = !existsSync(path) || statSync(path).size === 0;
  if (fresh && store.kind === 'filesystem') await writeFile(rebuilding, '');
  let index: CacheIndex;
  try {
    index = new CacheIndex(path);
    // SQLite's own check, only after an unclean end (a journal was left): it reads the whole file.
    const problems = left.length > 0 ? index.quickCheck() : undefined;
    if (problems) {
      index.db.close();
      throw new IndexDamaged(`integrity check failed: ${problems}`);
    }
  } catch (err) {
    if (!isDamage(err)) throw err;
    const aside = `${path}.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    await rename(path, aside);
    // Its write-ahead log belongs with it; the shared-memory file is rebuilt by SQLite.
    await rename(`${path}-wal`, `${aside}-wal`).catch(() => undefined);
    await rm(`${path}-shm`, { force: true });
    await writeFile(rebuilding, '');
    logger.error(
      { index: path, setAside: aside, err: (err as Error).message },
      `the index file is damaged: set aside as ${aside} for inspection; a new index is being rebuilt from the stored content ` +
        '(blobs and manifests come back; tags cannot be recovered from content and will be refetched from the upstreams)',
    );
    index = new CacheIndex(path);
  }
  const needsRebuild = existsSync(rebuilding);
  if (!needsRebuild && left.length > 0) {
    const digests = new Set(left.flatMap((j) => j.digests));
    const started = Date.now();
    let adopted = 0;
    let dropped = 0;
    let failed = 0;
    for (const digest of digests) {
      try {
        const change = await reconcileDigest(store, index, digest, deps.now());
        if (change.adopted !== undefined) adopted++;
        if (change.dropped) dropped++;
      } catch (err) {
        failed++;
        logger.error({ digest, err: (err as Error).message }, 'could not reconcile the index with the store for this digest; will try again at the next start');
      }
    }
    logger.info({ journals: left.length, digests: digests.size, adopted, dropped, failed, ms: Date.now() - started }, 'reconciled the index with what an unfinished run committed');
    if (failed === 0) for (const j of left) await unlink(j.file).catch(() => undefined);
  } else if (needsRebuild) {
    // The rebuild covers whatever they list.
    for (const j of left) await unlink(j.file).catch(() => undefined);
  }
  return { index, journal: await CommitJournal.create(storagePath), needsRebuild };
}

/**
 * Make the index agree with the store about one digest: a stored object without a row is
 * adopted (its size returned), a row without a stored object is dropped.
 */
export async function reconcileDigest(
  store: BlobStore,
  index: CacheIndex,
  digestText: string,
  now: number,
  unchanged: () => boolean = () => true,
): Promise<{ adopted?: number; dropped?: boolean }> {
  let digest: Digest;
  try {
    digest = parseDigest(digestText);
  } catch {
    return {}; // not a line we wrote
  }
  const stored = await store.stat(digest);
  // A commit of the digest started while it was looked at: what was seen may be stale.
  if (!unchanged()) return {};
  if (!stored) {
    if (!index.isIndexed(digest.value)) return {};
    index.forget(digest.value);
    return { dropped: true };
  }
  if (index.isIndexed(digest.value)) return {};
  return (await adoptStored(store, index, digest, stored.size, now)) ? { adopted: stored.size } : {};
}

/**
 * Index a stored object the index does not know: a manifest (its media type and references,
 * with the sizes they declare) when its content is one, else a blob. A stored manifest whose
 * bytes do not match its name is removed. Returns false when nothing was indexed.
 */
export async function adoptStored(store: BlobStore, index: CacheIndex, digest: Digest, size: number, now: number): Promise<boolean> {
  if (size > 0 && size <= MAX_MANIFEST_BYTES && (await firstByte(store, digest)) === '{') {
    const bytes = await store.read(digest, MAX_MANIFEST_BYTES);
    if (!bytes) return false;
    const manifest = manifestIn(bytes);
    if (manifest) {
      if (digestOf(bytes, digest.algorithm) !== digest.value) {
        await store.delete(digest);
        return false;
      }
      index.putManifest({ digest: digest.value, mediaType: manifest.mediaType, size: bytes.length, children: childDescriptors(manifest), referrer: referrerFactsOf(manifest) }, undefined, now);
      return true;
    }
  }
  index.putBlob(digest.value, size, now);
  return true;
}

/** Manifests (not image configs, which are JSON too) say their schemaVersion. */
function manifestIn(bytes: Buffer): ParsedManifest | undefined {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: unknown };
    if (!doc || typeof doc !== 'object' || (doc.schemaVersion !== 2 && doc.schemaVersion !== 1)) return undefined;
    return parseManifest(bytes);
  } catch {
    return undefined;
  }
}

async function firstByte(store: BlobStore, digest: Digest): Promise<string | undefined> {
  for await (const chunk of store.createReadStream(digest, 0, 0) as AsyncIterable<Buffer>) return chunk.subarray(0, 1).toString('latin1');
  return undefined;
}

export interface IndexRebuild {
  done: Promise<void>;
  /** Stop walking (shutdown); the next start walks again. */
  abort(): void;
}

/**
 * Walk the store and index what the index does not hold, in the background: content is
 * served from the store meanwhile. The marker beside the index is removed once done.
 */
export function startIndexRebuild(
  storagePath: string,
  store: BlobStore,
  index: CacheIndex,
  deps: { logger: Logger; now: () => number; onAdopted(bytes: number): void },
): IndexRebuild {
  let aborted = false;
  const run = async () => {
    const started = Date.now();
    let objects = 0;
    let adopted = 0;
    let bytes = 0;
    for await (const object of store.list()) {
      if (aborted) return;
      let digest: Digest;
      try {
        digest = parseDigest(object.digest);
      } catch {
        continue; // not ours
      }
      objects++;
      if (index.isIndexed(digest.value)) continue;
      if (await adoptStored(store, index, digest, object.size, deps.now())) {
        adopted++;
        bytes += object.size;
        deps.onAdopted(object.size);
      }
    }
    if (aborted) return;
    await unlink(`${join(storagePath, 'index.db')}.rebuilding`).catch(() => undefined);
    // A new, empty cache has nothing to say.
    if (objects > 0) deps.logger.info({ objects, adopted, bytes, ms: Date.now() - started }, 'index rebuilt from the store');
  };
  const done = run().catch((err: unknown) => {
    deps.logger.error({ err: (err as Error).message }, 'rebuilding the index from the store failed; the next start tries again');
  });
  return {
    done,
    abort: () => {
      aborted = true;
    },
  };
}
