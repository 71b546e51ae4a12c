// Size-bounded LRU eviction and gc. When usage passes the high watermark, the least
// recently used content is removed until usage is under the low watermark. Kept whatever
// their age: pinned images, fresh tags' manifests (and what they reference), content being
// served or downloaded. Evicted content is simply fetched again on the next miss.

import type { Logger } from 'pino';
import { parseDigest } from '../oci/reference.js';
import type { BlobStore } from './blob-store.js';
import type { CacheIndex } from './index.js';

export interface EvictionResult {
  evicted: number;
  freedBytes: number;
  usageBefore: number;
  usageAfter: number;
}

export interface EvictionOptions {
  maxSize: number;
  /** Fractions of maxSize. */
  highWatermark: number;
  lowWatermark: number;
}

export class Evictor {
  private running: Promise<EvictionResult> | undefined;
  /** Running total of indexed bytes, so the hot path never sums the index. */
  private usage: number;

  constructor(
    private readonly store: BlobStore,
    private readonly index: CacheIndex,
    private readonly options: EvictionOptions,
    private readonly logger: Logger,
    private readonly now: () => number,
    /** Content being served or downloaded right now. */
    private readonly isBusy: (digest: string) => boolean = () => false,
    /** Told about each evicted digest (to drop in-memory copies). */
    private readonly onEvicted: (digest: string, size: number) => void = () => undefined,
  ) {
    this.usage = index.usage().bytes;
  }

  get usageBytes(): number {
    return this.usage;
  }

  /** Note new content; start an eviction in the background when past the high watermark. */
  added(bytes: number): void {
    this.usage += bytes;
    const { maxSize, highWatermark } = this.options;
    if (maxSize > 0 && this.usage > maxSize * highWatermark && !this.running) {
      void this.evict().catch((err: unknown) => this.logger.error({ err }, 'eviction failed'));
    }
  }

  /** Evict down to the low watermark (or to `targetBytes`). One run at a time. */
  evict(targetBytes?: number): Promise<EvictionResult> {
    if (!this.running) {
      this.running = this.run(targetBytes).finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async run(targetBytes?: number): Promise<EvictionResult> {
    this.usage = this.index.usage().bytes;
    const before = this.usage;
    const target = targetBytes ?? (this.options.maxSize > 0 ? this.options.maxSize * this.options.lowWatermark : Infinity);
    let evicted = 0;
    let freed = 0;
    if (this.usage <= target) return { evicted, freedBytes: freed, usageBefore: before, usageAfter: this.usage };
    this.index.flushAccessTimes();
    const keep = this.index.protectedDigests(this.now());
    const victims: { digest: string; size: number }[] = [];
    let projected = this.usage;
    for (const entry of this.index.entriesByAccess()) {
      if (projected <= target) break;
      if (keep.has(entry.digest) || this.isBusy(entry.digest)) continue;
      victims.push(entry);
      projected -= entry.size;
    }
    for (const v of victims) {
      // The file first: a crash in between leaves a row without its file, which reads and the
      // next eviction drop; the other order would leave a file no row ever accounts for.
      await this.store.delete(parseDigest(v.digest)).catch(() => false);
      this.index.forget(v.digest);
      this.onEvicted(v.digest, v.size);
      evicted++;
      freed += v.size;
      this.usage -= v.size;
    }
    if (evicted > 0) this.logger.info({ evicted, freedBytes: freed, usageBytes: this.usage, targetBytes: Math.round(target) }, 'evicted least recently used content');
    return { evicted, freedBytes: freed, usageBefore: before, usageAfter: this.usage };
  }
}
