// The client's address behind load balancers. X-Forwarded-For is believed only when the
// request comes from a configured trusted proxy, and it is read from the right: each trusted
// proxy appends the address it saw, so the first untrusted address from the right is the
// client. Whatever a client writes into the header itself sits further left and is ignored.

import { BlockList, isIP } from 'node:net';

/** `::ffff:10.0.0.1` (an IPv4 peer on a dual-stack socket) → `10.0.0.1`; ports and brackets dropped. */
export function normalizeAddress(text: string): string | undefined {
  let a = text.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(a);
  if (bracketed) a = bracketed[1]!;
  else if (/^[\d.]+:\d+$/.test(a)) a = a.slice(0, a.lastIndexOf(':'));
  if (a.toLowerCase().startsWith('::ffff:') && isIP(a.slice(7)) === 4) a = a.slice(7);
  return isIP(a) === 0 ? undefined : a;
}

export class TrustedProxies {
  private readonly list = new BlockList();
  readonly size: number;

  /** `entries`: addresses and CIDR blocks (validated by the config). */
  constructor(entries: readonly string[]) {
    for (const entry of entries) {
      const [address, prefix] = entry.split('/');
      const normalized = normalizeAddress(address!);
      if (!normalized) throw new Error(`not an address: ${entry}`);
      const family = isIP(normalized) === 4 ? 'ipv4' : 'ipv6';
      if (prefix === undefined) this.list.addAddress(normalized, family);
      else this.list.addSubnet(normalized, Number(prefix), family);
    }
    this.size = entries.length;
  }

  trusts(address: string): boolean {
    return this.list.check(address, isIP(address) === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client's address: the peer's, or when the peer is a trusted proxy, the right-most
   * X-Forwarded-For address that is not itself a trusted proxy (all trusted: the left-most
   * valid one; an unreadable entry ends the walk at the last trusted hop).
   */
  clientAddress(peer: string | undefined, forwardedFor: string | string[] | undefined): string | undefined {
    if (this.size === 0 || peer === undefined || forwardedFor === undefined) return peer;
    let client = normalizeAddress(peer);
    if (client === undefined || !this.trusts(client)) return peer;
    const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',');
    // Bounded: a header of thousands of hops costs no more than the last few.
    for (let i = hops.length - 1, seen = 0; i >= 0 && seen < 32; i--, seen++) {
      const hop = normalizeAddress(hops[i]!);
      if (hop === undefined) break;
      client = hop;
      if (!this.trusts(hop)) break;
    }
    return client;
  }
}
