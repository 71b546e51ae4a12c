// Blobs for a routed request. In the store: streamed from it (ranges too). Not yet: the one
// download for the digest is started or joined (cache/downloads.ts), and the client reads
// it as it grows, ranges as soon as their bytes are there. The download's bytes come from
// the upstream, or from the replica that owns the digest. A disk without room for the blob
// passes it through, verified and uncached.

import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { READ_CHUNK_BYTES, type BlobStore } from '../cache/blob-store.js';
import type { BlobDownload, Downloads } from '../cache/downloads.js';
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

export class BlobService {
  /** Open store read streams per digest: content being served is never evicted. */
  private readonly serving = new Map<string, number>();
  /**
   * The (upstream, repository) each running download was started for. A client of that same
   * repository joins it as it is: the upstream's answer to the download is the check (its
   * link is written when the download commits). Bounded by the downloads in flight.
   */
  private readonly startedFor = new Map<string, string>();

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

  /** The one download of `digest`, from the replica that owns it or from the upstream. */
  private startDownload(route: Route, digest: Digest, fromPeer: boolean): BlobDownload {
    const { downloads, peers, upstreams, space, access, metrics } = this.deps;
    const described = this.deps.descriptorSize(digest.value);
    // The download (and a pass-through) never takes more than this, whatever the upstream sends.
    const maxSize = described ?? this.deps.maxBlobSize;
    let download: BlobDownload | undefined;
    let reservation: Reservation | undefined;
    const fromUpstream = upstreamBlobSource(upstreams, route, digest, {
      admit: async (response, totalSize) => {
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
    download = downloads.start(digest, { ...source, maxSize }, { limited: !fromPeer });
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
