// tags/list for a routed request: the upstream's list (paged here when the upstream does not
// page), or the tags the mirror knows when the upstream cannot answer or the mirror is offline.

import type { CacheIndex } from '../cache/index.js';
import { readLimited } from '../http/body.js';
import { headerValue } from '../http/headers.js';
import { RegistryError } from '../oci/errors.js';
import type { Route } from '../upstream/selector.js';
import { isUpstreamTrouble, statusError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientMissBudget } from './client-budget.js';
import { offlineMiss } from './offline.js';
import type { TagList } from './results.js';

/** A tag list is bigger than a manifest, but still bounded. */
const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

export class TagListService {
  constructor(
    private readonly index: CacheIndex,
    private readonly upstreams: Upstreams,
    private readonly offline: boolean,
    private readonly budget?: ClientMissBudget,
  ) {}

  /** `client`: the address whose budget of upstream misses the request spends (none: not counted). */
  async list(route: Route, clientName: string, n: number | undefined, last: string | undefined, client?: string): Promise<TagList> {
    if (this.offline) {
      const known = this.index.tagsOf(route.upstream.name, route.repository);
      if (known.length === 0) throw offlineMiss('NAME_UNKNOWN', route, route.repository);
      return { ...paginate(known, n, last), name: clientName, outcome: 'hit' };
    }
    const query = new URLSearchParams();
    if (n !== undefined) query.set('n', String(n));
    if (last !== undefined) query.set('last', last);
    const qs = query.size > 0 ? `?${query}` : '';
    let failure: RegistryError;
    try {
      // Over its budget, the client gets the tags we know, or the 429.
      this.budget?.charge(client);
      const response = await this.upstreams.request(route, 'tags', { method: 'GET', path: `/v2/${route.repository}/tags/list${qs}` });
      const body = await readLimited(response.body, MAX_TAG_LIST_BYTES);
      if (response.status === 200) {
        const parsed = JSON.parse(body.toString('utf8')) as { tags?: unknown };
        // The spec wants lexical order; distribution's unpaginated answer is in storage order.
        const tags = Array.isArray(parsed.tags) ? parsed.tags.filter((t): t is string => typeof t === 'string').sort() : [];
        const hasNext = /rel="?next"?/.test(headerValue(response.headers, 'link') ?? '');
        if (hasNext) return { name: clientName, tags, next: tags.at(-1), outcome: 'miss' };
        // An upstream without pagination (distribution 2.x ignores n and last) sent it all: page it here.
        return { ...paginate(tags, n, last), name: clientName, outcome: 'miss' };
      }
      failure = statusError(route, response, 'tags', body.toString('utf8'));
      if (response.status === 404) throw failure;
    } catch (err) {
      if (!isUpstreamTrouble(err)) throw err;
      failure = err as RegistryError;
    }
    const known = this.index.tagsOf(route.upstream.name, route.repository);
    if (known.length === 0) throw failure;
    return { ...paginate(known, n, last), name: clientName, outcome: 'stale' };
  }
}

function paginate(tags: string[], n: number | undefined, last: string | undefined): { tags: string[]; next: string | undefined } {
  const sorted = [...tags].sort();
  const from = last === undefined ? sorted : sorted.filter((t) => t > last);
  if (n === undefined || from.length <= n) return { tags: from, next: undefined };
  const page = from.slice(0, n);
  return { tags: page, next: page.at(-1) };
}
