// Which repository may be served which content. The store is global (content-addressed),
// but a digest is served under repository R only when R is known to contain it: a link
// (upstream, repository, digest) recorded when R's manifest referenced it, R's upstream
// served it, or R's upstream confirmed it with a HEAD. A client must not read a private
// repository's layer by guessing its digest under another name.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { CacheIndex } from '../cache/index.js';
import { parseContentLength } from '../http/headers.js';
import { negotiateAccept } from '../oci/media-types.js';
import type { Digest } from '../oci/reference.js';
import type { Route } from '../upstream/selector.js';
import { upstreamError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import { offlineMiss } from './offline.js';

export type ContentKind = 'manifest' | 'blob';

export class RepositoryAccess {
  /** Links known to exist, in front of SQLite. */
  private readonly known = new LRUCache<string, true>({ max: 200_000 });

  constructor(
    private readonly index: CacheIndex,
    private readonly upstreams: Upstreams,
    private readonly offline: boolean,
    private readonly logger: Logger,
  ) {}

  isLinked(route: Route, digest: string): boolean {
    const key = linkKey(route, digest);
    if (this.known.has(key)) return true;
    if (this.index.hasLink(route.upstream.name, route.repository, digest)) {
      this.known.set(key, true);
      return true;
    }
    return false;
  }

  /**
   * Record that `route`'s repository contains `digest`. Held in memory even when the index
   * cannot take it (disk full): serving what is cached never depends on an index write.
   */
  link(route: Route, digest: string): void {
    this.remember(route, digest);
    try {
      this.index.putLink(route.upstream.name, route.repository, digest);
    } catch (err) {
      this.logger.error({ upstream: route.upstream.name, repository: route.repository, digest, err: (err as Error).message }, 'could not record a repository link in the index');
    }
  }

  /** A link the index already holds (written with its manifest): keep it in memory too. */
  remember(route: Route, digest: string): void {
    this.known.set(linkKey(route, digest), true);
  }

  /** Cached content may be served to `route` only when linked; otherwise its upstream is asked first. */
  async ensureLinked(route: Route, digest: Digest, kind: ContentKind): Promise<void> {
    if (this.isLinked(route, digest.value)) return;
    if (this.offline) throw offlineMiss(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', route, digest.value);
    await this.confirmUpstreamHas(route, digest, kind);
  }

  /** HEAD the content at `route`'s upstream; links it when there. Returns the size it announced. */
  async confirmUpstreamHas(route: Route, digest: Digest, kind: ContentKind): Promise<{ size: number | undefined }> {
    const response = await this.upstreams.request(route, kind, {
      method: 'HEAD',
      path: `/v2/${route.repository}/${kind === 'blob' ? 'blobs' : 'manifests'}/${digest.value}`,
      headers: kind === 'manifest' ? { accept: negotiateAccept(undefined, route.upstream.allowSchema1).types.join(', ') } : {},
    });
    if (response.status !== 200) throw await upstreamError(route, response, kind, digest.value);
    await response.body.dump().catch(() => undefined);
    this.link(route, digest.value);
    return { size: parseContentLength(response.headers) };
  }
}

function linkKey(route: Route, digest: string): string {
  return `${route.upstream.name}\u0000${route.repository}\u0000${digest}`;
}
