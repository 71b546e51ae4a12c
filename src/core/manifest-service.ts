// Manifests for a routed request. By digest they are immutable: served from the store
// once there, fetched (and verified) once otherwise. By tag they are trusted for the
// upstream's TTL, then revalidated with a HEAD (free on Docker Hub's pull limit); when the
// upstream cannot answer, the stale manifest is served (stale-if-error) and counted. An
// upstream 404 is remembered for a short while (negative-cache.ts).

import type { Logger } from 'pino';
import { expiryFrom, tagFreshness } from '../cache/freshness.js';
import type { CacheIndex, TagRow } from '../cache/index.js';
import type { ManifestCache, StoredManifest } from '../cache/manifest-cache.js';
import { TagCache } from '../cache/tag-cache.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import { readLimited } from '../http/body.js';
import { headerValue } from '../http/headers.js';
import type { MirrorMetrics } from '../metrics.js';
import { digestOf } from '../oci/digest.js';
import { RegistryError, type ErrorCode } from '../oci/errors.js';
import { MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest } from '../oci/manifest.js';
import { negotiateAccept } from '../oci/media-types.js';
import { parseDigest, type Digest, type ManifestReference } from '../oci/reference.js';
import { describeNetworkError, type UpstreamResponse } from '../upstream/client.js';
import { TokenBucket } from '../upstream/rate-limiter.js';
import type { Route } from '../upstream/selector.js';
import { isUpstreamTrouble, upstreamError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientMissBudget } from './client-budget.js';
import { NegativeCache } from './negative-cache.js';
import { offlineMiss } from './offline.js';
import type { RepositoryAccess } from './repository-access.js';
import { staleWarning, type ManifestResult } from './results.js';
import type { SiblingEvent, SiblingWorkers } from './sibling-workers.js';
import { SingleFlight } from './single-flight.js';

/** Why a stale tag was served (a metric label: a few fixed values). */
type StaleReason = 'upstream-error' | 'rate-limit-reserve' | 'revalidation-budget';

/** The Accept negotiation a request resolved to (oci/media-types.ts). */
type Negotiated = { key: string; types: string[] };

export interface ManifestServiceDeps {
  config: Pick<Config, 'offline' | 'revalidation'>;
  manifests: ManifestCache;
  /** What the store holds as a blob and what as a manifest. */
  index: Pick<CacheIndex, 'getBlob' | 'getManifest'>;
  tags: TagCache;
  access: RepositoryAccess;
  upstreams: Upstreams;
  metrics: MirrorMetrics;
  logger: Logger;
  clock: Clock;
  /** Each client's budget of upstream misses. */
  budget: ClientMissBudget;
  /** Note an access for eviction's LRU (batched by the index). */
  recordAccess(digest: string): void;
  /**
   * A manifest came from the upstream and was stored (a miss, or a tag that moved): layer
   * prefetch (prefetch.ts). Never called for a hit or a revalidation that kept the digest.
   */
  fetchedFromUpstream?(route: Route, manifest: ParsedManifest): void;
  /** The other workers (`workers: N`): flights, 404s and the revalidation budget hold across them. */
  siblings?: SiblingWorkers;
}

export class ManifestService {
  private readonly flights = new SingleFlight();
  /** Upstream 404s, answered again for the upstream's negativeTtl. */
  private readonly negatives: NegativeCache;
  /** Per upstream: revalidations are bounded in rate, not only made cheap. */
  private readonly revalidationBudget = new Map<string, TokenBucket>();

  constructor(private readonly deps: ManifestServiceDeps) {
    this.negatives = new NegativeCache(deps.clock);
    const { perSecond, burst } = deps.config.revalidation;
    for (const client of deps.upstreams.all()) {
      this.revalidationBudget.set(client.registry.name, new TokenBucket(perSecond, burst, deps.clock));
    }
  }

  /** `client`: the address whose budget of upstream misses a miss spends (none: not counted). */
  async get(route: Route, reference: ManifestReference, accept: string | string[] | undefined, client?: string): Promise<ManifestResult> {
    return reference.kind === 'digest' ? this.byDigest(route, reference.digest, client) : this.byTag(route, reference.tag, accept, client);
  }

  private async byDigest(route: Route, digest: Digest, client: string | undefined): Promise<ManifestResult> {
    const { manifests, access, config } = this.deps;
    const stored = await manifests.get(digest);
    if (stored) {
      await access.ensureLinked(route, digest, 'manifest');
      this.deps.recordAccess(digest.value);
      return { ...stored, outcome: 'hit' };
    }
    if (config.offline) throw offlineMiss('MANIFEST_UNKNOWN', route, digest.value);
    const remembered = this.negatives.answer(negativeKey(route, digest.value, undefined));
    if (remembered) throw remembered;
    const flight = `m\u0000${route.upstream.name}\u0000${route.repository}\u0000${digest.value}`;
    // Joining a fetch that is already running costs the upstream nothing.
    if (!this.flights.has(flight)) this.deps.budget.charge(client);
    return this.flights.run(flight, () =>
      this.acrossWorkers(
        flight,
        () => this.fetch(route, digest.value, undefined, { key: 'all', types: negotiateAccept(undefined, route.upstream.allowSchema1).types }),
        async () => {
          const fetched = await manifests.get(digest);
          if (fetched) {
            await access.ensureLinked(route, digest, 'manifest');
            this.deps.recordAccess(digest.value);
            return { ...fetched, outcome: 'coalesced' };
          }
          const answer = this.negatives.answer(negativeKey(route, digest.value, undefined));
          if (answer) throw answer;
          return undefined;
        },
      ),
    );
  }

  private async byTag(route: Route, tag: string, accept: string | string[] | undefined, client: string | undefined): Promise<ManifestResult> {
    const { tags, manifests, config, clock } = this.deps;
    const negotiated = negotiateAccept(accept, route.upstream.allowSchema1);
    const tagKey = { upstream: route.upstream.name, repo: route.repository, tag, accept: negotiated.key };
    const key = TagCache.keyOf(tagKey);
    let row = tags.get(tagKey, key);
    const now = clock.now();
    if (row && tagFreshness(row, now, config.offline) === 'fresh') {
      const stored = await manifests.get(parseDigest(row.digest));
      if (stored) {
        this.deps.recordAccess(row.digest);
        return { ...stored, outcome: 'hit' };
      }
      // The bytes are gone (evicted or removed by verify): fetch again below.
      row = undefined;
    }
    if (config.offline) throw offlineMiss('MANIFEST_UNKNOWN', route, `${route.repository}:${tag}`);
    const current = row;
    if (!current) {
      // Asked again within the negativeTtl of an upstream 404: the same answer, for free.
      const remembered = this.negatives.answer(negativeKey(route, tag, negotiated.key));
      if (remembered) throw remembered;
    }
    const flight = `t\u0000${key}`;
    // A miss spends the client's budget; a stale tag's revalidation is bounded per upstream instead.
    if (!current && !this.flights.has(flight)) this.deps.budget.charge(client);
    return this.flights.run(flight, () =>
      this.acrossWorkers(
        flight,
        async () => {
          if (current) return this.revalidate(route, current, negotiated.types);
          return this.fetch(route, tag, negotiated.key, negotiated);
        },
        async () => {
          // The worker that led wrote the index (the truth): read it, not this worker's copy.
          tags.forgetKey(key);
          const after = tags.get(tagKey, key);
          if (after && tagFreshness(after, clock.now(), false) === 'fresh') {
            const stored = await manifests.get(parseDigest(after.digest));
            if (stored) {
              this.deps.recordAccess(after.digest);
              return { ...stored, outcome: 'coalesced' };
            }
          }
          const answer = this.negatives.answer(negativeKey(route, tag, negotiated.key));
          if (answer) throw answer;
          return undefined;
        },
      ),
    );
  }

  /**
   * One worker at a time asks the upstream for `flight`: the first to ask leads and does
   * `work`; the others wait for its release and take what it left in the index (`settled`),
   * or its remembered 404. When it left nothing (the upstream failed, it died) they try again.
   */
  private async acrossWorkers(flight: string, work: () => Promise<ManifestResult>, settled: () => Promise<ManifestResult | undefined>): Promise<ManifestResult> {
    const { siblings } = this.deps;
    if (!siblings) return work();
    for (let attempt = 0; attempt < 2; attempt++) {
      if ((await siblings.lead(flight)) === 'lead') {
        try {
          return await work();
        } finally {
          siblings.release(flight);
        }
      }
      const done = await settled();
      if (done) return done;
    }
    return work();
  }

  /** What another worker learned about upstream 404s. */
  hearSibling(event: SiblingEvent): void {
    if (event.kind === 'negative') {
      const { code, message, status, detail } = event.error;
      this.negatives.remember(event.key, new RegistryError(code as ErrorCode, message, { status, detail }), event.ttlMs);
    } else if (event.kind === 'negative-forget') this.negatives.forget(event.key);
  }

  /** Remember an upstream 404 here and in every other worker. */
  private rememberNegative(key: string, error: RegistryError, ttlMs: number): void {
    this.negatives.remember(key, error, ttlMs);
    if (ttlMs > 0) this.deps.siblings?.publish({ kind: 'negative', key, error: { code: error.code, message: error.message, status: error.status, detail: error.detail }, ttlMs });
  }

  /** A stale tag: ask the upstream with a HEAD (free on Docker Hub's pull limit). */
  private async revalidate(route: Route, row: TagRow, acceptTypes: string[]): Promise<ManifestResult> {
    const { manifests, tags, upstreams, clock } = this.deps;
    const stale = await manifests.get(parseDigest(row.digest));
    if (stale) {
      // Spend neither the upstream's pull budget nor our revalidation budget when they run low.
      const rateLimit = upstreams.clientFor(route.upstream.name)?.rateLimit;
      const reserve = this.deps.config.revalidation.rateLimitReserve;
      if (rateLimit?.remaining !== undefined && rateLimit.remaining <= reserve) {
        // Trust the tag for another TTL without asking.
        const now = clock.now();
        tags.touch(row, row.checkedAt, expiryFrom(now, route.upstream.ttlFor(route.repository, row.tag)));
        return this.serveStale(route, row, stale, `rate limit nearly spent (${rateLimit.remaining} left)`, 'rate-limit-reserve');
      }
      // Across workers the budget is one bucket, kept by the primary.
      const siblings = this.deps.siblings;
      const allowed = siblings ? await siblings.takeToken(`revalidation\u0000${route.upstream.name}`) : this.revalidationBudget.get(route.upstream.name)!.tryTake();
      if (!allowed) {
        return this.serveStale(route, row, stale, 'revalidation rate limit reached', 'revalidation-budget');
      }
    }
    let response: UpstreamResponse;
    try {
      response = await upstreams.request(route, 'manifest', {
        method: 'HEAD',
        path: `/v2/${route.repository}/manifests/${row.tag}`,
        headers: { accept: acceptTypes.join(', ') },
      });
    } catch (err) {
      if (stale) return this.serveStale(route, row, stale, describeNetworkError(err));
      throw err;
    }
    if (response.status === 200) {
      await response.body.dump().catch(() => undefined);
      const digest = headerValue(response.headers, 'docker-content-digest');
      if (stale && digest === row.digest) {
        const now = clock.now();
        tags.touch(row, now, expiryFrom(now, route.upstream.ttlFor(route.repository, row.tag)));
        return { ...stale, outcome: 'revalidated' };
      }
      // Moved (or the HEAD did not say): fetch the tag's new manifest.
      try {
        return await this.fetch(route, row.tag, row.accept, { key: row.accept, types: acceptTypes });
      } catch (err) {
        if (stale && isUpstreamTrouble(err)) return this.serveStale(route, row, stale, (err as Error).message);
        throw err;
      }
    }
    if (response.status === 404) {
      await response.body.dump().catch(() => undefined);
      // The upstream says the tag is gone: so do we (for a while without asking again).
      tags.delete(row);
      const gone = new RegistryError('MANIFEST_UNKNOWN', `${route.repository}:${row.tag} no longer exists upstream`, {
        detail: { upstream: route.upstream.name, repository: route.repository, tag: row.tag },
      });
      this.rememberNegative(negativeKey(route, row.tag, row.accept), gone, route.upstream.negativeTtlMs);
      throw gone;
    }
    const error = await upstreamError(route, response, 'manifest');
    if (stale) return this.serveStale(route, row, stale, error.message);
    throw error;
  }

  private serveStale(route: Route, row: TagRow, stale: StoredManifest, reason: string, category: StaleReason = 'upstream-error'): ManifestResult {
    this.deps.metrics.staleServed.inc({ upstream: route.upstream.name, reason: category });
    this.deps.logger.warn({ upstream: route.upstream.name, repository: route.repository, tag: row.tag, reason }, 'serving stale tag: upstream could not revalidate it');
    return { ...stale, outcome: 'stale', warning: staleWarning(route.upstream.name, reason, row.checkedAt, this.deps.clock.now()) };
  }

  /**
   * GET a manifest from the upstream, verify it against the digest asked for (or the one the
   * upstream announced), store it, and record the tag when asked by tag (`tagAccept` set).
   */
  private async fetch(route: Route, reference: string, tagAccept: string | undefined, negotiated: Negotiated): Promise<ManifestResult> {
    const { upstreams, manifests, tags, access, clock } = this.deps;
    const response = await upstreams.request(route, 'manifest', {
      method: 'GET',
      path: `/v2/${route.repository}/manifests/${reference}`,
      headers: { accept: negotiated.types.join(', ') },
    });
    if (response.status !== 200) {
      const error = await upstreamError(route, response, 'manifest', reference);
      if (response.status === 404) this.rememberNegative(negativeKey(route, reference, tagAccept), error, route.upstream.negativeTtlMs);
      // distribution answers 500 to a layer's digest asked as a manifest; when we hold that
      // digest as a blob (and not as a manifest) it is no manifest: say so, and clients
      // (containerd) try /blobs/ next.
      if (response.status >= 500 && tagAccept === undefined && this.deps.index.getBlob(reference) && !this.deps.index.getManifest(reference)) {
        throw new RegistryError('MANIFEST_UNKNOWN', `${reference} is a blob, not a manifest`, {
          detail: { upstream: route.upstream.name, repository: route.repository, digest: reference, upstreamStatus: response.status },
        });
      }
      throw error;
    }
    const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES).catch((err: unknown) => {
      throw new RegistryError('MANIFEST_INVALID', `manifest from ${route.upstream.name} is unreadable: ${(err as Error).message}`, {
        status: 502,
        detail: { upstream: route.upstream.name },
      });
    });
    const wantDigest = tagAccept === undefined ? parseDigest(reference) : undefined;
    const algorithm = wantDigest?.algorithm ?? 'sha256';
    const computed = digestOf(bytes, algorithm);
    const announced = headerValue(response.headers, 'docker-content-digest');
    if ((wantDigest && computed !== wantDigest.value) || (announced && announced.startsWith(`${algorithm}:`) && announced !== computed)) {
      this.deps.metrics.digestMismatches.inc({ upstream: route.upstream.name });
      throw new RegistryError('DIGEST_INVALID', `upstream ${route.upstream.name} sent a manifest that does not match its digest`, {
        status: 502,
        detail: { upstream: route.upstream.name, expected: wantDigest?.value ?? announced, computed },
      });
    }
    const parsed = parseManifest(bytes, headerValue(response.headers, 'content-type'));
    const manifest: StoredManifest = { digest: computed, mediaType: parsed.mediaType, bytes };
    const now = clock.now();
    if (!(await manifests.put(manifest, parsed, { upstream: route.upstream.name, repo: route.repository }))) return { ...manifest, outcome: 'miss' };
    access.remember(route, computed);
    const known = negativeKey(route, reference, tagAccept);
    if (this.negatives.forget(known)) this.deps.siblings?.publish({ kind: 'negative-forget', key: known });
    this.deps.fetchedFromUpstream?.(route, parsed);
    if (tagAccept !== undefined) {
      try {
        tags.put({
          upstream: route.upstream.name, repo: route.repository, tag: reference, accept: tagAccept,
          digest: computed, mediaType: parsed.mediaType, fetchedAt: now, checkedAt: now,
          expiresAt: expiryFrom(now, route.upstream.ttlFor(route.repository, reference)),
        });
      } catch (err) {
        this.deps.logger.error({ tag: reference, err: (err as Error).message }, 'could not record tag in the index');
      }
    }
    return { ...manifest, outcome: 'miss' };
  }
}

/** A reference's key in the negative cache: by tag under its Accept negotiation; a digest is fetched with every type. */
function negativeKey(route: Route, reference: string, tagAccept: string | undefined): string {
  return NegativeCache.keyOf(route.upstream.name, route.repository, reference, tagAccept ?? 'all');
}
