// One upstream registry as the mirror sees it: where it lives, how long its tags are
// trusted (its TTL rules) and its 404s remembered, which repositories may be pulled through
// it, with which credentials, and its naming rules.

import type { PrefetchConfig, UpstreamConfig, UpstreamCredential } from '../config.js';
import { globToRegExp } from '../oci/reference.js';
import { TtlRules } from './ttl-rules.js';

export class UpstreamRegistry {
  readonly name: string;
  readonly url: string;
  /** The tag TTL when no rule matches. */
  readonly ttlMs: number;
  /** How long an upstream 404 for a manifest is remembered (0 = not at all). */
  readonly negativeTtlMs: number;
  readonly alias: string | undefined;
  readonly allowSchema1: boolean;
  /** In order of preference when their pulls left are equal; empty = anonymous only. */
  readonly credentials: readonly UpstreamCredential[];
  readonly segments: number | 'auto';
  readonly sendNamespace: boolean;
  readonly proxy: string | undefined;
  readonly maxConnections: number;
  readonly maxBytesPerSecond: number;
  /** Layer prefetch from this upstream (core/prefetch.ts). */
  readonly prefetch: PrefetchConfig;
  private readonly libraryPrefix: boolean;
  private readonly allowed: RegExp[];
  private readonly ttlRules: TtlRules;

  constructor(config: UpstreamConfig) {
    this.name = config.name;
    this.url = config.url;
    this.ttlMs = config.ttlMs;
    this.ttlRules = new TtlRules(config.ttlRules, config.ttlMs);
    this.negativeTtlMs = config.negativeTtlMs;
    this.alias = config.alias;
    this.allowSchema1 = config.allowSchema1;
    this.libraryPrefix = config.libraryPrefix;
    this.credentials = config.credentials;
    this.allowed = config.repositories.map(globToRegExp);
    this.segments = config.segments;
    this.sendNamespace = config.sendNamespace;
    this.proxy = config.proxy;
    this.maxConnections = config.maxConnections;
    this.maxBytesPerSecond = config.maxBytesPerSecond;
    this.prefetch = config.prefetch;
  }

  /** The repository name as the upstream knows it: Docker Hub's `alpine` is `library/alpine`. */
  canonicalRepository(name: string): string {
    return this.libraryPrefix && !name.includes('/') ? `library/${name}` : name;
  }

  /** How long a tag of `repository` (as the upstream names it) is trusted: the first matching rule, else the TTL. */
  ttlFor(repository: string, tag: string): number {
    return this.ttlRules.ttlFor(repository, tag);
  }

  allows(repository: string): boolean {
    return this.allowed.some((re) => re.test(repository));
  }
}
