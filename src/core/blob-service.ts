// Blobs for a routed request. In the store: streamed from it (ranges too). Not yet: the one
// download for the digest is started or joined (cache/downloads.ts), and the client reads
// it as it grows, ranges as soon as their bytes are there. The download's bytes come from
// the upstream, or from the replica that owns the digest. A disk without room for the blob
// passes it through, verified and uncached. A prefetch (core/prefetch.ts) starts the same
// download before any client asks, for clients to join. With `workers: N` the one download
// is one across workers: the first worker to claim a digest downloads it and reports its
// progress; the others' clients read its temp file as it grows (core/remote-download.ts).

import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { READ_CHUNK_BYTES, type BlobStore } from '../cache/blob-store.js';
import type { BlobDownload, Downloads, DownloadStart } from '../cache/downloads.js';
import { OwnerHadNoRoom, RemoteDownload, toShared } from './remote-download.js';
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
import type { DownloadNews, SiblingWorkers } from './sibling-workers.js';

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
  /** The other workers of this mirror (workers: N): one download per digest across them. */
  siblings?: SiblingWorkers;
}

/** A download this worker's clients read: its own, or another worker's. */
type Joinable = BlobDownload | RemoteDownload;

/** How often an owner reports a download's progress to its followers at most (state changes go at once). */
const NEWS_INTERVAL_MS = 10;
/** A follower whose owner had no room claims anew at most this often before giving up. */
const MAX_NO_ROOM_RETRIES = 3;

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
  /** Other workers' downloads this worker's clients read (workers: N). */
  private readonly following = new Map<string, RemoteDownload>();
  /** Claims under way, so that concurrent misses in this worker claim a digest once. */
  private readonly claiming = new Map<string, Promise<Joinable | 'stored'>>();

  constructor(private readonly deps: BlobServiceDeps) {
    deps.siblings?.onDownloadNews((digest, news) => this.following.get(digest)?.apply(news));
    deps.siblings?.onFollowers((digest, followers) => deps.downloads.get(digest)?.setRemoteReaders(followers));
  }

  /** Is `digest` being read from the store or downloaded right now? */
  isBusy(digest: Digest): boolean {
    return (this.serving.get(digest.value) ?? 0) > 0 || this.deps.downloads.get(digest) !== undefined || this.following.has(digest.value);
  }

  /** Every digest being read from the store or downloaded right now. */
  inUse(): string[] {
    return [...this.serving.keys(), ...this.deps.downloads.digests(), ...this.following.keys()];
  }

  /** The download of `digest` this worker's clients can join: its own, or one it follows. */
  private joinable(digest: Digest): Joinable | undefined {
    return this.deps.downloads.get(digest) ?? this.following.get(digest.value);
  }

  /** `client`: the address whose budget of upstream misses a miss spends (none: not counted). */
  async get(route: Route, digest: Digest, options: { fromPeer?: boolean; client?: string; retries?: number } = {}): Promise<BlobResult> {
    const { store, access, offline, budget } = this.deps;
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
    let download = this.joinable(digest);
    let outcome: CacheOutcome = 'coalesced';
    if (download) {
      // Joining another repository's download: this repository must contain the blob too.
      if (!this.joinsOwnRepository(route, digest) && !access.isLinked(route, digest.value)) {
        budget.charge(options.client);
        await access.confirmUpstreamHas(route, digest, 'blob');
      }
    } else {
      // Another request of this worker is claiming it already: this one joins whatever it gets.
      const joining = this.claiming.has(digest.value);
      if (!joining) budget.charge(options.client);
      const started = await this.startOrFollow(route, digest, options.fromPeer === true);
      // Another worker committed it between our look at the store and the claim.
      if (started === 'stored') return this.get(route, digest, options);
      if (started instanceof RemoteDownload || joining) {
        const repository = started instanceof RemoteDownload ? started.repository : this.startedFor.get(digest.value);
        if (repository !== repositoryKey(route) && !access.isLinked(route, digest.value)) await access.confirmUpstreamHas(route, digest, 'blob');
      } else outcome = 'miss';
      download = started;
    }
    try {
      await download.ready;
    } catch (err) {
      if (err instanceof NoRoomForBlob) return passThrough(this.deps.upstreams, route, digest, err, this.deps.logger, this.deps.storagePath);
      // The owner had no room: claim it anew (this worker may own it then, and pass it through).
      if (err instanceof OwnerHadNoRoom && (options.retries ?? 0) < MAX_NO_ROOM_RETRIES) return this.get(route, digest, { ...options, retries: (options.retries ?? 0) + 1 });
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
    const { store, access, offline, budget } = this.deps;
    const stat = await store.stat(digest);
    if (stat) {
      if (!this.joinsOwnRepository(route, digest)) await access.ensureLinked(route, digest, 'blob');
      return { digest: digest.value, size: stat.size, outcome: 'hit' };
    }
    if (offline) throw offlineMiss('BLOB_UNKNOWN', route, digest.value);
    const download = this.joinable(digest);
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
    const { store, space, siblings } = this.deps;
    if (this.joinable(digest)) return 'downloading';
    if (await store.stat(digest)) return 'cached';
    let download: BlobDownload | undefined;
    // Reserved up front (the size is known): a disk without room is a skip, not a pass-through.
    const reservation = await space.tryReserve(size, () => download?.written ?? 0);
    if (!reservation) return 'no-room';
    // A client may have started it while the store and the disk were asked.
    if (this.joinable(digest) || this.claiming.has(digest.value)) {
      reservation.release();
      return 'downloading';
    }
    if (siblings) {
      // Claimed like a client's miss (a client of this worker asking meanwhile waits for the claim).
      let settle!: (joined: Joinable) => void;
      let refuse!: (err: Error) => void;
      const claimed = new Promise<Joinable>((resolve, reject) => ((settle = resolve), (refuse = reject)));
      claimed.catch(() => undefined);
      this.claiming.set(digest.value, claimed);
      try {
        const claim = await siblings.claimDownload(digest.value, repositoryKey(route));
        if (claim.role === 'follow') {
          // Another worker downloads it already: this worker's clients will follow it.
          const remote = this.follow(route, digest, claim.repository);
          if (claim.news) remote.apply(claim.news);
          settle(remote);
          reservation.release();
          return 'downloading';
        }
        download = this.startDownload(route, digest, false, { slot, background: true, reservation });
        settle(download);
      } catch (err) {
        refuse(err instanceof Error ? err : new Error(String(err)));
        throw err;
      } finally {
        this.claiming.delete(digest.value);
      }
    } else download = this.startDownload(route, digest, false, { slot, background: true, reservation });
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
    if (this.deps.siblings) this.report(download);
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

  /**
   * A miss: start the download, or (workers: N) claim it first and follow the worker that
   * owns it. 'stored': another worker committed it meanwhile (read the store).
   */
  private startOrFollow(route: Route, digest: Digest, fromPeer: boolean): Promise<Joinable | 'stored'> {
    const { siblings } = this.deps;
    if (!siblings) return Promise.resolve(this.startDownload(route, digest, fromPeer));
    const pending = this.claiming.get(digest.value);
    if (pending) return pending;
    const claimed = (async (): Promise<Joinable | 'stored'> => {
      const claim = await siblings.claimDownload(digest.value, repositoryKey(route));
      this.deps.logger.debug({ digest: digest.value, role: claim.role, owner: claim.role === 'follow' ? claim.owner : undefined, news: claim.role === 'follow' ? claim.news : undefined }, 'blob download claimed');
      if (claim.role === 'own') {
        if (await this.deps.store.stat(digest)) {
          siblings.reportDownload(digest.value, { state: 'done', written: 0, verified: true });
          return 'stored';
        }
        return this.startDownload(route, digest, fromPeer);
      }
      const remote = this.follow(route, digest, claim.repository);
      if (claim.news) remote.apply(claim.news);
      return remote;
    })();
    this.claiming.set(digest.value, claimed);
    void claimed.finally(() => this.claiming.delete(digest.value)).catch(() => undefined);
    return claimed;
  }

  /** Follow another worker's download of `digest`; a takeover starts this worker's own. */
  private follow(route: Route, digest: Digest, repository: string): RemoteDownload {
    const siblings = this.deps.siblings!;
    const forget = (remote: RemoteDownload) => {
      if (this.following.get(digest.value) !== remote) return;
      this.following.delete(digest.value);
      siblings.unfollowDownload(digest.value);
    };
    const remote = new RemoteDownload(digest, repository, {
      idle: forget,
      orphaned: (remote) => {
        this.deps.logger.warn({ digest: digest.value }, 'the worker downloading this blob died; claiming the download anew');
        void siblings.claimDownload(digest.value, repositoryKey(route)).then(
          async (claim) => {
            if (claim.role === 'follow') {
              remote.repository = claim.repository;
              if (claim.news) remote.apply(claim.news);
              return;
            }
            if (await this.deps.store.stat(digest)) {
              siblings.reportDownload(digest.value, { state: 'done', written: 0, verified: true });
              remote.apply({ state: 'done', written: remote.totalSize ?? 0, verified: true });
              return;
            }
            // Taken over: this worker downloads it, for its own clients and the others'.
            this.following.delete(digest.value);
            remote.mirror(this.deps.downloads.get(digest) ?? this.startDownload(route, digest, false));
          },
          (err: unknown) => remote.fail(err instanceof Error ? err : new Error(String(err))),
        );
      },
    });
    this.following.set(digest.value, remote);
    void remote.finished.then(
      () => forget(remote),
      () => forget(remote),
    );
    return remote;
  }

  /** The owner's side: its download's progress to the workers following it, at most every NEWS_INTERVAL_MS. */
  private report(download: BlobDownload): void {
    const siblings = this.deps.siblings!;
    const digest = download.digest.value;
    let sent: DownloadNews | undefined;
    let timer: NodeJS.Timeout | undefined;
    const snapshot = (): DownloadNews => ({
      state: download.state,
      path: download.tempPath,
      totalSize: download.totalSize,
      written: download.written,
      verified: download.verified,
      error: download.state === 'failed' ? toShared(download.error, download.error instanceof NoRoomForBlob) : undefined,
    });
    const send = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (sent?.state === 'done' || sent?.state === 'failed') return;
      sent = snapshot();
      siblings.reportDownload(digest, sent);
    };
    const onProgress = () => {
      const now = snapshot();
      const changed = !sent || now.state !== sent.state || now.verified !== sent.verified || now.totalSize !== sent.totalSize || now.path !== sent.path;
      if (changed) send();
      else if (!timer) {
        timer = setTimeout(send, NEWS_INTERVAL_MS);
        timer.unref();
      }
    };
    download.on('progress', onProgress);
    download.ready.then(onProgress, onProgress);
    download.finished.then(onProgress, onProgress).finally(() => download.off('progress', onProgress));
  }

  private joinsOwnRepository(route: Route, digest: Digest): boolean {
    const remote = this.deps.downloads.get(digest) ? undefined : this.following.get(digest.value);
    if (remote) return remote.repository === repositoryKey(route);
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
  private readDownload(download: Joinable, digest: Digest, start: number, end: number | undefined): Readable {
    if (download.state === 'done') return this.serveFromStore(digest, start, end);
    if (download.state === 'failed') {
      const failed = new Readable({ read() {} });
      failed.destroy(download.error ?? new Error('download failed'));
      return failed;
    }
    const reader = download.createReader(start, end);
    if (reader) return reader;
    // No temp file to read now (it has just left for the store, or another worker's news lags):
    // the store has the blob once the download finishes; a failed one fails this reader.
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
