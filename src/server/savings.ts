// What the mirror saved its upstreams: the figure an operator reports upward.
//   - Bytes: a blob GET answered from the cache (`hit`) or by joining another client's
//     download (`coalesced`) saves the bytes it sent. (A blob answered with a redirect to
//     object storage sends none through the mirror and is not counted.)
//   - Pulls: a pull (its first manifest GET, pull-events.ts) answered without a manifest
//     GET upstream saves one: Docker Hub counts manifest GETs against its pull limit and
//     HEADs not. Reasons: `tag-fresh` (a tag inside its TTL), `cache` (a digest held),
//     `revalidated` (the tag checked with a free HEAD), `stale` (served while the upstream
//     could not answer), `coalesced` (joined another client's GET), `negative` (a missing
//     manifest remembered). A `miss` costs the upstream its GET and saves nothing.
// Counted per UTC day in the index (batched with the access times, never on the request
// path) for the status page's 30 days, and as Prometheus counters.

import type { Mirror } from '../mirror.js';
import type { PullStart } from './pull-events.js';
import type { RequestContext } from './request-context.js';
import { DAY_MS } from '../units.js';

/** Outcome of a blob GET → why its bytes cost the upstream nothing. */
const BYTE_REASONS: Record<string, string> = { hit: 'cache', coalesced: 'coalesced' };
/** Outcome of a pull's first manifest GET → why it cost no upstream GET (hit: by tag or by digest). */
const PULL_REASONS: Record<string, string> = { revalidated: 'revalidated', stale: 'stale', coalesced: 'coalesced', negative: 'negative' };

export function recordSaving(mirror: Mirror, ctx: RequestContext, route: string, pull: PullStart | undefined): void {
  const outcome = ctx.outcome as string | undefined;
  if (!outcome || !ctx.upstream || ctx.req.method !== 'GET') return;
  let reason: string | undefined;
  let bytes = 0;
  let pulls = 0;
  if (route === 'blob' && ctx.bytes > 0) {
    reason = BYTE_REASONS[outcome];
    bytes = ctx.bytes;
  } else if (route === 'manifest' && pull) {
    reason = outcome === 'hit' ? (pull.byTag ? 'tag-fresh' : 'cache') : PULL_REASONS[outcome];
    pulls = 1;
  }
  if (reason === undefined) return;
  mirror.metrics.countSaving(ctx.upstream, reason, bytes, pulls);
  mirror.index.recordSaving(ctx.upstream, reason, bytes, pulls, mirror.clock.now());
}

export interface SavedFigures {
  bytes: number;
  pulls: number;
}

export interface SavedReport {
  today: SavedFigures & { day: string; byReason: Record<string, SavedFigures> };
  last30Days: SavedFigures;
  /** The last 30 UTC days, oldest first, today last (days with nothing saved are zeros). */
  daily: (SavedFigures & { day: string })[];
  /** The last 30 days by upstream. */
  byUpstream: (SavedFigures & { upstream: string })[];
}

const DAYS = 30;
const isoDay = (day: number) => new Date(day * DAY_MS).toISOString().slice(0, 10);

/** The saved figures from the index (call after a flush to include the last few seconds). */
export function savedReport(mirror: Mirror): SavedReport {
  const today = Math.floor(mirror.clock.now() / DAY_MS);
  const first = today - DAYS + 1;
  const daily = Array.from({ length: DAYS }, (_, i) => ({ day: isoDay(first + i), bytes: 0, pulls: 0 }));
  const byReason: Record<string, SavedFigures> = {};
  const byUpstream = new Map<string, SavedFigures>();
  const total = { bytes: 0, pulls: 0 };
  for (const row of mirror.index.savedSince(first)) {
    // A clock set back leaves rows "in the future": they are not today's.
    const slot = daily[row.day - first];
    if (!slot) continue;
    slot.bytes += row.bytes;
    slot.pulls += row.pulls;
    total.bytes += row.bytes;
    total.pulls += row.pulls;
    const u = byUpstream.get(row.upstream) ?? { bytes: 0, pulls: 0 };
    u.bytes += row.bytes;
    u.pulls += row.pulls;
    byUpstream.set(row.upstream, u);
    if (row.day === today) {
      const r = (byReason[row.reason] ??= { bytes: 0, pulls: 0 });
      r.bytes += row.bytes;
      r.pulls += row.pulls;
    }
  }
  const last = daily[DAYS - 1]!;
  return {
    today: { day: last.day, bytes: last.bytes, pulls: last.pulls, byReason },
    last30Days: total,
    daily,
    byUpstream: [...byUpstream].map(([upstream, f]) => ({ upstream, ...f })).sort((a, b) => b.bytes - a.bytes || b.pulls - a.pulls),
  };
}
