// The referrers of a manifest (OCI 1.1, GET /v2/<name>/referrers/<digest>) for a routed
// request: signatures, SBOMs and attestations that name it as their `subject`. Three sources,
// combined and de-duplicated by digest:
//   1. the upstream's referrers API, when it has one (a 404 there means it has none);
//   2. otherwise the upstream's referrers tag schema: the index under the tag `sha256-<hex>`,
//      read through the manifest service (cached, revalidated, served stale like any tag);
//   3. the referrers the mirror holds: stored manifests whose subject is the digest, linked to
//      the repository (pulled through the mirror, or imported).
// The upstream's part is trusted for the upstream's tag TTL, then asked again (one request per
// repository and subject at a time, costing a client's miss budget when nothing is cached);
// when the upstream fails the last answer is served with a Warning; offline it is served
// whatever its age. An upstream with neither the API nor the tag answers an empty list.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { CacheIndex } from '../cache/index.js';
import type { Clock } from '../clock.js';
import { readLimited } from '../http/body.js';
import { headerValue, nextLinkTarget } from '../http/headers.js';
import type { MirrorMetrics } from '../metrics.js';
import { parseErrorBody, RegistryError } from '../oci/errors.js';
import { MAX_MANIFEST_BYTES } from '../oci/manifest.js';
import { INDEX_MEDIA_TYPES, MediaType } from '../oci/media-types.js';
import type { Digest, ManifestReference } from '../oci/reference.js';
import { descriptorsOfIndex, MAX_REFERRERS, mergeReferrers, referrersTagOf, type ReferrerDescriptor } from '../oci/referrers.js';
import { describeNetworkError, type UpstreamResponse } from '../upstream/client.js';
import type { Route } from '../upstream/selector.js';
import { isUpstreamTrouble, upstreamError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientMissBudget } from './client-budget.js';
import { staleWarning, type CacheOutcome, type ManifestResult } from './results.js';
import { SingleFlight } from './single-flight.js';

export interface ReferrersResult {
  /** Every referrer known, in digest order. */
  descriptors: ReferrerDescriptor[];
  outcome: CacheOutcome;
  /** Set when served stale: the Warning header's text. */
  warning?: string;
}

/** The upstream's answer as kept: its referrers, when it was asked, until when it is trusted. */
interface UpstreamList {
  descriptors: ReferrerDescriptor[];
  checkedAt: number;
  expiresAt: number;
}

/** An upstream whose referrers API answered 404 is not asked again for this long (podman remembers it too). */
const NO_API_RECHECK_MS = 60 * 60_000;
/** At most this many pages of an upstream's referrers answer are followed. */
const MAX_UPSTREAM_PAGES = 100;
/** An error body is small: no more of it is read. */
const ERROR_BODY_LIMIT = 64 * 1024;

export interface ReferrersServiceDeps {
  offline: boolean;
  index: Pick<CacheIndex, 'referrersOf' | 'getReferrerList' | 'putReferrerList' | 'deleteReferrerList'>;
  /** The tag schema's index is a tag like any other. */
  manifests: { get(route: Route, reference: ManifestReference, accept: string | string[] | undefined): Promise<ManifestResult> };
  upstreams: Upstreams;
  budget: ClientMissBudget;
  metrics: MirrorMetrics;
  logger: Logger;
  clock: Clock;
}

export class ReferrersService {
  private readonly flights = new SingleFlight<ReferrersResult>();
  /** The upstreams' answers in front of the index, bounded by how many descriptors they hold. */
  private readonly lists = new LRUCache<string, UpstreamList>({ max: 10_000, maxSize: 200_000, sizeCalculation: (l) => l.descriptors.length + 1 });
  /** Upstream name → until when its referrers API is known to be missing. */
  private readonly withoutApi = new Map<string, number>();

  constructor(private readonly deps: ReferrersServiceDeps) {}

  /** `client`: the address whose budget of upstream misses a miss spends (none: not counted). */
  async list(route: Route, subject: Digest, client?: string): Promise<ReferrersResult> {
    const upstreamPart = await this.upstreamPart(route, subject, client);
    return { ...upstreamPart, descriptors: mergeReferrers(upstreamPart.descriptors, this.heldReferrers(route, subject)) };
  }

  private async upstreamPart(route: Route, subject: Digest, client: string | undefined): Promise<ReferrersResult> {
    const key = `${route.upstream.name}\u0000${route.repository}\u0000${subject.value}`;
    const known = this.known(key, route, subject);
    if (this.deps.offline) {
      // Never the upstream: its last answer, and the tag schema's index when cached or imported.
      const fromTag = await this.fromTagSchema(route, subject);
      return { descriptors: mergeReferrers(known?.descriptors ?? [], fromTag.descriptors), outcome: 'hit' };
    }
    if (known && this.deps.clock.now() < known.expiresAt) return { descriptors: known.descriptors, outcome: 'hit' };
    // Joining a fetch that is already running costs the upstream nothing; a stale answer's
    // refresh is bounded by the TTL and the single flight.
    if (!known && !this.flights.has(key)) this.deps.budget.charge(client);
    return this.flights.run(key, () => this.refresh(key, route, subject, known));
  }

  private async refresh(key: string, route: Route, subject: Digest, known: UpstreamList | undefined): Promise<ReferrersResult> {
    let fetched: { descriptors: ReferrerDescriptor[]; warning?: string | undefined };
    try {
      fetched = await this.fetchUpstream(route, subject);
    } catch (err) {
      if (!isUpstreamTrouble(err)) throw err;
      const reason = err instanceof RegistryError ? err.message : describeNetworkError(err);
      // Something to answer with: the last answer, or at least the referrers the mirror holds.
      if (known || this.heldReferrers(route, subject).length > 0) return this.serveStale(route, subject, known, reason);
      throw err;
    }
    // The tag schema's index was itself served stale: say so, and keep asking.
    if (fetched.warning) return { descriptors: fetched.descriptors, outcome: 'stale', warning: fetched.warning };
    const now = this.deps.clock.now();
    this.remember(key, route, subject, { descriptors: fetched.descriptors, checkedAt: now, expiresAt: now + route.upstream.ttlMs }, known);
    return { descriptors: fetched.descriptors, outcome: known ? 'revalidated' : 'miss' };
  }

  private async fetchUpstream(route: Route, subject: Digest): Promise<{ descriptors: ReferrerDescriptor[]; warning?: string | undefined }> {
    const fromApi = await this.fromApi(route, subject);
    if (fromApi) return { descriptors: fromApi };
    return this.fromTagSchema(route, subject);
  }

  /** The upstream's referrers API, every page of it; undefined when the upstream has no such API. */
  private async fromApi(route: Route, subject: Digest): Promise<ReferrerDescriptor[] | undefined> {
    const { upstreams, clock } = this.deps;
    const name = route.upstream.name;
    const missingUntil = this.withoutApi.get(name);
    if (missingUntil !== undefined && clock.now() < missingUntil) return undefined;
    const descriptors: ReferrerDescriptor[] = [];
    let path = `/v2/${route.repository}/referrers/${subject.value}`;
    for (let page = 0; ; page++) {
      // The whole list, unfiltered: one upstream answer serves every filter and page.
      const response = await upstreams.request(route, 'referrers', { method: 'GET', path, headers: { accept: MediaType.OciIndex } });
      if (response.status !== 200) {
        if (page === 0) return this.withoutReferrersApi(route, response);
        // A later page failing leaves the list incomplete: that is the upstream's trouble.
        const error = await upstreamError(route, response, 'referrers', subject.value);
        throw new RegistryError('UNAVAILABLE', `upstream ${name} failed page ${page + 1} of the referrers of ${subject.value}: ${error.message}`, { status: 502, detail: error.detail });
      }
      descriptors.push(...(await this.readIndex(route, response, 'referrers answer')));
      const next = this.sameUpstreamPath(route, nextLinkTarget(headerValue(response.headers, 'link')));
      if (next === undefined) break;
      if (descriptors.length >= MAX_REFERRERS || page + 1 >= MAX_UPSTREAM_PAGES) {
        this.deps.logger.warn({ upstream: name, repository: route.repository, subject: subject.value, referrers: descriptors.length }, 'referrers list too long: keeping its first pages');
        break;
      }
      path = next;
    }
    return mergeReferrers(descriptors);
  }

  /**
   * Not a 200 from the referrers API. 404 is the spec's "no such API" (remembered for a while,
   * unless it names the repository unknown: then the API exists); 405, 501 and other refusals
   * (a registry that blocks the path) also mean: use the tag schema. 429 and 5xx are trouble.
   */
  private async withoutReferrersApi(route: Route, response: UpstreamResponse): Promise<undefined> {
    const status = response.status;
    if (status === 429 || (status >= 500 && status !== 501)) throw await upstreamError(route, response, 'referrers');
    const body = await readLimited(response.body, ERROR_BODY_LIMIT).catch(() => Buffer.alloc(0));
    const code = parseErrorBody(body.toString('utf8'))[0]?.code;
    if ((status === 404 || status === 405 || status === 501) && code !== 'NAME_UNKNOWN') {
      this.withoutApi.set(route.upstream.name, this.deps.clock.now() + NO_API_RECHECK_MS);
      this.deps.logger.debug({ upstream: route.upstream.name, status }, 'upstream has no referrers API: using the referrers tag schema');
    }
    return undefined;
  }

  /** The path (and query) of a next-page link on the same upstream, or undefined. */
  private sameUpstreamPath(route: Route, target: string | undefined): string | undefined {
    if (target === undefined) return undefined;
    try {
      const base = new URL(route.upstream.url);
      const url = new URL(target, base);
      if (url.origin !== base.origin || !url.pathname.startsWith('/v2/')) return undefined;
      return url.pathname + url.search;
    } catch {
      return undefined;
    }
  }

  private async readIndex(route: Route, response: UpstreamResponse, what: string): Promise<ReferrerDescriptor[]> {
    const invalid = (why: string) =>
      new RegistryError('UNAVAILABLE', `upstream ${route.upstream.name} sent a ${what} that is ${why}`, { status: 502, detail: { upstream: route.upstream.name } });
    const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES).catch((err: unknown) => {
      throw invalid(`unreadable (${(err as Error).message})`);
    });
    try {
      return descriptorsOfIndex(bytes);
    } catch (err) {
      throw invalid((err as Error).message);
    }
  }

  /**
   * The upstream's referrers tag schema: the index under `sha256-<hex>`. No such tag (or no
   * such repository) means nothing refers to the subject there.
   */
  private async fromTagSchema(route: Route, subject: Digest): Promise<{ descriptors: ReferrerDescriptor[]; warning?: string | undefined }> {
    let index: ManifestResult;
    try {
      index = await this.deps.manifests.get(route, { kind: 'tag', tag: referrersTagOf(subject) }, undefined);
    } catch (err) {
      if (err instanceof RegistryError && (err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN')) return { descriptors: [] };
      throw err;
    }
    const warning = index.outcome === 'stale' ? index.warning : undefined;
    if (!INDEX_MEDIA_TYPES.has(index.mediaType)) return { descriptors: [], warning };
    try {
      return { descriptors: mergeReferrers(descriptorsOfIndex(index.bytes)), warning };
    } catch {
      return { descriptors: [], warning };
    }
  }

  /** The referrers the mirror holds for the repository (an index failure is logged: the upstream's part still answers). */
  private heldReferrers(route: Route, subject: Digest): ReferrerDescriptor[] {
    let rows;
    try {
      rows = this.deps.index.referrersOf(route.upstream.name, route.repository, subject.value, MAX_REFERRERS);
    } catch (err) {
      this.deps.logger.error({ subject: subject.value, err: (err as Error).message }, 'could not read referrers from the index');
      return [];
    }
    return rows.map((r) => {
      const d: ReferrerDescriptor = { mediaType: r.mediaType, digest: r.digest, size: r.size };
      if (r.artifactType !== undefined) d.artifactType = r.artifactType;
      if (r.annotations !== undefined) d.annotations = r.annotations;
      return d;
    });
  }

  /** The upstream's last answer: in memory, or in the index (kept across restarts). */
  private known(key: string, route: Route, subject: Digest): UpstreamList | undefined {
    const hot = this.lists.get(key);
    if (hot) return hot;
    try {
      const row = this.deps.index.getReferrerList(route.upstream.name, route.repository, subject.value);
      if (!row) return undefined;
      const list = { descriptors: JSON.parse(row.descriptors) as ReferrerDescriptor[], checkedAt: row.checkedAt, expiresAt: row.expiresAt };
      this.lists.set(key, list);
      return list;
    } catch (err) {
      this.deps.logger.error({ subject: subject.value, err: (err as Error).message }, 'could not read a referrers list from the index');
      return undefined;
    }
  }

  /**
   * Keep the upstream's answer. Only non-empty answers go to the index: those name real
   * content, while empty ones are what any digest a client makes up gets (memory, bounded).
   */
  private remember(key: string, route: Route, subject: Digest, list: UpstreamList, previous: UpstreamList | undefined): void {
    this.lists.set(key, list);
    try {
      if (list.descriptors.length > 0) {
        this.deps.index.putReferrerList(route.upstream.name, route.repository, subject.value, {
          descriptors: JSON.stringify(list.descriptors), checkedAt: list.checkedAt, expiresAt: list.expiresAt,
        });
      } else if (previous && previous.descriptors.length > 0) {
        this.deps.index.deleteReferrerList(route.upstream.name, route.repository, subject.value);
      }
    } catch (err) {
      this.deps.logger.error({ subject: subject.value, err: (err as Error).message }, 'could not record a referrers list in the index');
    }
  }

  private serveStale(route: Route, subject: Digest, known: UpstreamList | undefined, reason: string): ReferrersResult {
    const { metrics, logger, clock } = this.deps;
    metrics.staleServed.inc({ upstream: route.upstream.name, reason: 'upstream-error' });
    logger.warn({ upstream: route.upstream.name, repository: route.repository, subject: subject.value, reason }, 'serving stale referrers: upstream could not be asked');
    return { descriptors: known?.descriptors ?? [], outcome: 'stale', warning: staleWarning(route.upstream.name, reason, known?.checkedAt, clock.now()) };
  }
}
