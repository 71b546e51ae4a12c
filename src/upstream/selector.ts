// Which upstream (and which repository there) a client's request is for.
// Order: containerd's ?ns=<host>, then a first path component naming a configured
// upstream host or alias (podman/CRI-O path-prefix mirrors), then the default upstream.
// A namespace that names no configured upstream is refused: the mirror is never an open proxy.

import { LRUCache } from 'lru-cache';
import { RegistryError } from '../oci/errors.js';
import { validateRepositoryName } from '../oci/reference.js';
import type { UpstreamRegistry } from './registry.js';

export interface Route {
  upstream: UpstreamRegistry;
  /** Repository name at the upstream (after library/ normalisation). */
  repository: string;
  /** Set when the request was routed by ?ns=; echoed back as OCI-Namespace. */
  namespace: string | undefined;
}

export class UpstreamSelector {
  private readonly byHost = new Map<string, UpstreamRegistry>();
  /**
   * Routes already worked out (validation and globs cost more than a lookup). Names come from
   * clients: least recently used first out, so one client walking through names never
   * flushes the routes everyone else is using.
   */
  private readonly routes = new LRUCache<string, Route>({ max: 10_000 });

  constructor(
    readonly upstreams: readonly UpstreamRegistry[],
    private readonly defaultUpstream: UpstreamRegistry,
  ) {
    for (const u of upstreams) {
      this.byHost.set(u.name, u);
      if (u.alias) this.byHost.set(u.alias, u);
    }
    // Docker Hub answers to several names.
    const hub = this.byHost.get('docker.io');
    if (hub) for (const n of ['registry-1.docker.io', 'index.docker.io']) if (!this.byHost.has(n)) this.byHost.set(n, hub);
  }

  get(name: string): UpstreamRegistry | undefined {
    return this.byHost.get(name);
  }

  /** `name` is the repository path from the URL (already split from /manifests/ etc.). */
  select(name: string, ns: string | null): Route {
    const key = ns ? `${ns}\u0000${name}` : name;
    const known = this.routes.get(key);
    if (known) return known;
    const route = this.resolve(name, ns);
    this.routes.set(key, route);
    return route;
  }

  private resolve(name: string, ns: string | null): Route {
    let upstream: UpstreamRegistry | undefined;
    let repository = name;
    let namespace: string | undefined;
    if (ns !== null && ns !== '') {
      upstream = this.byHost.get(ns.toLowerCase());
      if (!upstream) {
        throw new RegistryError('NAME_UNKNOWN', `registry ${ns} is not mirrored here`, { detail: { ns } });
      }
      namespace = ns;
    } else {
      const slash = name.indexOf('/');
      const first = slash > 0 ? name.slice(0, slash) : '';
      const prefixed = first ? this.byHost.get(first) : undefined;
      if (prefixed) {
        upstream = prefixed;
        repository = name.slice(slash + 1);
      } else if (first.includes('.') || first.includes(':') || first === 'localhost') {
        // Looks like a registry host we do not mirror: refuse rather than guess.
        throw new RegistryError('NAME_UNKNOWN', `registry ${first} is not mirrored here`, { detail: { registry: first } });
      } else {
        upstream = this.defaultUpstream;
      }
    }
    validateRepositoryName(repository);
    // The limit is on the name the upstream sees: `library/` can take it past 255 characters.
    const canonical = upstream.canonicalRepository(repository);
    if (canonical !== repository) validateRepositoryName(canonical, `as ${upstream.name} names it`);
    repository = canonical;
    if (!upstream.allows(repository)) {
      throw new RegistryError('DENIED', `repository ${repository} is not allowed through ${upstream.name}`, {
        detail: { upstream: upstream.name, repository },
      });
    }
    return { upstream, repository, namespace };
  }
}
