// The composition root: builds the mirror's parts from the configuration and wires them
// together. The HTTP server and the CLI both use the Mirror it returns; the work itself is
// done by the parts (docs/ARCHITECTURE.md draws them):
//   core/manifest-service.ts   manifests by tag (freshness, revalidation, stale) and digest
//   core/blob-service.ts       blobs: hits, single-flight downloads, pass-through
//   core/prefetch.ts           an image manifest from the upstream starts its layers' downloads
//   core/tag-list-service.ts   tags/list
//   core/repository-access.ts  which repository may be served which digest
//   core/catalog-service.ts    /v2/_catalog from the index
//   core/manifest-as-blob.ts   a manifest digest asked for as a blob
//   core/referrers-service.ts  /referrers/: the upstream's API or tag schema, and what the mirror holds

import { unlink } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { BlobStore } from './cache/blob-store.js';
import { DownloadLimiter } from './cache/download-limiter.js';
import { Downloads } from './cache/downloads.js';
import { Evictor } from './cache/eviction.js';
import { JournaledStore, type CommitJournal } from './cache/commit-journal.js';
import type { CacheIndex } from './cache/index.js';
import { openIndex, reconcileDigest, startIndexRebuild, type IndexRebuild } from './cache/index-recovery.js';
import { ManifestCache } from './cache/manifest-cache.js';
import { openStorage } from './cache/open-store.js';
import { DiskSpace } from './cache/space-reservation.js';
import type { ScratchSpace } from './cache/scratch.js';
import { sharedBucketEviction, type SharedBucketEviction } from './cache/shared-eviction.js';
import { TagCache } from './cache/tag-cache.js';
import { systemClock, type Clock } from './clock.js';
import { Peers } from './cluster/peer-source.js';
import type { Config } from './config.js';
import { BlobService } from './core/blob-service.js';
import { CatalogService, type CatalogPage } from './core/catalog-service.js';
import { ClientMissBudget } from './core/client-budget.js';
import { blobOrManifest } from './core/manifest-as-blob.js';
import { ManifestService } from './core/manifest-service.js';
import { Prefetcher } from './core/prefetch.js';
import type { SiblingWorkers } from './core/sibling-workers.js';
import { ReferrersService, type ReferrersResult } from './core/referrers-service.js';
import { RepositoryAccess } from './core/repository-access.js';
import type { BlobResult, ManifestResult, TagList } from './core/results.js';
import { TagListService, type TagPageRequest } from './core/tag-list-service.js';
import { MirrorMetrics } from './metrics.js';
import { parseDigest, type Digest, type ManifestReference } from './oci/reference.js';
import { UpstreamRegistry } from './upstream/registry.js';
import { UpstreamSelector, type Route } from './upstream/selector.js';
import { Upstreams } from './upstream/upstreams.js';

export interface MirrorOptions {
  config: Config;
  logger: Logger;
  clock?: Clock;
  metrics?: MirrorMetrics;
  /** A one-shot command (prewarm, export, import), not a server: on a shared bucket it leaves eviction to the replicas. */
  oneShot?: boolean;
  /** The other worker processes of this mirror (`workers: N`); none for a single process. */
  siblings?: SiblingWorkers;
}

/** Access times are batched in memory and written this often. */
const ACCESS_FLUSH_MS = 5000;

/** The parts, built and wired by createMirror. */
interface MirrorParts {
  config: Config;
  logger: Logger;
  clock: Clock;
  metrics: MirrorMetrics;
  selector: UpstreamSelector;
  upstreams: Upstreams;
  store: BlobStore;
  scratch: ScratchSpace;
  index: CacheIndex;
  /** What this process is committing, until the index holds it (cache/commit-journal.ts). */
  journal: CommitJournal;
  /** The index being rebuilt from the store (it was damaged or missing). */
  rebuild: IndexRebuild | undefined;
  downloads: Downloads;
  evictor: Evictor;
  manifests: ManifestService;
  blobs: BlobService;
  tagLists: TagListService;
  catalog: CatalogService;
  referrers: ReferrersService;
  peers: Peers | undefined;
  shared: SharedBucketEviction | undefined;
  /** Layer prefetch (none in the one-shot commands). */
  prefetcher?: Prefetcher;
  siblings: SiblingWorkers | undefined;
}

/** The mirror as the server and the CLI see it: its parts, and the calls a pull makes. */
export class Mirror {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly metrics: MirrorMetrics;
  /** Which upstream (and repository there) a client's repository name means. */
  readonly selector: UpstreamSelector;
  readonly upstreams: Upstreams;
  readonly store: BlobStore;
  readonly scratch: ScratchSpace;
  readonly index: CacheIndex;
  readonly downloads: Downloads;
  readonly evictor: Evictor;
  /** The other workers (`/metrics` and `/readyz` answer for all of them); none for a single process. */
  readonly siblings: SiblingWorkers | undefined;
  private readonly parts: MirrorParts;
  private readonly flushTimer: NodeJS.Timeout;

  constructor(parts: MirrorParts) {
    this.parts = parts;
    ({
      config: this.config, logger: this.logger, clock: this.clock, metrics: this.metrics, selector: this.selector,
      upstreams: this.upstreams, store: this.store, scratch: this.scratch, index: this.index, downloads: this.downloads, evictor: this.evictor,
      siblings: this.siblings,
    } = parts);
    this.flushTimer = setInterval(() => {
      this.flushIndex();
      void this.settleJournal();
    }, ACCESS_FLUSH_MS);
    this.flushTimer.unref();
  }

  // `client` (the requester's address) spends that client's budget of upstream misses;
  // without it (the CLI, a peer replica) nothing is counted.

  getManifest(route: Route, reference: ManifestReference, accept: string | string[] | undefined, options: { client?: string } = {}): Promise<ManifestResult> {
    return this.parts.manifests.get(route, reference, accept, options.client);
  }

  /** A blob, or a manifest asked for as a blob (containerd does). */
  getBlob(route: Route, digest: Digest, options: { fromPeer?: boolean; client?: string } = {}): Promise<BlobResult> {
    return blobOrManifest(this.parts.manifests, route, digest, () => this.parts.blobs.get(route, digest, options));
  }

  /** What a HEAD needs: the size, without starting a download. */
  statBlob(route: Route, digest: Digest, options: { client?: string } = {}): Promise<BlobResult> {
    return blobOrManifest(this.parts.manifests, route, digest, () => this.parts.blobs.stat(route, digest, options));
  }

  listTags(route: Route, clientName: string, page: TagPageRequest, options: { client?: string } = {}): Promise<TagList> {
    return this.parts.tagLists.list(route, clientName, page, options.client);
  }

  /** The manifests that refer to `subject` (signatures, SBOMs, attestations), unfiltered and unpaged. */
  referrers(route: Route, subject: Digest, options: { client?: string } = {}): Promise<ReferrersResult> {
    return this.parts.referrers.list(route, subject, options.client);
  }

  /** The repositories the mirror holds, as clients name them (GET /v2/_catalog). */
  catalog(n: number | undefined, last: string | undefined): CatalogPage {
    return this.parts.catalog.list(n, last);
  }

  /**
   * Write the batched access times and request stats. The index failing (a full disk,
   * SQLITE_BUSY) is logged and the batch kept for the next tick: background bookkeeping
   * must never take the mirror down, least of all when the disk is full.
   */
  flushIndex(): void {
    try {
      this.index.flushAccessTimes();
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'could not write access times to the index; keeping them for the next try');
    }
  }

  /**
   * Reconcile what was committed since the last settle with the index: rows the index refused
   * are written now (eviction sees the files), rows whose files vanished are dropped. Failures
   * (the index still refusing) are logged and retried at the next tick.
   */
  async settleJournal(): Promise<void> {
    const { journal } = this.parts;
    try {
      await journal.settle(
        async (digest, unchanged) => {
          const { adopted } = await reconcileDigest(this.store, this.index, digest, this.clock.now(), unchanged);
          if (adopted !== undefined) this.evictor.added(adopted);
        },
        () => this.index.checkpoint(),
      );
    } catch (err) {
      this.logger.error({ pending: journal.pendingCount, err: (err as Error).message }, 'could not record committed content in the index; keeping it for the next try');
    }
  }

  /** Why the mirror cannot serve now (storage not writable, index closed), or undefined when ready. */
  async readiness(): Promise<string | undefined> {
    try {
      const probe = await this.scratch.createTemp();
      await probe.handle.close();
      await unlink(probe.path);
    } catch (err) {
      return `storage not writable: ${(err as Error).message}`;
    }
    if (!this.index.db.open) return 'index closed';
    return undefined;
  }

  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    this.flushIndex();
    this.parts.rebuild?.abort();
    this.parts.prefetcher?.close();
    this.downloads.abortAll('mirror shutting down');
    await Promise.all([this.downloads.settled(), this.parts.rebuild?.done]);
    await this.settleJournal();
    await Promise.all([this.upstreams.close(), this.parts.peers?.close(), this.parts.shared?.close()]);
    try {
      this.index.close();
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'could not write the last access times to the index');
    }
    // Removed only when everything committed is in the index: otherwise the next start reconciles it.
    await this.parts.journal.close();
  }
}

/** Build the mirror from its configuration: the one place its parts are put together. */
export async function createMirror(options: MirrorOptions): Promise<Mirror> {
  const { config, logger, siblings } = options;
  const clock = options.clock ?? systemClock;
  const metrics = options.metrics ?? new MirrorMetrics();
  const storage = await openStorage(config, { sweep: true });
  const { scratch, sweptTempFiles } = storage;
  if (sweptTempFiles > 0) logger.info({ sweptTempFiles }, 'removed unfinished downloads left by an earlier run');
  const { index, journal, needsRebuild } = await openIndex(config.storage.path, storage.store, { logger, now: () => clock.now() });
  // Every commit is journalled first: a crash between a commit and its index row is repaired at the next start.
  const store = new JournaledStore(storage.store, journal);

  const registries = config.upstreams.map((u) => new UpstreamRegistry(u));
  const fallback = registries.find((u) => u.name === config.defaultUpstream) ?? registries[0];
  if (!fallback) throw new Error('no upstream configured');
  const selector = new UpstreamSelector(registries, fallback);
  const upstreams = new Upstreams(registries, config, { clock, logger, metrics });
  // On a bucket shared by replicas, eviction is coordinated through the bucket (cache/shared-eviction.ts).
  let blobs: BlobService | undefined;
  const shared = sharedBucketEviction(options.oneShot ? 'one-shot' : 'replica', config, {
    store: storage.store, index, logger, metrics, now: () => clock.now(), inUse: () => blobs?.inUse() ?? [],
  });
  const recordAccess = (digest: string) => {
    index.recordAccess(digest, clock.now());
    shared?.noteUse(digest);
  };

  // Eviction needs to know what is busy and to drop in-memory copies: it is told through
  // callbacks, since those parts are built after it.
  // Another worker's change to a tag row: the index is the truth, drop the copy in memory.
  const tags = new TagCache(index, logger, siblings && ((key) => siblings.publish({ kind: 'tag', key })));
  let manifestCache: ManifestCache | undefined;
  const evictor = new Evictor(
    store, index, config.storage, logger, () => clock.now(),
    (digest) => blobs?.isBusy(parseDigest(digest)) ?? false,
    (digest, size) => {
      manifestCache?.forget(digest);
      tags.forgetDigest(digest);
      metrics.evictions.inc();
      metrics.evictedBytes.inc(size);
      siblings?.publish({ kind: 'evicted', digest });
    },
    shared,
    // Workers share one index and store: one of them evicts at a time.
    siblings && ((work) => siblings.exclusive('eviction', work)),
  );
  const rebuild = needsRebuild
    ? startIndexRebuild(config.storage.path, store, index, { logger, now: () => clock.now(), onAdopted: (bytes) => evictor.added(bytes) })
    : undefined;
  manifestCache = new ManifestCache(store, index, { clock, logger, onAdded: (bytes) => evictor.added(bytes) });
  const limiter = new DownloadLimiter(config.downloads, () => metrics.downloadsRefused.inc());
  const downloads = new Downloads({ store, scratch }, {
    resumeAttempts: config.downloads.resumeAttempts,
    writeTimeoutMs: config.downloads.writeTimeoutMs,
    abandonAfterMs: config.downloads.abandonAfterMs,
    segmentThreshold: config.downloads.segmentThreshold,
    maxSegments: config.downloads.maxSegments,
    onDownloaded: ({ segmentsUsed }) => metrics.downloadSegments.observe(segmentsUsed),
    limiter,
    onAbandoned: () => metrics.downloadsAbandoned.inc(),
    logger,
    onCommitted: (digest, size) => {
      index.putBlob(digest.value, size, clock.now());
      shared?.noteUse(digest.value);
      evictor.added(size);
      siblings?.publish({ kind: 'added', bytes: size });
    },
  });
  const access = new RepositoryAccess(index, upstreams, config.offline, logger);
  const budget = new ClientMissBudget(config.clientMisses.perMinute, clock, siblings && ((key) => siblings.publish({ kind: 'miss', key })));
  const peers = config.cluster ? new Peers(config.cluster, config.timeouts, logger, clock) : undefined;
  blobs = new BlobService({
    offline: config.offline, storagePath: config.storage.path, store, space: new DiskSpace(scratch.dir, config.storage.minFree), downloads, access, upstreams, peers, metrics, logger, budget, recordAccess, siblings,
    // A row whose file vanished (deleted behind the mirror's back) is dropped by the next settle, unless refetched first.
    noteMissing: (digest) => {
      try {
        if (index.isIndexed(digest)) journal.suspect(digest);
      } catch {
        // the index cannot be read now: the next read of the digest notices again
      }
    },
    descriptorSize: (digest) => {
      try {
        return index.descriptorSize(digest);
      } catch {
        return undefined; // the index failing: the configured cap still bounds the download
      }
    },
    maxBlobSize: config.downloads.maxBlobSize,
  });
  // Not for the one-shot commands: prewarm and export fetch every blob they want themselves.
  const prefetcher = options.oneShot ? undefined : new Prefetcher({ blobs, limiter, metrics, logger, maxBlobSize: config.downloads.maxBlobSize });
  const manifests = new ManifestService({
    config, manifests: manifestCache, index, tags, access, upstreams, metrics, logger, clock, budget, recordAccess, siblings,
    fetchedFromUpstream: prefetcher && ((route, manifest) => prefetcher.manifestFetched(route, manifest)),
  });
  siblings?.subscribe((event) => {
    if (event.kind === 'tag') tags.forgetKey(event.key);
    else if (event.kind === 'added') evictor.added(event.bytes);
    else if (event.kind === 'miss') budget.spentElsewhere(event.key);
    else if (event.kind === 'evicted') {
      manifestCache?.forget(event.digest);
      tags.forgetDigest(event.digest);
    } else manifests.hearSibling(event);
  });
  const tagLists = new TagListService(index, upstreams, config.offline, budget);
  const catalog = new CatalogService(index, registries.map((r) => r.name), fallback.name);
  const referrers = new ReferrersService({ offline: config.offline, index, manifests, upstreams, budget, metrics, logger, clock });

  metrics.observe({
    cacheBytes: () => evictor.usageBytes,
    cacheObjects: () => {
      const u = index.usage();
      return u.blobs + u.manifests;
    },
    breakers: () => upstreams.all().map((c) => ({ upstream: c.registry.name, state: c.breaker.state })),
    downloadSlots: () => ({ active: limiter.active, queued: limiter.queued }),
  });
  shared?.start(() => evictor.check());
  return new Mirror({
    config, logger, clock, metrics, selector, upstreams, store, scratch, index, journal, rebuild, downloads, evictor, manifests, blobs, tagLists, catalog, referrers, peers, shared, siblings, prefetcher,
  });
}
