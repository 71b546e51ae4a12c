// One upstream registry as the mirror sees it: where it lives, how long its tags are
// trusted, which repositories may be pulled through it, with which credentials, and its
// naming rules.

import type { UpstreamConfig, UpstreamCredential } from '../config.js';

function globToRegExp(glob: string): RegExp {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        out += '.*';
        i++;
      } else out += '[^/]*';
    } else if (c === '?') out += '[^/]';
    else out += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}

export class UpstreamRegistry {
  readonly name: string;
  readonly url: string;
  readonly ttlMs: number;
  readonly alias: string | undefined;
  readonly allowSchema1: boolean;
  /** In order of preference when their pulls left are equal; empty = anonymous only. */
  readonly credentials: readonly UpstreamCredential[];
  readonly segments: number;
  readonly sendNamespace: boolean;
  readonly proxy: string | undefined;
  readonly maxConnections: number;
  readonly maxBytesPerSecond: number;
  private readonly libraryPrefix: boolean;
  private readonly allowed: RegExp[];

  constructor(config: UpstreamConfig) {
    this.name = config.name;
    this.url = config.url;
    this.ttlMs = config.ttlMs;
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
  }

  /** The repository name as the upstream knows it: Docker Hub's `alpine` is `library/alpine`. */
  canonicalRepository(name: string): string {
    return this.libraryPrefix && !name.includes('/') ? `library/${name}` : name;
  }

  allows(repository: string): boolean {
    return this.allowed.some((re) => re.test(repository));
  }
}
