// tags/list for a routed request: the upstream's list (paged here when the upstream does not
// page), or the tags the mirror knows when the upstream cannot answer or the mirror is offline.

import type { CacheIndex } from '../cache/index.js';
import { readLimited } from '../http/body.js';
import { headerValue, nextLinkTarget } from '../http/headers.js';
import { RegistryError } from '../oci/errors.js';
import type { Route } from '../upstream/selector.js';
import { isUpstreamTrouble, statusError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientMissBudget } from './client-budget.js';
import { offlineMiss } from './offline.js';
import type { TagList } from './results.js';

/** A tag list is bigger than a manifest, but still bounded. */
const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

/** The page a client asked for: n and last, and any other parameter (an upstream's opaque page token) to forward as is. */
export interface TagPageRequest {
  n: number | undefined;
  last: string | undefined;
  /** Query parameters other than n, last and ns (Quay's `next_page=<token>`), forwarded upstream. */
  forward: [string, string][];
}

export class TagListService {
  constructor(
    private readonly index: CacheIndex,
    private readonly upstreams: Upstreams,
    private readonly offline: boolean,
    private readonly budget?: ClientMissBudget,
  ) {}

  /** `client`: the address whose budget of upstream misses the request spends (none: not counted). */
  async list(route: Route, clientName: string, page: TagPageRequest, client?: string): Promise<TagList> {
    const { n, last } = page;
    if (this.offline) {
      const known = this.index.tagsOf(route.upstream.name, route.repository);
      if (known.length === 0) throw offlineMiss('NAME_UNKNOWN', route, route.repository);
      return { ...paginate(known, n, last), name: clientName, outcome: 'hit' };
    }
    const query = new URLSearchParams();
    if (n !== undefined) query.set('n', String(n));
    if (last !== undefined) query.set('last', last);
    for (const [k, v] of page.forward) query.append(k, v);
    const qs = query.size > 0 ? `?${query}` : '';
    let failure: RegistryError;
    try {
      // Over its budget, the client gets the tags we know, or the 429.
      this.budget?.charge(client);
      const response = await this.upstreams.request(route, 'tags', { method: 'GET', path: `/v2/${route.repository}/tags/list${qs}` });
      const body = await readLimited(response.body, MAX_TAG_LIST_BYTES);
      if (response.status === 200) {
        const parsed = JSON.parse(body.toString('utf8')) as { tags?: unknown };
        const tags = Array.isArray(parsed.tags) ? parsed.tags.filter((t): t is string => typeof t === 'string') : [];
        const next = nextPageQuery(headerValue(response.headers, 'link'));
        // Paged by the upstream: it said there is more, or the client followed its token. (A last
        // page without a token is sorted and filtered below: a no-op for a lexical upstream.)
        if (next !== undefined || page.forward.length > 0) {
          // The upstream's page: its order, its notion of `last`, its token for the next one.
          if (next === undefined) return { name: clientName, tags, next: undefined, outcome: 'miss' };
          if (![...next.keys()].some((k) => k !== 'n')) {
            // A Link that says "more" but not how: continue after this page's last tag.
            if (tags.length > 0) next.set('last', tags.at(-1)!);
          }
          if (!next.has('n') && n !== undefined) next.set('n', String(n));
          return { name: clientName, tags, next, outcome: 'miss' };
        }
        // An upstream without pagination (distribution 2.x ignores n and last) sent it all, in
        // storage order: sort it (the spec wants lexical order) and page it here.
        return { ...paginate(tags, n, last), name: clientName, outcome: 'miss' };
      }
      failure = statusError(route, response, 'tags', body.toString('utf8'));
      if (response.status === 404) throw failure;
    } catch (err) {
      if (!isUpstreamTrouble(err)) throw err;
      failure = err as RegistryError;
    }
    // An upstream's page token means nothing to the tags we know: starting over would loop.
    if (page.forward.length > 0) throw failure;
    const known = this.index.tagsOf(route.upstream.name, route.repository);
    if (known.length === 0) throw failure;
    return { ...paginate(known, n, last), name: clientName, outcome: 'stale' };
  }
}

/** The query of an RFC 8288 `Link: <…>; rel="next"` target (the mirror re-aims it at itself), without `ns`. */
function nextPageQuery(link: string | undefined): URLSearchParams | undefined {
  const next = nextLinkTarget(link);
  if (next === undefined) return undefined;
  let target: URL;
  try {
    target = new URL(next, 'http://upstream.invalid/');
  } catch {
    return new URLSearchParams();
  }
  const query = new URLSearchParams(target.search);
  query.delete('ns');
  return query;
}

function paginate(tags: string[], n: number | undefined, last: string | undefined): { tags: string[]; next: URLSearchParams | undefined } {
  const sorted = [...tags].sort();
  const from = last === undefined ? sorted : sorted.filter((t) => t > last);
  if (n === undefined || from.length <= n) return { tags: from, next: undefined };
  if (n === 0) return { tags: [], next: undefined };
  const page = from.slice(0, n);
  return { tags: page, next: new URLSearchParams({ n: String(n), last: page.at(-1)! }) };
}
