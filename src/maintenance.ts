// gc, verify, ls and stats: work on the cache's storage directly (SQLite in WAL mode and
// content-addressed files make this safe while a server runs on the same storage).

import { join } from 'node:path';
import pino from 'pino';
import type { BlobStore } from './cache/blob-store.js';
import { openStorage } from './cache/open-store.js';
import { Evictor } from './cache/eviction.js';
import { CacheIndex } from './cache/index.js';
import { adoptStored } from './cache/index-recovery.js';
import { sharedBucketEviction } from './cache/shared-eviction.js';
import type { Config } from './config.js';
import { DigestVerifier } from './oci/digest.js';
import { parseDigest } from './oci/reference.js';

export interface Cache {
  store: BlobStore;
  index: CacheIndex;
  close(): void;
}

export async function openCache(config: Config): Promise<Cache> {
  // Maintenance commands run beside a live server: they never sweep its downloads.
  const { store } = await openStorage(config, { sweep: false });
  const index = new CacheIndex(join(config.storage.path, 'index.db'));
  return { store, index, close: () => index.close() };
}

export interface VerifyReport {
  checked: number;
  bytes: number;
  corrupt: string[];
  missing: string[];
  adopted: string[];
}

/** Re-hash every stored object; remove corrupt ones and repair the index. */
export async function verifyCache(cache: Cache, onProgress?: (digest: string) => void): Promise<VerifyReport> {
  const report: VerifyReport = { checked: 0, bytes: 0, corrupt: [], missing: [], adopted: [] };
  const seen = new Set<string>();
  for await (const object of cache.store.list()) {
    let digest;
    try {
      digest = parseDigest(object.digest);
    } catch {
      continue; // not ours
    }
    onProgress?.(object.digest);
    const verifier = new DigestVerifier(digest);
    for await (const chunk of cache.store.createReadStream(digest) as AsyncIterable<Buffer>) {
      verifier.update(chunk);
    }
    report.checked++;
    report.bytes += object.size;
    if (verifier.finish() !== digest.value) {
      await cache.store.delete(digest);
      cache.index.forget(digest.value);
      report.corrupt.push(digest.value);
      continue;
    }
    seen.add(digest.value);
    if (!cache.index.isIndexed(digest.value)) {
      // Verified content the index lost track of (a crash between rename and insert): keep it,
      // a manifest as a manifest.
      if (await adoptStored(cache.store, cache.index, digest, object.size, Date.now())) report.adopted.push(digest.value);
    }
  }
  for (const entry of cache.index.allIndexedDigests()) {
    if (!seen.has(entry.digest)) {
      cache.index.forget(entry.digest);
      report.missing.push(entry.digest);
    }
  }
  return report;
}

export async function gcCache(cache: Cache, config: Config, targetBytes?: number) {
  const logger = pino({ level: 'silent' });
  // Index rows whose files are gone first: they would count as usage.
  let missing = 0;
  for (const entry of cache.index.allIndexedDigests()) {
    if (!(await cache.store.stat(parseDigest(entry.digest)))) {
      cache.index.forget(entry.digest);
      missing++;
    }
  }
  // On a shared bucket: the whole bucket, keeping what every replica published it needs.
  const shared = sharedBucketEviction('gc', config, { store: cache.store, index: cache.index, logger, now: () => Date.now(), inUse: () => [] });
  const evictor = new Evictor(cache.store, cache.index, config.storage, logger, () => Date.now(), undefined, undefined, shared);
  const result = await evictor.evict(targetBytes);
  return { ...result, missingRemoved: missing };
}

export function statsOf(cache: Cache) {
  const usage = cache.index.usage();
  const counters = cache.index.counters();
  const hits = (counters['requests.hit'] ?? 0) + (counters['requests.revalidated'] ?? 0) + (counters['requests.stale'] ?? 0);
  const misses = (counters['requests.miss'] ?? 0) + (counters['requests.coalesced'] ?? 0);
  return {
    objects: usage.blobs + usage.manifests,
    blobs: usage.blobs,
    manifests: usage.manifests,
    bytes: usage.bytes,
    requests: hits + misses,
    hitRatio: hits + misses > 0 ? hits / (hits + misses) : undefined,
    bytesFromCache: counters['bytes.cache'] ?? 0,
    bytesFromUpstream: counters['bytes.upstream'] ?? 0,
    topRepositories: cache.index.topRepositories(10),
  };
}
