// Stored manifests by digest: their bytes in the content store, their media type and
// references in the index, and the hot ones in memory (bounded by bytes), so that the
// manifest hit path never touches the disk.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { digestOf } from '../oci/digest.js';
import { childDescriptors, MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest } from '../oci/manifest.js';
import { parseDigest, type Digest } from '../oci/reference.js';
import { referrerFactsOf } from '../oci/referrers.js';
import { ContentTooLarge, type BlobStore } from './blob-store.js';
import type { CacheIndex } from './index.js';

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export class ManifestCache {
  private readonly hot = new LRUCache<string, StoredManifest>({
    maxSize: 64 * 1024 * 1024,
    sizeCalculation: (m) => m.bytes.length + 200,
  });

  constructor(
    private readonly store: BlobStore,
    private readonly index: CacheIndex,
    private readonly deps: { clock: Clock; logger: Logger; onAdded(bytes: number): void },
  ) {}

  async get(digest: Digest): Promise<StoredManifest | undefined> {
    const cached = this.hot.get(digest.value);
    if (cached) return cached;
    const row = this.index.getManifest(digest.value);
    if (!row) return this.store.kind === 's3' ? this.adoptShared(digest) : undefined;
    // A manifest is at most MAX_MANIFEST_BYTES: anything bigger is not one (a damaged store).
    const bytes = await this.store.read(digest, MAX_MANIFEST_BYTES).catch((err: unknown) => {
      if (err instanceof ContentTooLarge) return undefined;
      throw err;
    });
    if (!bytes) {
      // Index and disk disagree: the disk wins (an index that cannot take the change now is told later).
      try {
        this.index.deleteManifest(digest.value);
      } catch (err) {
        this.deps.logger.error({ digest: digest.value, err: (err as Error).message }, 'could not drop the row of a vanished manifest from the index');
      }
      return undefined;
    }
    const stored = { digest: row.digest, mediaType: row.mediaType, bytes };
    this.hot.set(digest.value, stored);
    return stored;
  }

  /**
   * Store a verified manifest and index it, linked to the repository it came from. Returns
   * false when the disk or the index refused it (logged): the caller serves it uncached.
   */
  async put(manifest: StoredManifest, parsed: ParsedManifest, link: { upstream: string; repo: string }): Promise<boolean> {
    const { digest, mediaType, bytes } = manifest;
    try {
      await this.store.write(parseDigest(digest), bytes);
    } catch (err) {
      // Disk full or failing: the client still gets its verified manifest, uncached.
      this.deps.logger.error({ digest, err: (err as Error).message }, 'could not store manifest; serving it uncached');
      return false;
    }
    try {
      this.index.putManifest({ digest, mediaType, size: bytes.length, children: childDescriptors(parsed), referrer: referrerFactsOf(parsed) }, link, this.deps.clock.now());
    } catch (err) {
      this.deps.logger.error({ digest, err: (err as Error).message }, 'could not index manifest; serving it uncached');
      return false;
    }
    this.deps.onAdded(bytes.length);
    this.hot.set(digest, { digest, mediaType, bytes });
    return true;
  }

  /** Drop the in-memory copy of content that left the store (evicted, or found corrupt). */
  forget(digest: string): void {
    this.hot.delete(digest);
  }

  /**
   * Replicas share the bucket but not their indexes: a manifest another replica stored is
   * taken from the store (verified again) before asking the upstream. Which repositories may
   * see it is still decided by links (core/repository-access.ts).
   */
  private async adoptShared(digest: Digest): Promise<StoredManifest | undefined> {
    // Any digest can be asked for as a manifest (a layer's too): refused by its size, unread.
    const bytes = await this.store.read(digest, MAX_MANIFEST_BYTES).catch(() => undefined);
    if (!bytes || digestOf(bytes, digest.algorithm) !== digest.value) return undefined;
    let parsed;
    try {
      parsed = parseManifest(bytes);
    } catch {
      return undefined;
    }
    this.index.putManifest(
      { digest: digest.value, mediaType: parsed.mediaType, size: bytes.length, children: childDescriptors(parsed), referrer: referrerFactsOf(parsed) },
      undefined,
      this.deps.clock.now(),
    );
    const stored = { digest: digest.value, mediaType: parsed.mediaType, bytes };
    this.hot.set(digest.value, stored);
    return stored;
  }
}
