// Eviction from a bucket shared by replicas. Each replica's own index knows only what it
// stored and its own pins, so each evicting by itself would delete what another has pinned or
// is serving. Instead, every heartbeat:
//   - each replica publishes what it needs kept (shared-keep.ts): pins, fresh tags, content
//     in use, its recent uses;
//   - replicas with a size limit contend for the eviction lease (eviction-lease.ts); the one
//     that holds it lists the bucket and, past the high watermark, evicts for everyone.
// The holder keeps whatever any replica pinned (until that replica expires), whatever a live
// replica has fresh or in use, and whatever anyone used within `recentUse`; the rest goes least
// recently used first, by the latest use any replica reported (or its upload, if later).
//
// Why `recentUse` as well as the published in-use digests: a replica's uses reach the bucket
// up to a heartbeat late (a second late for content it had not used lately, which triggers an
// early publish). The grace window covers that gap, and content a client fetches from the bucket
// itself through a presigned redirect, which the replica never sees finish. A replica that loses
// a race anyway (the holder deleted what it had just started to serve) fetches the content again
// on the next miss: a cost, never wrong content.

import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { BlobStore, ControlObjects, StoredObject } from './blob-store.js';
import { EvictionLease, type LeaseState } from './eviction-lease.js';
import type { EvictionEntry, EvictionScope, EvictionView } from './eviction.js';
import type { CacheIndex } from './index.js';
import { mergeStates, publishState, readStates, RecentUses, replicaIdentity, type ReplicaState } from './shared-keep.js';

/**
 * `replica`: a server: publishes what it needs kept, contends for the lease (with a size limit).
 * `one-shot`: prewarm, export, import: leaves eviction to the replicas, publishes nothing (its
 * pins are in the index of the replica whose storage it uses, which publishes them).
 * `gc`: `mirror gc`, an operator's explicit request: evicts now without the lease, honouring
 * what every replica (its own server's too) published.
 */
export type SharedBucketRole = 'replica' | 'one-shot' | 'gc';

export interface SharedEvictionSettings {
  role: SharedBucketRole;
  replicaId: string;
  heartbeatMs: number;
  /** Content any replica used this recently is never evicted. */
  recentUseMs: number;
  /** A replica silent this long no longer keeps its pins. */
  replicaExpiryMs: number;
  /** This replica has a size limit: it contends for the lease. */
  evicts: boolean;
}

export interface SharedEvictionDeps {
  store: BlobStore;
  control: ControlObjects;
  index: CacheIndex;
  logger: Logger;
  /** The mirror's metrics (mirror_eviction_lease_held, mirror_eviction_skipped_total). */
  metrics?: { evictionLeaseHeld: { set(value: number): void }; evictionSkipped: { inc(): void } };
  now(): number;
  /** Content this replica is serving or downloading right now. */
  inUse(): Iterable<string>;
}

/** The lease lasts this many heartbeats; it is renewed every heartbeat. */
const LEASE_HEARTBEATS = 3;
/** Content used for the first time in a while is published this soon (at most). */
const PUBLISH_SOON_MS = 1000;

/**
 * The bucket's objects least recently used first (the latest of any replica's use and the
 * upload), and what must stay: kept content, and content used within `recentUseMs`.
 */
export function orderForEviction(
  objects: StoredObject[],
  options: { now: number; recentUseMs: number; lastUse(digest: string): number | undefined; keep(digest: string): boolean },
): { entries: EvictionEntry[]; keep(digest: string): boolean } {
  const usedAt = new Map<string, number>();
  for (const o of objects) usedAt.set(o.digest, Math.max(o.modifiedAt ?? 0, options.lastUse(o.digest) ?? 0));
  const entries = objects
    .map((o) => ({ digest: o.digest, size: o.size }))
    .sort((a, b) => usedAt.get(a.digest)! - usedAt.get(b.digest)! || (a.digest < b.digest ? -1 : 1));
  const recentSince = options.now - options.recentUseMs;
  return { entries, keep: (digest) => options.keep(digest) || (usedAt.get(digest) ?? Infinity) > recentSince };
}

/** Eviction coordinated through the bucket, when the store is one shared by replicas. */
export function sharedBucketEviction(
  role: SharedBucketRole,
  config: Pick<Config, 'storage'>,
  deps: Omit<SharedEvictionDeps, 'control'>,
): SharedBucketEviction | undefined {
  const control = deps.store.control;
  const shared = config.storage.shared;
  if (!control || !shared) return undefined;
  return new SharedBucketEviction({ ...deps, control }, {
    role,
    replicaId: role === 'replica' ? replicaIdentity(config.storage.path, shared.replicaId) : role,
    heartbeatMs: shared.heartbeatMs,
    recentUseMs: shared.recentUseMs,
    replicaExpiryMs: shared.replicaExpiryMs,
    evicts: config.storage.maxSize > 0,
  });
}

export class SharedBucketEviction implements EvictionScope {
  readonly lease: EvictionLease;
  private readonly uses = new RecentUses();
  private check: (() => Promise<unknown>) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private ticking: Promise<void> = Promise.resolve();
  private publishing: Promise<void> = Promise.resolve();
  private checking: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** The holder last reported in the logs (this replica's id when it holds the lease). */
  private lastHolder: string | undefined;
  private warnedWeakLease = false;

  constructor(
    private readonly deps: SharedEvictionDeps,
    private readonly settings: SharedEvictionSettings,
  ) {
    this.lease = new EvictionLease(deps.control, { holder: settings.replicaId, ttlMs: LEASE_HEARTBEATS * settings.heartbeatMs, now: deps.now });
  }

  /** A use of `digest` by this replica (a hit, a commit): published for the evictor. */
  noteUse(digest: string): void {
    if (this.settings.role === 'replica' && this.uses.note(digest, this.deps.now())) this.publishSoon();
  }

  /** Start the heartbeat (a replica's); `check` evicts if past the high watermark (the Evictor's). */
  start(check: () => Promise<unknown>): void {
    if (this.settings.role !== 'replica') return;
    this.check = check;
    const beat = () => {
      this.ticking = this.tick().finally(() => {
        if (!this.closed) this.timer = setTimeout(beat, this.settings.heartbeatMs).unref();
      });
    };
    beat();
  }

  async close(): Promise<void> {
    if (this.settings.role !== 'replica' || this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.soon);
    await this.ticking;
    // Released (a run in progress stops before its next delete), the others need not wait for
    // the lease to expire. The last state stays published: a replica restarting keeps its pins.
    const released = this.lease.release().catch((err: unknown) => this.deps.logger.warn({ err: (err as Error).message }, 'could not release the eviction lease; it expires by itself'));
    this.deps.metrics?.evictionLeaseHeld.set(0);
    await Promise.all([released, this.checking, this.publish()]);
  }

  async view(): Promise<EvictionView | undefined> {
    if (this.settings.role !== 'gc' && !this.lease.holds()) return undefined;
    const objects: StoredObject[] = [];
    let usage = 0;
    for await (const o of this.deps.store.list()) {
      objects.push(o);
      usage += o.size;
    }
    return { usage, candidates: () => this.candidates(objects) };
  }

  mayDelete(): boolean {
    return this.settings.role === 'gc' || this.lease.holds();
  }

  private async candidates(objects: StoredObject[]): Promise<{ entries: EvictionEntry[]; keep(digest: string): boolean }> {
    const { index, control, logger } = this.deps;
    const now = this.deps.now();
    const others = mergeStates(
      await readStates(control, {
        exclude: this.settings.role === 'replica' ? this.settings.replicaId : undefined,
        now,
        expiryMs: this.settings.replicaExpiryMs,
        onExpired: (replica) => logger.info({ replica }, 'forgot a replica silent for longer than replicaExpiry (its pins no longer kept)'),
      }),
    );
    index.flushAccessTimes();
    const keptHere = index.protectedDigests(now);
    const busyHere = new Set(this.deps.inUse());
    const accessedHere = new Map<string, number>();
    for (const e of index.entriesByAccess()) accessedHere.set(e.digest, e.lastAccess);
    logger.debug({ objects: objects.length, replicas: others.replicas, keptByOthers: others.keep.size }, 'eviction of the shared bucket: what the replicas need kept');
    return orderForEviction(objects, {
      now,
      recentUseMs: this.settings.recentUseMs,
      lastUse: (d) => Math.max(accessedHere.get(d) ?? 0, this.uses.get(d) ?? 0, others.lastUse.get(d) ?? 0),
      keep: (d) => keptHere.has(d) || busyHere.has(d) || others.keep.has(d),
    });
  }

  private async tick(): Promise<void> {
    const { logger, metrics } = this.deps;
    await this.publish();
    if (!this.settings.evicts || this.closed) return;
    let state: LeaseState | undefined;
    try {
      state = await this.lease.refresh();
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'could not refresh the eviction lease');
    }
    if (this.lease.conditionalWrites === false && !this.warnedWeakLease) {
      this.warnedWeakLease = true;
      logger.warn('the object store ignores conditional writes (If-None-Match, If-Match): the eviction lease falls back to write, wait and read back, which two replicas can both win in a rare race');
    }
    if (state) this.report(state);
    metrics?.evictionLeaseHeld.set(this.lease.holds() ? 1 : 0);
    if (this.lease.holds()) {
      // Not awaited: a long run must not hold up the next heartbeat (and the lease's renewal).
      this.checking = this.check?.().catch((err: unknown) => logger.error({ err }, 'eviction failed')) ?? this.checking;
    } else {
      metrics?.evictionSkipped.inc();
      logger.debug({ holder: state && !state.held ? state.holder : undefined }, 'eviction check skipped: another replica holds the eviction lease');
    }
  }

  /** Log when the holder changes, not every heartbeat. */
  private report(state: LeaseState): void {
    const { logger, now } = this.deps;
    const self = this.settings.replicaId;
    if (state.held) {
      if (this.lastHolder !== self) logger.info({ replica: self, takenFrom: state.takenFrom, expiresAt: state.expiresAt, now: now() }, 'took the eviction lease of the shared bucket: this replica evicts for all');
      this.lastHolder = self;
      return;
    }
    if (this.lastHolder === self) logger.warn({ holder: state.holder }, 'lost the eviction lease of the shared bucket');
    if (this.lastHolder !== state.holder) logger.info({ holder: state.holder, expiresAt: state.expiresAt }, 'another replica holds the eviction lease: eviction of the shared bucket is left to it');
    this.lastHolder = state.holder;
  }

  private publishSoon(): void {
    if (this.soon || this.closed) return;
    this.soon = setTimeout(() => {
      this.soon = undefined;
      void this.publish();
    }, Math.min(PUBLISH_SOON_MS, this.settings.heartbeatMs)).unref();
  }

  /** Publish this replica's state; one write at a time, so an older state never lands last. */
  private publish(): Promise<void> {
    this.publishing = this.publishing.then(async () => {
      try {
        await publishState(this.deps.control, this.state());
      } catch (err) {
        this.deps.logger.warn({ err: (err as Error).message }, 'could not publish what this replica needs kept to the shared bucket; the last published state stands');
      }
    });
    return this.publishing;
  }

  private state(): ReplicaState {
    const { index } = this.deps;
    const now = this.deps.now();
    const pinned = index.pinnedDigests();
    const pinnedSet = new Set(pinned);
    return {
      replica: this.settings.replicaId,
      publishedAt: now,
      heartbeatMs: this.settings.heartbeatMs,
      pinned,
      fresh: [...index.protectedDigests(now)].filter((d) => !pinnedSet.has(d)),
      inUse: [...new Set(this.deps.inUse())],
      used: this.uses.entries(),
    };
  }
}
