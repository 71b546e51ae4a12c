// The core service: manifests, blobs and tags for a routed request, from the cache when
// it may, from the upstream when it must. Used by the HTTP server and the CLI alike.

import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { createBlobStore, type BlobStore } from './cache/blob-store.js';
import { Downloads, type BlobDownload, type DownloadSource } from './cache/downloads.js';
import { expiryFrom, tagFreshness } from './cache/freshness.js';
import { CacheIndex, type TagRow } from './cache/index.js';
import { TokenBucket } from './cache/rate-limiter.js';
import { Evictor } from './cache/eviction.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { MirrorMetrics } from './metrics.js';
import { digestOf, DigestVerifier } from './oci/digest.js';
import { parseErrorBody, RegistryError } from './oci/errors.js';
import { childDigests, MAX_MANIFEST_BYTES, parseManifest } from './oci/manifest.js';
import { negotiateAccept } from './oci/media-types.js';
import { parseDigest, type Digest, type ManifestReference } from './oci/reference.js';
import { TokenCache } from './upstream/auth.js';
import { createUpstreamAgent, describeNetworkError, headerValue, UpstreamClient, type UpstreamResponse } from './upstream/client.js';
import { UpstreamRegistry } from './upstream/registry.js';
import { UpstreamRouter, type Route } from './upstream/router.js';
import type { Dispatcher } from 'undici';
import { ByteRateLimiter } from './cache/rate-limiter.js';
import { HashRing } from './cluster/ring.js';
import { Agent, request as undiciRequest } from 'undici';

/** Why a stale tag was served (a metric label: a few fixed values). */
type StaleReason = 'upstream-error' | 'rate-limit-reserve' | 'revalidation-budget';

/** How a request was answered, for the access log and metrics. */
export type CacheOutcome = 'hit' | 'miss' | 'coalesced' | 'revalidated' | 'stale';

export interface ManifestResult {
  digest: string;
  mediaType: string;
  bytes: Buffer;
  outcome: CacheOutcome;
  /** Set when served stale: the Warning header's text. */
  warning?: string;
}

export interface BlobResult {
  digest: string;
  /** Total size; undefined only when an upstream streams without a length. */
  size: number | undefined;
  outcome: CacheOutcome;
  /** Where the client may fetch the bytes directly (a presigned object-store URL). */
  redirect?: string | undefined;
  /** Bytes [start, end] inclusive (end undefined = to the end); absent for a HEAD. */
  open?: (start: number, end: number | undefined) => Readable;
}

export interface TagList {
  name: string;
  tags: string[];
  /** The last tag returned when more may follow (for the Link header). */
  next: string | undefined;
  outcome: CacheOutcome;
}

interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface MirrorOptions {
  config: Config;
  logger: Logger;
  clock?: Clock;
  metrics?: MirrorMetrics;
}

const SECOND = 1000;

/**
 * The cache's disk cannot take this blob: the download is not started, and the waiting
 * client is served straight from the upstream response instead (verified, not stored).
 */
class NoRoomForBlob extends Error {
  readonly code = 'ENOSPC';
  claimed = false;
  constructor(
    readonly response: UpstreamResponse,
    readonly size: number | undefined,
  ) {
    super('not enough free space in the cache for this blob');
  }
}

export class Mirror {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly metrics: MirrorMetrics;
  readonly router: UpstreamRouter;
  readonly store: BlobStore;
  readonly index: CacheIndex;
  readonly downloads: Downloads;
  readonly evictor: Evictor;
  /** Open store read streams per digest: content being served is never evicted. */
  private readonly serving = new Map<string, number>();
  private readonly agents: Dispatcher[] = [];
  /** Replicas: who owns which digest, and how to reach them. */
  private readonly ring: HashRing | undefined;
  private readonly peerAgent: Agent | undefined;
  /** Per upstream: the bandwidth cap shared by all its downloads. */
  private readonly bandwidth = new Map<string, ByteRateLimiter>();
  private readonly clients = new Map<string, UpstreamClient>();
  /** Manifest bytes by digest, bounded by bytes: the hot path never touches the disk. */
  private readonly manifestCache = new LRUCache<string, StoredManifest>({
    maxSize: 64 * 1024 * 1024,
    sizeCalculation: (m) => m.bytes.length + 200,
  });
  /** Tag rows by key, in front of SQLite. */
  private readonly tagCache = new LRUCache<string, TagRow>({ max: 20_000 });
  /** (upstream, repo, digest) links known to exist. */
  private readonly linkCache = new LRUCache<string, true>({ max: 200_000 });
  /** Single-flight for manifest fetches and tag revalidations. */
  private readonly inFlight = new Map<string, Promise<ManifestResult>>();
  private readonly flushTimer: NodeJS.Timeout;
  /** Per upstream: revalidations are bounded in rate, not only made cheap. */
  private readonly revalidationBudget = new Map<string, TokenBucket>();

  private constructor(options: MirrorOptions, store: BlobStore) {
    this.config = options.config;
    this.logger = options.logger;
    this.clock = options.clock ?? systemClock;
    this.metrics = options.metrics ?? new MirrorMetrics();
    const upstreams = this.config.upstreams.map((u) => new UpstreamRegistry(u));
    const fallback = upstreams.find((u) => u.name === this.config.defaultUpstream) ?? upstreams[0];
    if (!fallback) throw new Error('no upstream configured');
    this.router = new UpstreamRouter(upstreams, fallback);
    this.store = store;
    this.index = new CacheIndex(join(this.config.storage.path, 'index.db'));
    const tokens = new TokenCache(this.clock);
    for (const u of upstreams) {
      const dispatcher = createUpstreamAgent(this.config.timeouts, { proxy: u.proxy, maxConnections: u.maxConnections });
      this.agents.push(dispatcher);
      if (u.maxBytesPerSecond > 0) this.bandwidth.set(u.name, new ByteRateLimiter(u.maxBytesPerSecond));
      this.clients.set(
        u.name,
        new UpstreamClient(u, {
          dispatcher, tokens, clock: this.clock, logger: this.logger, retries: this.config.retries, breaker: this.config.breaker,
        }),
      );
      this.revalidationBudget.set(u.name, new TokenBucket(this.config.revalidation.perSecond, this.config.revalidation.burst, this.clock));
    }
    this.downloads = new Downloads(this.store, {
      resumeAttempts: this.config.downloads.resumeAttempts,
      writeTimeoutMs: this.config.downloads.writeTimeoutMs,
      segmentThreshold: this.config.downloads.segmentThreshold,
      logger: this.logger,
      onCommitted: (digest, size) => {
        this.index.putBlob(digest.value, size, this.clock.now());
        this.evictor.added(size);
      },
    });
    this.evictor = new Evictor(this.store, this.index, this.config.storage, this.logger, () => this.clock.now(), (digest) =>
      (this.serving.get(digest) ?? 0) > 0 || this.downloads.get(parseDigest(digest)) !== undefined,
      (digest, size) => {
        this.forgetInMemory(digest);
        this.metrics.evictions.inc();
        this.metrics.evictedBytes.inc(size);
      },
    );
    if (this.config.cluster) {
      this.ring = new HashRing(this.config.cluster.peers);
      this.peerAgent = new Agent({ connect: { timeout: 2000 }, headersTimeout: this.config.timeouts.headersMs, bodyTimeout: this.config.timeouts.bodyIdleMs });
    }
    this.metrics.observe({
      cacheBytes: () => this.evictor.usageBytes,
      cacheObjects: () => {
        const u = this.index.usage();
        return u.blobs + u.manifests;
      },
      breakers: () => [...this.clients.values()].map((c) => ({ upstream: c.registry.name, state: c.breaker.state })),
    });
    this.flushTimer = setInterval(() => this.index.flushAccessTimes(), 5 * SECOND);
    this.flushTimer.unref();
  }

  static async create(options: MirrorOptions): Promise<Mirror> {
    const store = await createBlobStore(options.config);
    const { sweptTempFiles } = await store.init();
    const mirror = new Mirror(options, store);
    if (sweptTempFiles > 0) mirror.logger.info({ sweptTempFiles }, 'removed unfinished downloads left by an earlier run');
    return mirror;
  }

  clientFor(name: string): UpstreamClient | undefined {
    return this.clients.get(name);
  }

  client(route: Route): UpstreamClient {
    const c = this.clients.get(route.upstream.name);
    if (!c) throw new Error(`no client for upstream ${route.upstream.name}`);
    return c;
  }

  // ---------------------------------------------------------------- manifests

  async getManifest(route: Route, reference: ManifestReference, accept: string | string[] | undefined): Promise<ManifestResult> {
    return reference.kind === 'digest' ? this.manifestByDigest(route, reference.digest) : this.manifestByTag(route, reference.tag, accept);
  }

  private async manifestByDigest(route: Route, digest: Digest): Promise<ManifestResult> {
    const stored = await this.storedManifest(digest);
    if (stored) {
      await this.ensureLinked(route, digest, 'manifest');
      this.index.recordAccess(digest.value, this.clock.now());
      return { ...stored, outcome: 'hit' };
    }
    if (this.config.offline) throw this.offlineMiss('MANIFEST_UNKNOWN', route, digest.value);
    return this.singleFlight(`m\u0000${route.upstream.name}\u0000${route.repository}\u0000${digest.value}`, () =>
      this.fetchManifest(route, digest.value, undefined, { key: 'all', types: this.acceptTypes(route, undefined) }),
    );
  }

  private async manifestByTag(route: Route, tag: string, accept: string | string[] | undefined): Promise<ManifestResult> {
    const negotiated = negotiateAccept(accept, route.upstream.allowSchema1);
    const key = `${route.upstream.name}\u0000${route.repository}\u0000${tag}\u0000${negotiated.key}`;
    let row = this.tagCache.get(key);
    if (!row) {
      row = this.index.getTag(route.upstream.name, route.repository, tag, negotiated.key);
      if (row) this.tagCache.set(key, row);
    }
    const now = this.clock.now();
    if (row && tagFreshness(row, now, this.config.offline) === 'fresh') {
      const stored = await this.storedManifest(parseDigest(row.digest));
      if (stored) {
        this.index.recordAccess(row.digest, now);
        return { ...stored, outcome: 'hit' };
      }
      // The bytes are gone (evicted or removed by verify): fetch again below.
      row = undefined;
    }
    if (this.config.offline) {
      throw this.offlineMiss('MANIFEST_UNKNOWN', route, `${route.repository}:${tag}`);
    }
    const current = row;
    return this.singleFlight(`t\u0000${key}`, async () => {
      if (current) return this.revalidateTag(route, current, key, negotiated.types);
      return this.fetchManifest(route, tag, { key, accept: negotiated.key }, negotiated);
    });
  }

  private acceptTypes(route: Route, accept: string | string[] | undefined): string[] {
    return negotiateAccept(accept, route.upstream.allowSchema1).types;
  }

  /** A stale tag: ask the upstream with a HEAD (free on Docker Hub's pull limit). */
  private async revalidateTag(route: Route, row: TagRow, key: string, acceptTypes: string[]): Promise<ManifestResult> {
    const stale = await this.storedManifest(parseDigest(row.digest));
    if (stale) {
      // Spend neither the upstream's pull budget nor our revalidation budget when they run low.
      const rateLimit = this.client(route).rateLimit;
      const reserve = this.config.revalidation.rateLimitReserve;
      if (rateLimit?.remaining !== undefined && rateLimit.remaining <= reserve) {
        this.extendFreshness(row, key);
        return this.serveStale(route, row, stale, `rate limit nearly spent (${rateLimit.remaining} left)`, 'rate-limit-reserve');
      }
      if (!this.revalidationBudget.get(route.upstream.name)!.tryTake()) {
        return this.serveStale(route, row, stale, 'revalidation rate limit reached', 'revalidation-budget');
      }
    }
    let response: UpstreamResponse;
    try {
      response = await this.upstreamRequest(route, 'manifest', {
        method: 'HEAD',
        path: `/v2/${route.repository}/manifests/${row.tag}`,
        headers: { accept: acceptTypes.join(', ') },
      });
    } catch (err) {
      if (stale) return this.serveStale(route, row, stale, describeNetworkError(err));
      throw err;
    }
    await response.body.dump().catch(() => undefined);
    const now = this.clock.now();
    if (response.status === 200) {
      const digest = headerValue(response.headers, 'docker-content-digest');
      if (stale && digest === row.digest) {
        const updated: TagRow = { ...row, checkedAt: now, expiresAt: expiryFrom(now, route.upstream.ttlMs) };
        this.index.touchTag(row.upstream, row.repo, row.tag, row.accept, updated.checkedAt, updated.expiresAt);
        this.tagCache.set(key, updated);
        return { ...stale, outcome: 'revalidated' };
      }
      // Moved (or the HEAD did not say): fetch the tag's new manifest.
      try {
        return await this.fetchManifest(route, row.tag, { key, accept: row.accept }, { key: row.accept, types: acceptTypes });
      } catch (err) {
        if (stale && isUpstreamTrouble(err)) return this.serveStale(route, row, stale, (err as Error).message);
        throw err;
      }
    }
    if (response.status === 404) {
      // The upstream says the tag is gone: so do we.
      this.index.deleteTag(row.upstream, row.repo, row.tag);
      this.tagCache.delete(key);
      throw new RegistryError('MANIFEST_UNKNOWN', `${route.repository}:${row.tag} no longer exists upstream`, {
        detail: { upstream: route.upstream.name, repository: route.repository, tag: row.tag },
      });
    }
    const error = this.statusError(route, response, 'manifest', '');
    if (stale) return this.serveStale(route, row, stale, error.message);
    throw error;
  }

  /** Trust a tag for another TTL without asking (the upstream's budget is nearly spent). */
  private extendFreshness(row: TagRow, key: string): void {
    const now = this.clock.now();
    const ttl = this.router.get(row.upstream)?.ttlMs ?? 0;
    const updated: TagRow = { ...row, expiresAt: expiryFrom(now, ttl) };
    this.index.touchTag(row.upstream, row.repo, row.tag, row.accept, row.checkedAt, updated.expiresAt);
    this.tagCache.set(key, updated);
  }

  private serveStale(route: Route, row: TagRow, stale: StoredManifest, reason: string, category: StaleReason = 'upstream-error'): ManifestResult {
    this.metrics.staleServed.inc({ upstream: route.upstream.name, reason: category });
    this.logger.warn({ upstream: route.upstream.name, repository: route.repository, tag: row.tag, reason }, 'serving stale tag: upstream could not revalidate it');
    const age = Math.max(0, Math.round((this.clock.now() - row.checkedAt) / SECOND));
    return {
      ...stale,
      outcome: 'stale',
      warning: `110 registry-mirror "Response is stale: upstream ${route.upstream.name} unavailable (${reason.replace(/"/g, "'")}); last checked ${age}s ago"`,
    };
  }

  /** GET a manifest from the upstream, verify, store, record the tag when by tag. */
  private async fetchManifest(
    route: Route,
    reference: string,
    tag: { key: string; accept: string } | undefined,
    negotiated: { key: string; types: string[] },
  ): Promise<ManifestResult> {
    const response = await this.upstreamRequest(route, 'manifest', {
      method: 'GET',
      path: `/v2/${route.repository}/manifests/${reference}`,
      headers: { accept: negotiated.types.join(', ') },
    });
    if (response.status !== 200) {
      const body = await readLimited(response.body, 64 * 1024).catch(() => Buffer.alloc(0));
      throw this.statusError(route, response, 'manifest', body.toString('utf8'), reference);
    }
    const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES).catch((err: unknown) => {
      throw new RegistryError('MANIFEST_INVALID', `manifest from ${route.upstream.name} is unreadable: ${(err as Error).message}`, {
        status: 502,
        detail: { upstream: route.upstream.name },
      });
    });
    const wantDigest = tag ? undefined : parseDigest(reference);
    const algorithm = wantDigest?.algorithm ?? 'sha256';
    const computed = digestOf(bytes, algorithm);
    const announced = headerValue(response.headers, 'docker-content-digest');
    if ((wantDigest && computed !== wantDigest.value) || (announced && announced.startsWith(`${algorithm}:`) && announced !== computed)) {
      this.metrics.digestMismatches.inc({ upstream: route.upstream.name });
      throw new RegistryError('DIGEST_INVALID', `upstream ${route.upstream.name} sent a manifest that does not match its digest`, {
        status: 502,
        detail: { upstream: route.upstream.name, expected: wantDigest?.value ?? announced, computed },
      });
    }
    const parsed = parseManifest(bytes, headerValue(response.headers, 'content-type'));
    const digest = parseDigest(computed);
    const now = this.clock.now();
    try {
      await this.store.write(digest, bytes);
    } catch (err) {
      // Disk full or failing: the client still gets its verified manifest, uncached.
      this.logger.error({ digest: computed, err: (err as Error).message }, 'could not store manifest; serving it uncached');
      return { digest: computed, mediaType: parsed.mediaType, bytes, outcome: 'miss' };
    }
    try {
      this.index.putManifest(
        { digest: computed, mediaType: parsed.mediaType, size: bytes.length, children: childDigests(parsed) },
        { upstream: route.upstream.name, repo: route.repository },
        now,
      );
    } catch (err) {
      this.logger.error({ digest: computed, err: (err as Error).message }, 'could not index manifest; serving it uncached');
      return { digest: computed, mediaType: parsed.mediaType, bytes, outcome: 'miss' };
    }
    this.linkCache.set(linkKey(route, computed), true);
    this.evictor.added(bytes.length);
    const stored: StoredManifest = { digest: computed, mediaType: parsed.mediaType, bytes };
    this.manifestCache.set(computed, stored);
    if (tag) {
      const row: TagRow = {
        upstream: route.upstream.name, repo: route.repository, tag: reference, accept: tag.accept,
        digest: computed, mediaType: parsed.mediaType, fetchedAt: now, checkedAt: now,
        expiresAt: expiryFrom(now, route.upstream.ttlMs),
      };
      try {
        this.index.putTag(row);
        this.tagCache.set(tag.key, row);
      } catch (err) {
        this.logger.error({ tag: reference, err: (err as Error).message }, 'could not record tag in the index');
      }
    }
    return { ...stored, outcome: 'miss' };
  }

  private async storedManifest(digest: Digest): Promise<StoredManifest | undefined> {
    const cached = this.manifestCache.get(digest.value);
    if (cached) return cached;
    const row = this.index.getManifest(digest.value);
    if (!row) return this.store.kind === 's3' ? this.adoptSharedManifest(digest) : undefined;
    const bytes = await this.store.read(digest);
    if (!bytes) {
      // Index and disk disagree: the disk wins.
      this.index.deleteManifest(digest.value);
      return undefined;
    }
    const stored = { digest: row.digest, mediaType: row.mediaType, bytes };
    this.manifestCache.set(digest.value, stored);
    return stored;
  }

  /**
   * Replicas share the bucket but not their indexes: a manifest another replica stored is
   * taken from the store (verified again) before asking the upstream. Which repositories may
   * see it is still decided by links (ensureLinked).
   */
  private async adoptSharedManifest(digest: Digest): Promise<StoredManifest | undefined> {
    const bytes = await this.store.read(digest).catch(() => undefined);
    if (!bytes || bytes.length > MAX_MANIFEST_BYTES || digestOf(bytes, digest.algorithm) !== digest.value) return undefined;
    let parsed;
    try {
      parsed = parseManifest(bytes);
    } catch {
      return undefined;
    }
    this.index.putManifest({ digest: digest.value, mediaType: parsed.mediaType, size: bytes.length, children: childDigests(parsed) }, undefined, this.clock.now());
    const stored = { digest: digest.value, mediaType: parsed.mediaType, bytes };
    this.manifestCache.set(digest.value, stored);
    return stored;
  }

  /** Coalesce identical work: the first caller runs it, the others get 'coalesced'. */
  private async singleFlight(key: string, work: () => Promise<ManifestResult>): Promise<ManifestResult> {
    const running = this.inFlight.get(key);
    if (running) {
      const result = await running;
      return { ...result, outcome: result.outcome === 'stale' ? 'stale' : 'coalesced' };
    }
    const promise = work().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, promise);
    return promise;
  }

  // ---------------------------------------------------------------- blobs

  /** The replica that should download `digest` from the upstream, when it is another one. */
  private peerOwner(digest: Digest, fromPeer: boolean): string | undefined {
    if (!this.ring || fromPeer) return undefined;
    const owner = this.ring.owner(digest.value);
    return owner && owner !== this.config.cluster!.self ? owner : undefined;
  }

  async getBlob(route: Route, digest: Digest, options: { fromPeer?: boolean } = {}): Promise<BlobResult> {
    const stat = await this.store.stat(digest);
    if (stat) {
      await this.ensureLinked(route, digest, 'blob');
      this.index.recordAccess(digest.value, this.clock.now());
      return {
        digest: digest.value,
        size: stat.size,
        outcome: 'hit',
        redirect: this.store.directUrl ? await this.store.directUrl(digest) : undefined,
        open: (start, end) => this.serveFromStore(digest, start, end),
      };
    }
    if (this.config.offline) throw this.offlineMiss('BLOB_UNKNOWN', route, digest.value);
    let download = this.downloads.get(digest);
    let outcome: CacheOutcome = 'coalesced';
    if (download) {
      // Joining another repository's download: this repository must contain the blob too.
      if (!(await this.isLinked(route, digest.value))) await this.checkUpstreamHas(route, digest, 'blob');
    } else {
      const owner = this.peerOwner(digest, options.fromPeer === true);
      const upstreamSource = this.blobSource(route, digest);
      download = this.downloads.start(digest, owner ? this.peerSource(owner, route, digest, upstreamSource) : upstreamSource);
      outcome = 'miss';
      this.metrics.downloadsInFlight.inc();
      void download.finished
        .then(() => this.index.putLink(route.upstream.name, route.repository, digest.value))
        .catch((err: unknown) => {
          if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') this.metrics.digestMismatches.inc({ upstream: route.upstream.name });
        })
        .finally(() => this.metrics.downloadsInFlight.dec());
    }
    try {
      await download.ready;
    } catch (err) {
      if (err instanceof NoRoomForBlob) return this.passThrough(route, digest, err);
      throw err;
    }
    return {
      digest: digest.value,
      size: download.totalSize,
      outcome,
      open: (start, end) => this.readDownload(download, digest, start, end),
    };
  }

  /**
   * The disk is full: stream the upstream's bytes to this client without storing them.
   * The last chunk is held back until the digest matches, as for a cached download.
   */
  private async passThrough(route: Route, digest: Digest, full: NoRoomForBlob): Promise<BlobResult> {
    this.logger.warn({ digest: digest.value, size: full.size, storage: this.config.storage.path }, 'cache disk is full: passing the blob through without storing it');
    let response = full.response;
    if (full.claimed) {
      // Another client took that response: ask again.
      response = await this.upstreamRequest(route, 'blob', { method: 'GET', path: `/v2/${route.repository}/blobs/${digest.value}` });
      if (response.status !== 200) {
        await response.body.dump().catch(() => undefined);
        throw this.statusError(route, response, 'blob', '', digest.value);
      }
    }
    full.claimed = true;
    const body = response.body;
    return {
      digest: digest.value,
      size: full.size,
      outcome: 'miss',
      open: (start, end) => {
        if (start !== 0 || (end !== undefined && full.size !== undefined && end < full.size - 1)) {
          body.destroy();
          const refused = new Readable({ read() {} });
          refused.destroy(new Error('ranges are not served while the cache disk is full'));
          return refused;
        }
        return Readable.from(verifyWhileStreaming(body, digest));
      },
    };
  }

  /** Drop in-memory copies of content that left the store (evicted, or found corrupt). */
  forgetInMemory(digest: string): void {
    this.manifestCache.delete(digest);
    for (const [key, row] of this.tagCache.entries()) if (row.digest === digest) this.tagCache.delete(key);
  }

  private serveFromStore(digest: Digest, start: number, end: number | undefined): Readable {
    const stream = this.store.createReadStream(digest, start, end);
    this.serving.set(digest.value, (this.serving.get(digest.value) ?? 0) + 1);
    stream.once('close', () => {
      const n = (this.serving.get(digest.value) ?? 1) - 1;
      if (n <= 0) this.serving.delete(digest.value);
      else this.serving.set(digest.value, n);
    });
    return stream;
  }

  /** What a HEAD needs: the size, without starting a download. */
  async statBlob(route: Route, digest: Digest): Promise<BlobResult> {
    const stat = await this.store.stat(digest);
    if (stat) {
      await this.ensureLinked(route, digest, 'blob');
      return { digest: digest.value, size: stat.size, outcome: 'hit' };
    }
    if (this.config.offline) throw this.offlineMiss('BLOB_UNKNOWN', route, digest.value);
    const download = this.downloads.get(digest);
    if (download && (await this.isLinked(route, digest.value))) {
      await download.ready;
      return { digest: digest.value, size: download.totalSize, outcome: 'coalesced' };
    }
    const response = await this.upstreamRequest(route, 'blob', { method: 'HEAD', path: `/v2/${route.repository}/blobs/${digest.value}` });
    await response.body.dump().catch(() => undefined);
    if (response.status !== 200) throw this.statusError(route, response, 'blob', '', digest.value);
    this.index.putLink(route.upstream.name, route.repository, digest.value);
    this.linkCache.set(linkKey(route, digest.value), true);
    const length = headerValue(response.headers, 'content-length');
    return { digest: digest.value, size: length && /^\d+$/.test(length) ? Number(length) : undefined, outcome: 'miss' };
  }

  /** Follow a running download, or the store once it has committed. */
  private readDownload(download: BlobDownload, digest: Digest, start: number, end: number | undefined): Readable {
    if (download.state === 'running') return download.createReader(start, end);
    if (download.state === 'done') return this.serveFromStore(digest, start, end);
    if (download.state === 'failed') {
      const failed = new Readable({ read() {} });
      failed.destroy(download.error ?? new Error('download failed'));
      return failed;
    }
    // Committing: the rename is moments away.
    const out = new Readable({ read() {} });
    download.finished.then(
      () => {
        const from = this.store.createReadStream(digest, start, end);
        from.on('data', (c) => out.push(c)).on('end', () => out.push(null)).on('error', (e) => out.destroy(e));
      },
      (err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))),
    );
    return out;
  }

  /**
   * Read a blob from the replica that owns it (which downloads it from the upstream once
   * for the whole cluster). Verified here as any download; if the owner cannot be reached
   * or fails, this replica asks the upstream itself rather than fail the client.
   */
  private peerSource(owner: string, route: Route, digest: Digest, fallback: DownloadSource): DownloadSource {
    let useUpstream = false;
    const headers: Record<string, string> = { 'x-registry-mirror-peer': this.config.cluster?.secret ?? '1' };
    return {
      segments: 1,
      open: async (offset) => {
        if (!useUpstream) {
          try {
            const url = `${owner}/v2/${route.repository}/blobs/${digest.value}?ns=${encodeURIComponent(route.upstream.name)}`;
            const res = await undiciRequest(url, { method: 'GET', dispatcher: this.peerAgent, headers: offset > 0 ? { ...headers, range: `bytes=${offset}-` } : headers });
            const length = headerValue(res.headers, 'content-length');
            if (res.statusCode === 200 && offset === 0) return { body: res.body, totalSize: length ? Number(length) : undefined };
            const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(headerValue(res.headers, 'content-range') ?? '');
            if (res.statusCode === 206 && m && Number(m[1]) === offset) return { body: res.body, totalSize: Number(m[3]) };
            const text = await res.body.text().catch(() => '');
            // The owner's 404 is the upstream's: say so rather than ask again.
            if (res.statusCode === 404) throw new RegistryError('BLOB_UNKNOWN', `blob unknown to upstream ${route.upstream.name}`, { detail: { via: owner, upstreamError: parseErrorBody(text)[0] } });
            throw new Error(`peer ${owner} answered ${res.statusCode}`);
          } catch (err) {
            if (err instanceof RegistryError) throw err;
            this.logger.warn({ digest: digest.value, peer: owner, err: (err as Error).message }, 'peer unavailable; fetching from the upstream instead');
            useUpstream = true;
          }
        }
        return fallback.open(offset);
      },
    };
  }

  private blobSource(route: Route, digest: Digest): DownloadSource {
    const limiter = this.bandwidth.get(route.upstream.name);
    const path = `/v2/${route.repository}/blobs/${digest.value}`;
    return {
      segments: route.upstream.segments,
      throttle: limiter ? (bytes) => limiter.take(bytes) : undefined,
      openRange: async (start, end) => {
        const response = await this.upstreamRequest(route, 'blob', { method: 'GET', path, headers: { range: `bytes=${start}-${end}` } });
        const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(headerValue(response.headers, 'content-range') ?? '');
        if (response.status !== 200 && response.status !== 206) {
          const body = await readLimited(response.body, 64 * 1024).catch(() => Buffer.alloc(0));
          throw this.statusError(route, response, 'blob', body.toString('utf8'), digest.value);
        }
        return {
          status: response.status,
          body: response.body,
          range: m ? { start: Number(m[1]), end: Number(m[2]), total: Number(m[3]) } : undefined,
          etag: headerValue(response.headers, 'etag'),
        };
      },
      open: async (offset) => {
        const response = await this.upstreamRequest(route, 'blob', {
          method: 'GET',
          path: `/v2/${route.repository}/blobs/${digest.value}`,
          headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        });
        if (offset > 0 && response.status === 206) {
          const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headerValue(response.headers, 'content-range') ?? '');
          if (match && Number(match[1]) === offset) {
            return { body: response.body, totalSize: match[3] === '*' ? undefined : Number(match[3]) };
          }
          // A range we did not ask for: take the whole body again and skip what we have.
          await response.body.dump().catch(() => undefined);
          const whole = await this.upstreamRequest(route, 'blob', { method: 'GET', path });
          if (whole.status !== 200) {
            const body = await readLimited(whole.body, 64 * 1024).catch(() => Buffer.alloc(0));
            throw this.statusError(route, whole, 'blob', body.toString('utf8'), digest.value);
          }
          const length = headerValue(whole.headers, 'content-length');
          return { body: skipBytes(whole.body, offset), totalSize: length && /^\d+$/.test(length) ? Number(length) : undefined };
        }
        if (response.status === 200) {
          const length = headerValue(response.headers, 'content-length');
          const totalSize = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
          if (offset === 0 && totalSize !== undefined && !(await this.store.hasSpaceFor(totalSize))) {
            throw new NoRoomForBlob(response, totalSize);
          }
          const etag = headerValue(response.headers, 'etag');
          // Only an explicit "none" rules ranges out; many registries and CDNs do not announce them.
          const acceptsRanges = headerValue(response.headers, 'accept-ranges') !== 'none';
          if (offset === 0) return { body: response.body, totalSize, etag, acceptsRanges };
          // An upstream that ignores Range sends it all again: skip what we have.
          return { body: offset > 0 ? skipBytes(response.body, offset) : response.body, totalSize };
        }
        const body = await readLimited(response.body, 64 * 1024).catch(() => Buffer.alloc(0));
        throw this.statusError(route, response, 'blob', body.toString('utf8'), digest.value);
      },
    };
  }

  // ---------------------------------------------------------------- tags

  async listTags(route: Route, clientName: string, n: number | undefined, last: string | undefined): Promise<TagList> {
    if (!this.config.offline) {
      const query = new URLSearchParams();
      if (n !== undefined) query.set('n', String(n));
      if (last !== undefined) query.set('last', last);
      const qs = query.size > 0 ? `?${query}` : '';
      let failure: RegistryError;
      try {
        const response = await this.upstreamRequest(route, 'tags', { method: 'GET', path: `/v2/${route.repository}/tags/list${qs}` });
        const body = await readLimited(response.body, 16 * 1024 * 1024);
        if (response.status === 200) {
          const parsed = JSON.parse(body.toString('utf8')) as { tags?: unknown };
          // The spec wants lexical order; distribution's unpaginated answer is in storage order.
          const tags = Array.isArray(parsed.tags) ? parsed.tags.filter((t): t is string => typeof t === 'string').sort() : [];
          const hasNext = /rel="?next"?/.test(headerValue(response.headers, 'link') ?? '');
          if (hasNext) return { name: clientName, tags, next: tags.at(-1), outcome: 'miss' };
          // An upstream without pagination (distribution 2.x ignores n and last) sent it all: page it here.
          return { ...paginate(tags, n, last), name: clientName, outcome: 'miss' };
        }
        failure = this.statusError(route, response, 'tags', body.toString('utf8'));
        if (response.status === 404) throw failure;
      } catch (err) {
        if (!isUpstreamTrouble(err)) throw err;
        failure = err as RegistryError;
      }
      const known = this.index.tagsOf(route.upstream.name, route.repository);
      if (known.length === 0) throw failure;
      return { ...paginate(known, n, last), name: clientName, outcome: 'stale' };
    }
    const known = this.index.tagsOf(route.upstream.name, route.repository);
    if (known.length === 0) throw this.offlineMiss('NAME_UNKNOWN', route, route.repository);
    return { ...paginate(known, n, last), name: clientName, outcome: 'hit' };
  }

  // ---------------------------------------------------------------- upstream plumbing

  private async upstreamRequest(
    route: Route,
    kind: 'manifest' | 'blob' | 'tags' | 'ping',
    req: { method: 'GET' | 'HEAD'; path: string; headers?: Record<string, string> },
  ): Promise<UpstreamResponse> {
    const started = performance.now();
    const client = this.client(route);
    try {
      const response = await client.request({ ...req, repository: route.repository });
      this.metrics.upstreamRequests.inc({ upstream: route.upstream.name, kind, status: String(response.status) });
      this.metrics.upstreamLatency.observe({ upstream: route.upstream.name, kind }, (performance.now() - started) / 1000);
      if (client.rateLimit?.remaining !== undefined) this.metrics.rateLimitRemaining.set({ upstream: route.upstream.name }, client.rateLimit.remaining);
      return response;
    } catch (err) {
      this.metrics.upstreamRequests.inc({ upstream: route.upstream.name, kind, status: 'error' });
      throw err;
    }
  }

  /** An upstream's non-success answer as the error our client should see. */
  private statusError(route: Route, response: UpstreamResponse, kind: 'manifest' | 'blob' | 'tags', body: string, reference?: string): RegistryError {
    const upstream = route.upstream.name;
    const relayed = parseErrorBody(body)[0];
    const detail = { upstream, repository: route.repository, reference, status: response.status, upstreamError: relayed };
    switch (response.status) {
      case 404:
        if (kind === 'blob') return new RegistryError('BLOB_UNKNOWN', `blob unknown to upstream ${upstream}`, { detail });
        if (relayed?.code === 'NAME_UNKNOWN') return new RegistryError('NAME_UNKNOWN', `repository ${route.repository} not found at ${upstream}`, { detail });
        return new RegistryError(kind === 'tags' ? 'NAME_UNKNOWN' : 'MANIFEST_UNKNOWN', `${kind} unknown to upstream ${upstream}`, { detail });
      case 401:
      case 403:
        return new RegistryError('DENIED', `upstream ${upstream} denied access to ${route.repository} (it may not exist, or need credentials)`, { detail });
      case 429: {
        const retryAfter = headerValue(response.headers, 'retry-after');
        return new RegistryError('TOOMANYREQUESTS', `upstream ${upstream} is rate-limiting this mirror`, {
          detail,
          headers: retryAfter ? { 'retry-after': retryAfter } : {},
        });
      }
      default:
        return new RegistryError('UNAVAILABLE', `upstream ${upstream} answered ${response.status}`, {
          status: response.status >= 500 ? (response.status === 503 ? 503 : 502) : 502,
          detail,
        });
    }
  }

  private offlineMiss(code: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN', route: Route, what: string): RegistryError {
    return new RegistryError(code, `${what} is not cached and the mirror is offline`, {
      detail: { upstream: route.upstream.name, repository: route.repository, offline: true },
    });
  }

  private async isLinked(route: Route, digest: string): Promise<boolean> {
    const key = linkKey(route, digest);
    if (this.linkCache.has(key)) return true;
    if (this.index.hasLink(route.upstream.name, route.repository, digest)) {
      this.linkCache.set(key, true);
      return true;
    }
    return false;
  }

  /**
   * Content in the store is served under a repository only when that repository is known
   * to contain it; otherwise its upstream is asked first (a private layer must not leak
   * to whoever guesses its digest under another name).
   */
  private async ensureLinked(route: Route, digest: Digest, kind: 'manifest' | 'blob'): Promise<void> {
    if (await this.isLinked(route, digest.value)) return;
    if (this.config.offline) throw this.offlineMiss(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', route, digest.value);
    await this.checkUpstreamHas(route, digest, kind);
  }

  private async checkUpstreamHas(route: Route, digest: Digest, kind: 'manifest' | 'blob'): Promise<void> {
    const response = await this.upstreamRequest(route, kind, {
      method: 'HEAD',
      path: `/v2/${route.repository}/${kind === 'blob' ? 'blobs' : 'manifests'}/${digest.value}`,
      headers: kind === 'manifest' ? { accept: this.acceptTypes(route, undefined).join(', ') } : {},
    });
    await response.body.dump().catch(() => undefined);
    if (response.status !== 200) throw this.statusError(route, response, kind, '', digest.value);
    this.index.putLink(route.upstream.name, route.repository, digest.value);
    this.linkCache.set(linkKey(route, digest.value), true);
  }

  /** Why the mirror cannot serve now (storage not writable, index closed), or undefined when ready. */
  async readiness(): Promise<string | undefined> {
    try {
      const probe = await this.store.createTemp();
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
    this.downloads.abortAll('mirror shutting down');
    await this.downloads.settled();
    await Promise.all([...this.agents, ...(this.peerAgent ? [this.peerAgent] : [])].map((a) => a.close().catch(() => undefined)));
    this.index.close();
  }
}

export function createMirror(options: MirrorOptions): Promise<Mirror> {
  return Mirror.create(options);
}

function linkKey(route: Route, digest: string): string {
  return `${route.upstream.name}\u0000${route.repository}\u0000${digest}`;
}

/** Upstream trouble (unreachable, 5xx, 429, auth trouble) as opposed to an authoritative answer. */
function isUpstreamTrouble(err: unknown): boolean {
  if (!(err instanceof RegistryError)) return true;
  return err.code === 'UNAVAILABLE' || err.code === 'TOOMANYREQUESTS' || err.code === 'DENIED' || err.code === 'UNAUTHORIZED' || err.status >= 500;
}

function paginate(tags: string[], n: number | undefined, last: string | undefined): { tags: string[]; next: string | undefined } {
  const sorted = [...tags].sort();
  const from = last === undefined ? sorted : sorted.filter((t) => t > last);
  if (n === undefined || from.length <= n) return { tags: from, next: undefined };
  const page = from.slice(0, n);
  return { tags: page, next: page.at(-1) };
}

async function readLimited(body: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      body.destroy();
      throw new Error(`body larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** Pass bytes on as they come but hold the last chunk until the digest matches. */
async function* verifyWhileStreaming(body: Readable, digest: Digest): AsyncGenerator<Buffer> {
  const verifier = new DigestVerifier(digest);
  let held: Buffer | undefined;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    verifier.update(chunk);
    if (held) yield held;
    held = chunk;
  }
  if (verifier.finish() !== digest.value) throw new Error(`upstream content does not match ${digest.value}`);
  if (held) yield held;
}

function skipBytes(body: Readable, count: number): Readable {
  let toSkip = count;
  return Readable.from(
    (async function* () {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (toSkip >= chunk.length) {
          toSkip -= chunk.length;
          continue;
        }
        yield toSkip > 0 ? chunk.subarray(toSkip) : chunk;
        toSkip = 0;
      }
    })(),
    { objectMode: false },
  );
}
