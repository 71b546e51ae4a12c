// Each client's budget of upstream misses: one client (one address; an IPv6 client by its
// /64) may make at most `perMinute` requests that the cache cannot answer, as a token
// bucket. Past it, its cold requests are answered 429 by the mirror; its cache hits and
// every other client are served as before. Requests without a client (the CLI, a peer
// replica forwarding a download) are never counted.

import { isIPv6 } from 'node:net';
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import { RegistryError } from '../oci/errors.js';
import { TokenBucket } from '../upstream/rate-limiter.js';

/** At most this many clients are tracked; the least recently seen are forgotten first. */
const MAX_CLIENTS = 10_000;

export class ClientMissBudget {
  private readonly buckets = new LRUCache<string, TokenBucket>({ max: MAX_CLIENTS });

  /** `perMinute` 0 = no budget. */
  constructor(
    private readonly perMinute: number,
    private readonly clock: Clock,
    /** Told each miss spent here (the other workers count it too: one budget per client, not per worker). */
    private readonly spent: (key: string) => void = () => undefined,
  ) {}

  /** A miss `key` spent at another worker: counted here too, never refused (it was answered there). */
  spentElsewhere(key: string): void {
    if (this.perMinute > 0) this.bucketOf(key).tryTake();
  }

  private bucketOf(key: string): TokenBucket {
    let bucket = this.buckets.get(key);
    if (!bucket) {
      bucket = new TokenBucket(this.perMinute / 60, this.perMinute, this.clock);
      this.buckets.set(key, bucket);
    }
    return bucket;
  }

  /** Spend one miss of `client`'s budget, or throw 429 TOOMANYREQUESTS when it is spent. */
  charge(client: string | undefined): void {
    if (this.perMinute <= 0 || client === undefined) return;
    const key = clientKey(client);
    if (this.bucketOf(key).tryTake()) {
      this.spent(key);
      return;
    }
    throw new RegistryError('TOOMANYREQUESTS', `too many uncached requests from ${client} (at most ${this.perMinute} a minute); cached content is still served`, {
      headers: { 'retry-after': String(Math.max(1, Math.ceil(60 / this.perMinute))) },
      detail: { client, missesPerMinute: this.perMinute },
    });
  }
}

/** One budget per IPv4 address, per IPv6 /64 (one host's share), and IPv4-mapped IPv6 as IPv4. */
export function clientKey(address: string): string {
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  if (!isIPv6(address)) return address;
  const [head = '', tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = address.includes('::') ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '').toLowerCase()).join(':')}::/64`;
}
