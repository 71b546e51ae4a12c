// Layer prefetch (issue 15). When an image manifest comes from the upstream (a miss, or a
// revalidated tag that moved), the downloads of its config and layers that the cache lacks
// start at once, in the background: a client that fetches three layers at a time finds the
// others already arriving. They are the usual single-flight downloads (blob-service.ts), so
// clients join them (`coalesced`) or find them stored (`hit`).
//
// Only the manifest a client asked for triggers it: an index (or manifest list) prefetches
// nothing, the platform manifest the client then asks for does. A warm manifest hit never
// gets here (no store stat per layer on the hot path).
//
// Bounded so that it never costs a client anything: per upstream at most `concurrency`
// prefetches at once, the rest in a bounded FIFO (dropped past it); a prefetch starts only
// when a slot of the global download limit is free with nobody queued for one (never a
// client's 429, never a place in its queue), spends no client's miss budget, never a blob
// above downloads.maxBlobSize, and only with disk room reserved (no room: skipped, never
// passed through).

import type { Logger } from 'pino';
import type { DownloadLimiter } from '../cache/download-limiter.js';
import type { MirrorMetrics } from '../metrics.js';
import type { ParsedManifest } from '../oci/manifest.js';
import { parseDigest, type Digest } from '../oci/reference.js';
import type { Route } from '../upstream/selector.js';
import type { BlobService } from './blob-service.js';

/** Why a descriptor of a fetched image manifest is not prefetched (a metric label). */
export type PrefetchPlanSkip = 'too-big' | 'unknown-size' | 'not-distributable' | 'invalid-digest';

export interface PrefetchPlan {
  /** Config first, then the layers in order (the order clients fetch them); each digest once. */
  blobs: { digest: Digest; size: number }[];
  skipped: { digest: string; reason: PrefetchPlanSkip }[];
}

/** Layers the registry does not hold (their `urls` point elsewhere): nothing to fetch from it. */
const NOT_DISTRIBUTABLE = ['application/vnd.docker.image.rootfs.foreign.', 'application/vnd.oci.image.layer.nondistributable.'];

/** What of `manifest` to prefetch. An index names no blobs of its own: nothing. */
export function prefetchPlan(manifest: ParsedManifest, maxBlobSize: number): PrefetchPlan {
  const plan: PrefetchPlan = { blobs: [], skipped: [] };
  if (manifest.isIndex) return plan;
  const seen = new Set<string>();
  for (const d of [...(manifest.config ? [manifest.config] : []), ...manifest.layers]) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    let digest: Digest;
    try {
      digest = parseDigest(d.digest);
    } catch {
      plan.skipped.push({ digest: d.digest, reason: 'invalid-digest' });
      continue;
    }
    // The size is what the disk reservation and the download's bound rest on (schema1 has none).
    if (!Number.isSafeInteger(d.size) || d.size < 0) plan.skipped.push({ digest: d.digest, reason: 'unknown-size' });
    else if (d.size > maxBlobSize) plan.skipped.push({ digest: d.digest, reason: 'too-big' });
    else if (NOT_DISTRIBUTABLE.some((prefix) => d.mediaType.startsWith(prefix))) plan.skipped.push({ digest: d.digest, reason: 'not-distributable' });
    else plan.blobs.push({ digest, size: d.size });
  }
  return plan;
}

export interface PrefetcherDeps {
  blobs: Pick<BlobService, 'prefetch'>;
  limiter: Pick<DownloadLimiter, 'tryAcquire' | 'onSlotFreed'>;
  metrics: MirrorMetrics;
  logger: Logger;
  /** downloads.maxBlobSize */
  maxBlobSize: number;
}

interface Pending {
  route: Route;
  digest: Digest;
  size: number;
}

/** One upstream's prefetches: those running, and those waiting for one of its slots. */
interface Lane {
  running: number;
  queue: Pending[];
  /** The global limit had no free slot: wait until one is released. */
  waitingForSlot: boolean;
}

export class Prefetcher {
  private readonly lanes = new Map<string, Lane>();
  private closed = false;
  private readonly unsubscribe: () => void;

  constructor(private readonly deps: PrefetcherDeps) {
    this.unsubscribe = deps.limiter.onSlotFreed(() => {
      for (const [upstream, lane] of this.lanes) {
        if (!lane.waitingForSlot) continue;
        lane.waitingForSlot = false;
        this.pump(upstream, lane);
      }
    });
  }

  /** An image manifest for `route` came from the upstream: prefetch what it names. */
  manifestFetched(route: Route, manifest: ParsedManifest): void {
    const settings = route.upstream.prefetch;
    if (this.closed || !settings.enabled || manifest.isIndex) return;
    const upstream = route.upstream.name;
    const { metrics } = this.deps;
    const plan = prefetchPlan(manifest, this.deps.maxBlobSize);
    for (const s of plan.skipped) metrics.prefetchSkipped.inc({ upstream, reason: s.reason });
    let lane = this.lanes.get(upstream);
    if (!lane) {
      lane = { running: 0, queue: [], waitingForSlot: false };
      this.lanes.set(upstream, lane);
    }
    for (const blob of plan.blobs) {
      // Those that can start do, so the bound counts only the ones left waiting.
      this.pump(upstream, lane);
      if (lane.queue.length >= settings.maxQueued) metrics.prefetchSkipped.inc({ upstream, reason: 'queue-full' });
      else lane.queue.push({ route, ...blob });
    }
    this.pump(upstream, lane);
  }

  /** Nothing more starts; what runs is the downloads' to stop. */
  close(): void {
    this.closed = true;
    this.unsubscribe();
    for (const lane of this.lanes.values()) lane.queue.length = 0;
  }

  private pump(upstream: string, lane: Lane): void {
    while (!this.closed && !lane.waitingForSlot && lane.queue.length > 0) {
      const next = lane.queue[0]!;
      if (lane.running >= next.route.upstream.prefetch.concurrency) return;
      // Only a slot free right now, with no client queued for one: never a client's 429.
      const slot = this.deps.limiter.tryAcquire();
      if (!slot) {
        lane.waitingForSlot = true;
        return;
      }
      lane.queue.shift();
      lane.running++;
      void this.startOne(upstream, lane, next, slot);
    }
  }

  /** `slot`: the global limit's, held for the checks and handed to the download (or released). */
  private async startOne(upstream: string, lane: Lane, pending: Pending, slot: () => void): Promise<void> {
    const { blobs, metrics, logger } = this.deps;
    let started: Awaited<ReturnType<BlobService['prefetch']>> | 'failed';
    try {
      started = await blobs.prefetch(pending.route, pending.digest, pending.size, slot);
    } catch (err) {
      logger.debug({ upstream, digest: pending.digest.value, err: (err as Error).message }, 'prefetch not started');
      started = 'failed';
    }
    if (typeof started === 'string') {
      slot();
      lane.running--;
      metrics.prefetchSkipped.inc({ upstream, reason: started });
      this.pump(upstream, lane);
      return;
    }
    metrics.prefetchStarted.inc({ upstream });
    logger.debug({ upstream, repository: pending.route.repository, digest: pending.digest.value, size: pending.size }, 'prefetching blob');
    // Committed or failed (a failure is the download's to log), the lane's slot is free again.
    void started.finished
      .catch(() => undefined)
      .finally(() => {
        lane.running--;
        this.pump(upstream, lane);
      });
  }
}
