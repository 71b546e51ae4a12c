// The catalog (GET /v2/_catalog): the repositories the mirror holds, from the index (those
// with tags or links), named as clients name them: as stored for the default upstream
// (`library/alpine`), with the upstream's name in front for the others (`ghcr.io/org/app`).
// Lexically sorted and paged with n and last, as the distribution spec says.

import type { CacheIndex } from '../cache/index.js';

export interface CatalogPage {
  repositories: string[];
  /** The last name returned when more follow (for the Link header). */
  next: string | undefined;
}

export class CatalogService {
  constructor(
    private readonly index: CacheIndex,
    /** Configured upstreams' names (those of upstreams no longer configured are left out). */
    private readonly upstreams: readonly string[],
    private readonly defaultUpstream: string,
  ) {}

  list(n: number | undefined, last: string | undefined): CatalogPage {
    const configured = new Set(this.upstreams);
    const names = new Set<string>();
    for (const { upstream, repo } of this.index.repositories()) {
      if (!configured.has(upstream)) continue;
      names.add(upstream === this.defaultUpstream ? repo : `${upstream}/${repo}`);
    }
    const sorted = [...names].sort();
    const from = last === undefined ? sorted : sorted.filter((r) => r > last);
    if (n === undefined || from.length <= n) return { repositories: from, next: undefined };
    if (n === 0) return { repositories: [], next: undefined };
    const page = from.slice(0, n);
    return { repositories: page, next: page.at(-1) };
  }
}
