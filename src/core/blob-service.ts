// Blobs for a routed request. In the store: streamed from it (ranges too). Not yet: the one
// download for the digest is started or joined (cache/downloads.ts), and the client reads
// it as it grows, ranges as soon as their bytes are there. The download's bytes come from
// the upstream, or from the replica that owns the digest. A disk without room for the blob
// passes it through, verified and uncached. A prefetch (core/prefetch.ts) starts the same
// download before any client asks, for clients to join.

import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { READ_CHUNK_BYTES, type BlobStore } from '../cache/blob-store.js';
import type { BlobDownload, Downloads, DownloadStart } from '../cache/downloads.js';
import type { DiskSpace, Reservation } from '../cache/space-reservation.js';
import type { Peers } from '../cluster/peer-source.js';
import type { MirrorMetrics } from '../metrics.js';
import { RegistryError } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import { upstreamBlobSource } from '../upstream/blob-source.js';
import type { Route } from '../upstream/selector.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientMissBudget } from './client-budget.js';
import { offlineMiss } from './offline.js';
import { NoRoomForBlob, passThrough } from './pass-through.js';
import type { RepositoryAccess } from './repository-access.js';
import type { BlobResult, CacheOutcome } from './results.js';

export interface BlobServiceDeps {
  offline: boolean;
  storagePath: string;
  store: BlobStore;
  /** Room on the download disk, reserved per download. */
  space: DiskSpace;
  downloads: Downloads;
  access: RepositoryAccess;
  upstreams: Upstreams;
  peers: Peers | undefined;
  metrics: MirrorMetrics;
  logger: Logger;
  /** Each client's budget of upstream misses. */
  budget: ClientMissBudget;
  /** Note an access for eviction's LRU (batched by the index). */
  recordAccess(digest: string): void;
  /** The size a stored manifest's descriptor gives `digest`, when one does. */
  descriptorSize(digest: string): number | undefined;
  /** The bound on a blob whose size no descriptor gives (downloads.maxBlobSize). */
  maxBlobSize: number;
  /** The store has no file for `digest`: a row the index may still hold for it is checked soon. */
  noteMissing(digest: string): void;
}

/** Why a prefetch did not start a download (a metric label). */
export type PrefetchRefusal = 'cached' | 'downloading' | 'no-room';

/** Prefetched digests remembered until a client asks for them (for the unclaimed-bytes gauge). */
const MAX_PREFETCHED_REMEMBERED = 10_000;

export class BlobService {
  /** Open store read streams per digest: content being served is never evicted. */
  private readonly serving = new Map<string, number>();
  /**
   * The (upstream, repository) each running download was started for. A client of that same
   * repository joins it as it is: the upstream's answer to the download is the check (its
   * link is written when the download commits). Bounded by the downloads in flight.
   */
  private readonly startedFor = new Map<string, string>();
  /**
   * Prefetched digests no client has asked for yet, with their upstream and the bytes they
   * committed (0 while downloading). Bounded: the oldest are forgotten (and stay unclaimed).
   */
  private readonly prefetched = new Map<string, { upstream: string; committedBytes: number }>();

  constructor(private readonly deps: BlobServiceDeps) {}

  /** Is `digest` being read from the store or downloaded right now? */
  isBusy(digest: Digest): boolean {
    return (this.serving.get(digest.value) ?? 0) > 0 || this.deps.downloads.get(digest) !== undefined;
  }

  /** Every digest being read from the store or downloaded right now. */
  inUse(): string[] {
    return [...this.serving.keys(), ...this.deps.downloads.digests()];
  }

  /** `client`: the address whose budget of upstream misses a miss spends (none: not counted). */
  async get(route: Route, digest: Digest, options: { fromPeer?: boolean; client?: string } = {}): Promise<BlobResult> {
    const { store, access, downloads, offline, budget } = this.deps;
    const stat = await store.stat(digest);
    if (stat) {
      // Stored by a download for this very repository that is still finishing its commit: its link comes with it.
      if (!this.joinsOwnRepository(route, digest)) await access.ensureLinked(route, digest, 'blob');
      this.deps.recordAccess(digest.value);
      if (this.prefetched.size > 0) this.claim(digest.value);
      return {
        digest: digest.value,
        size: stat.size,
        outcome: 'hit',
        redirect: store.directUrl ? await store.directUrl(digest) : undefined,
        open: (start, end) => this.serveFromStore(digest, start, end),
      };
    }
    this.deps.noteMissing(digest.value);
    if (offline) throw offlineMiss('BLOB_UNKNOWN', route, digest.value);
    let download = downloads.get(digest);
    let outcome: CacheOutcome = 'coalesced';
    if (download) {
      // Joining another repository's download: this repository must contain the blob too.
      if (!this.joinsOwnRepository(route, digest) && !access.isLinked(route, digest.value)) {
        budget.charge(options.client);
        await access.confirmUpstreamHas(route, digest, 'blob');
      }
    } else {
      budget.charge(options.client);
      download = this.startDownload(route, digest, options.fromPeer === true);
      outcome = 'miss';
    }
    try {
      await download.ready;
    } catch (err) {
      if (err instanceof NoRoomForBlob) return passThrough(this.deps.upstreams, route, digest, err, this.deps.logger, this.deps.storagePath);
      throw err;
    }
    if (this.prefetched.size > 0) this.claim(digest.value);
    return {
      digest: digest.value,
      size: download.totalSize,
      outcome,
      open: (start, end) => this.readDownload(download, digest, start, end),
      stored: download.finished,
    };
  }

  /** What a HEAD needs: the size, without starting a download. */
  async stat(route: Route, digest: Digest, options: { client?: string } = {}): Promise<BlobResult> {
    const { store, access, downloads, offline, budget } = this.deps;
    const stat = await store.stat(digest);
    if (stat) {
      if (!this.joinsOwnRepository(route, digest)) await access.ensureLinked(route, digest, 'blob');
      return { digest: digest.value, size: stat.size, outcome: 'hit' };
    }
    if (offline) throw offlineMiss('BLOB_UNKNOWN', route, digest.value);
    const download = downloads.get(digest);
    if (download && (this.joinsOwnRepository(route, digest) || access.isLinked(route, digest.value))) {
      await download.ready;
      return { digest: digest.value, size: download.totalSize, outcome: 'coalesced' };
    }
    budget.charge(options.client);
    const { size } = await access.confirmUpstreamHas(route, digest, 'blob');
    return { digest: digest.value, size, outcome: 'miss' };
  }

  /**
   * Start the download of `digest` (`size` bytes, as its manifest's descriptor says) before
   * any client asks for it: the usual single-flight download, which clients then join
   * (`coalesced`) or find stored (`hit`). Unlike a client's miss it spends no client's budget,
   * never waits for a slot of the global limit (the caller took `slot` only because one was
   * free; a started download releases it, a refusal leaves it to the caller) and never passes
   * through: no room, no prefetch.
   */
  async prefetch(route: Route, digest: Digest, size: number, slot: () => void): Promise<BlobDownload | PrefetchRefusal> {
    const { store, downloads, space } = this.deps;
    if (downloads.get(digest)) return 'downloading';
    if (await store.stat(digest)) return 'cached';
    let download: BlobDownload | undefined;
    // Reserved up front (the size is known): a disk without room is a skip, not a pass-through.
    const reservation = await space.tryReserve(size, () => download?.written ?? 0);
    if (!reservation) return 'no-room';
    // A client may have started it while the store and the disk were asked.
    if (downloads.get(digest)) {
      reservation.release();
      return 'downloading';
    }
    download = this.startDownload(route, digest, false, { slot, background: true, reservation });
    const upstream = route.upstream.name;
    this.prefetched.delete(digest.value);
    this.prefetched.set(digest.value, { upstream, committedBytes: 0 });
    if (this.prefetched.size > MAX_PREFETCHED_REMEMBERED) this.prefetched.delete(this.prefetched.keys().next().value!);
    const { metrics } = this.deps;
    download.finished.then(
      () => {
        const bytes = download.totalSize ?? size;
        metrics.prefetchBytes.inc({ upstream }, bytes);
        const entry = this.prefetched.get(digest.value);
        // Not claimed while it downloaded: counted as downloaded for nobody until a client asks.
        if (entry) {
          entry.committedBytes = bytes;
          metrics.prefetchUnclaimedBytes.inc({ upstream }, bytes);
        }
      },
      () => this.prefetched.delete(digest.value),
    );
    return download;
  }

  /** A client asked for `digest`: if it was prefetched, it was not for nothing. */
  private claim(digest: string): void {
    const entry = this.prefetched.get(digest);
    if (!entry) return;
    this.prefetched.delete(digest);
    if (entry.committedBytes > 0) this.deps.metrics.prefetchUnclaimedBytes.dec({ upstream: entry.upstream }, entry.committedBytes);
  }

  /**
   * The one download of `digest`, from the replica that owns it or from the upstream.
   * `background`: a prefetch, with its slot and disk room already taken.
   */
  private startDownload(
    route: Route,
    digest: Digest,
    fromPeer: boolean,
    background?: Required<Pick<DownloadStart, 'slot'>> & { background: true; reservation: Reservation },
  ): BlobDownload {
    const { downloads, peers, upstreams, space, access, metrics } = this.deps;
    const described = this.deps.descriptorSize(digest.value);
    // The download (and a pass-through) never takes more than this, whatever the upstream sends.
    const maxSize = background?.reservation.bytes ?? described ?? this.deps.maxBlobSize;
    let download: BlobDownload | undefined;
    let reservation: Reservation | undefined = background?.reservation;
    const fromUpstream = upstreamBlobSource(upstreams, route, digest, {
      admit: async (response, totalSize) => {
        // A prefetch reserved its descriptor's size before it started (a larger blob is refused as too big).
        if (background) return;
        const expected = totalSize ?? described;
        // Larger than it may be: the download refuses it as soon as admitted. Size unknown: the writes will tell.
        if (expected === undefined || expected > maxSize) return;
        // The room is taken before the first byte: concurrent downloads cannot all count on the same free space.
        reservation = await space.tryReserve(expected, () => download?.written ?? 0);
        if (!reservation) throw new NoRoomForBlob(response, totalSize, maxSize);
      },
    });
    // A peer's request is never forwarded again: the owner downloads it itself.
    const owner = fromPeer ? undefined : peers?.ownerOf(digest);
    const source = owner ? peers!.source(owner, route, digest, fromUpstream) : fromUpstream;
    // A peer's request is not limited again: the replica that forwarded it holds a slot for it
    // (and two replicas waiting on each other's slots could otherwise stall until the queue times out).
    download = downloads.start(digest, { ...source, maxSize }, background ? { slot: background.slot, background: true } : { limited: !fromPeer });
    metrics.downloadsInFlight.inc();
    this.startedFor.set(digest.value, repositoryKey(route));
    void download.finished
      .then(() => access.link(route, digest.value))
      .catch((err: unknown) => {
        if (err instanceof RegistryError && err.code === 'DIGEST_INVALID' && err.status >= 500) metrics.digestMismatches.inc({ upstream: route.upstream.name });
      })
      .finally(() => {
        // Committed, failed or aborted: what it holds is on disk now, or free again.
        reservation?.release();
        metrics.downloadsInFlight.dec();
        this.startedFor.delete(digest.value);
      });
    return download;
  }

  private joinsOwnRepository(route: Route, digest: Digest): boolean {
    return this.startedFor.get(digest.value) === repositoryKey(route);
  }

  private serveFromStore(digest: Digest, start: number, end: number | undefined): Readable {
    const stream = this.deps.store.createReadStream(digest, start, end);
    this.serving.set(digest.value, (this.serving.get(digest.value) ?? 0) + 1);
    stream.once('close', () => {
      const n = (this.serving.get(digest.value) ?? 1) - 1;
      if (n <= 0) this.serving.delete(digest.value);
      else this.serving.set(digest.value, n);
    });
    return stream;
  }

  /**
   * Follow a running download (its temp file, also while it commits), or the store once it
   * has committed. Every path streams with backpressure: a paused client holds no copy.
   */
  private readDownload(download: BlobDownload, digest: Digest, start: number, end: number | undefined): Readable {
    if (download.state === 'done') return this.serveFromStore(digest, start, end);
    if (download.state === 'failed') {
      const failed = new Readable({ read() {} });
      failed.destroy(download.error ?? new Error('download failed'));
      return failed;
    }
    const reader = download.createReader(start, end);
    if (reader) return reader;
    // Committing, and the temp file has just left: the store has the blob in a moment.
    const out = new PassThrough({ highWaterMark: READ_CHUNK_BYTES });
    download.finished.then(
      () => {
        if (out.destroyed) return;
        pipeline(this.serveFromStore(digest, start, end), out).catch((err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))));
      },
      (err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))),
    );
    return out;
  }
}

const repositoryKey = (route: Route) => `${route.upstream.name}\u0000${route.repository}`;
