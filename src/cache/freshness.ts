// When a cached tag may be served without asking the upstream.
//
// A tag is fresh until `expiresAt` (last check + the upstream's TTL). Past that it is
// revalidated with a HEAD; if the upstream cannot answer, the stale copy is served
// (stale-if-error). In offline mode every cached tag is served whatever its age.
// Digests are immutable and never revalidated.

export interface TagTimes {
  checkedAt: number;
  expiresAt: number;
}

export type Freshness = 'fresh' | 'stale';

export function tagFreshness(tag: TagTimes, now: number, offline: boolean): Freshness {
  if (offline) return 'fresh';
  return now < tag.expiresAt ? 'fresh' : 'stale';
}

export function expiryFrom(checkedAt: number, ttlMs: number): number {
  return checkedAt + ttlMs;
}
