// Size-bounded LRU eviction and gc. When usage passes the high watermark, the least
// recently used content is removed until usage is under the low watermark. Kept whatever
// their age: pinned images, fresh tags' manifests (and what they reference), content being
// served or downloaded. Evicted content is simply fetched again on the next miss.
// What a run sees comes from its scope: this replica's own index (the default), or, on a
// bucket shared by replicas, the bucket and what every replica needs kept, for the one
// replica holding the eviction lease (shared-eviction.ts).

import type { Logger } from 'pino';
import { parseDigest } from '../oci/reference.js';
import type { BlobStore } from './blob-store.js';
import type { CacheIndex } from './index.js';

export interface EvictionResult {
  evicted: number;
  freedBytes: number;
  usageBefore: number;
  usageAfter: number;
  /** Set when this process may not evict now (another replica holds the lease). */
  skipped?: string;
}

export interface EvictionEntry {
  digest: string;
  size: number;
}

/** What one run of eviction sees. */
export interface EvictionView {
  /** Bytes in the cache now. */
  usage: number;
  /** Asked only when something must go: every entry, least recently used first, and what must stay whatever its age. */
  candidates(): Promise<{ entries: Iterable<EvictionEntry>; keep(digest: string): boolean }>;
}

/** Where eviction looks, and whether this process may evict at all. */
export interface EvictionScope {
  /** The view for one run, or undefined when eviction is left to another process. */
  view(): Promise<EvictionView | undefined>;
  /** Asked before each delete: may this process still delete (a lease can run out mid-run)? */
  mayDelete(): boolean;
}

/** This replica's own index: its content, access times, pins and fresh tags. */
class IndexScope implements EvictionScope {
  constructor(
    private readonly index: CacheIndex,
    private readonly now: () => number,
    private readonly isBusy: (digest: string) => boolean,
  ) {}

  async view(): Promise<EvictionView> {
    const { index } = this;
    return {
      usage: index.usage().bytes,
      candidates: async () => {
        index.flushAccessTimes();
        const keep = index.protectedDigests(this.now());
        return { entries: index.entriesByAccess(), keep: (digest) => keep.has(digest) || this.isBusy(digest) };
      },
    };
  }

  mayDelete(): boolean {
    return true;
  }
}

export interface EvictionOptions {
  maxSize: number;
  /** Fractions of maxSize. */
  highWatermark: number;
  lowWatermark: number;
}

export class Evictor {
  private running: Promise<EvictionResult> | undefined;
  /** Running total of indexed bytes (of the bucket, on a shared one), so the hot path never sums the index. */
  private usage: number;
  private readonly scope: EvictionScope;

  constructor(
    private readonly store: BlobStore,
    private readonly index: CacheIndex,
    private readonly options: EvictionOptions,
    private readonly logger: Logger,
    now: () => number,
    /** Content being served or downloaded right now. */
    isBusy: (digest: string) => boolean = () => false,
    /** Told about each evicted digest (to drop in-memory copies). */
    private readonly onEvicted: (digest: string, size: number) => void = () => undefined,
    /** Default: this replica's own index. */
    scope?: EvictionScope,
    /** Several processes on one index (workers): run only when no other is evicting (undefined: skipped). */
    private readonly exclusive: (work: () => Promise<EvictionResult>) => Promise<EvictionResult | undefined> = (work) => work(),
  ) {
    this.usage = index.usage().bytes;
    this.scope = scope ?? new IndexScope(index, now, isBusy);
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
    return this.start(targetBytes, undefined);
  }

  /** Evict down to the low watermark if past the high one (the periodic check of a shared bucket). */
  check(): Promise<EvictionResult> {
    const { maxSize, highWatermark } = this.options;
    if (maxSize <= 0) return Promise.resolve({ evicted: 0, freedBytes: 0, usageBefore: this.usage, usageAfter: this.usage });
    return this.start(undefined, maxSize * highWatermark);
  }

  private start(targetBytes: number | undefined, aboveBytes: number | undefined): Promise<EvictionResult> {
    if (!this.running) {
      const skipped = (): EvictionResult => ({ evicted: 0, freedBytes: 0, usageBefore: this.usage, usageAfter: this.usage, skipped: 'another worker is evicting' });
      this.running = this.exclusive(() => this.run(targetBytes, aboveBytes)).then((r) => r ?? skipped()).finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async run(targetBytes: number | undefined, aboveBytes: number | undefined): Promise<EvictionResult> {
    const view = await this.scope.view();
    if (!view) return { evicted: 0, freedBytes: 0, usageBefore: this.usage, usageAfter: this.usage, skipped: 'another replica holds the eviction lease' };
    this.usage = view.usage;
    const before = this.usage;
    const target = targetBytes ?? (this.options.maxSize > 0 ? this.options.maxSize * this.options.lowWatermark : Infinity);
    let evicted = 0;
    let freed = 0;
    if (this.usage <= Math.max(target, aboveBytes ?? 0)) return { evicted, freedBytes: freed, usageBefore: before, usageAfter: this.usage };
    const { entries, keep } = await view.candidates();
    const victims: { digest: string; size: number }[] = [];
    let projected = this.usage;
    for (const entry of entries) {
      if (projected <= target) break;
      if (keep(entry.digest)) continue;
      victims.push(entry);
      projected -= entry.size;
    }
    for (const v of victims) {
      if (!this.scope.mayDelete()) {
        this.logger.warn({ evicted }, 'eviction stopped: this replica no longer holds the eviction lease');
        break;
      }
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
