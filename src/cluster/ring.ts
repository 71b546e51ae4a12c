// A consistent-hash ring over the replicas: each digest has one owner, which performs the
// single upstream download; the other replicas read from it. Adding or removing a replica
// moves only ~1/N of the digests.

import { createHash } from 'node:crypto';

const VIRTUAL_NODES = 128;

function point(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0);
}

export class HashRing {
  private readonly points: { at: number; member: string }[] = [];

  constructor(members: readonly string[]) {
    for (const member of new Set(members)) {
      for (let i = 0; i < VIRTUAL_NODES; i++) this.points.push({ at: point(`${member}#${i}`), member });
    }
    this.points.sort((a, b) => a.at - b.at || a.member.localeCompare(b.member));
  }

  /** The replica that owns `key` (the first point clockwise from its hash). */
  owner(key: string): string | undefined {
    if (this.points.length === 0) return undefined;
    const at = point(key);
    let lo = 0;
    let hi = this.points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]!.at < at) lo = mid + 1;
      else hi = mid;
    }
    return this.points[lo === this.points.length ? 0 : lo]!.member;
  }
}
