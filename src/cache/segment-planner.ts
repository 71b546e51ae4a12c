// When an adaptive (`segments: auto`) download adds Range connections, and when a finished
// connection takes over half of the biggest piece left. Pure: the download (downloads.ts)
// feeds it the clock, the bytes received and its connections; it answers with numbers.
//
// One stream is measured first. Only when the rest would take long at the measured rate is
// the download split: first to up to four connections (as many as the rest's length calls
// for), then doubled while each step raises the total rate by at least `minGain`: a link that
// limits each TCP connection keeps paying off up to the cap; a link whose total is the limit
// (or a fast local one) stops at the first step that does not help, or is never split at all.

export interface SegmentPlannerOptions {
  /** The most connections at once. */
  maxSegments: number;
  /** The first stream is measured at least this long before any split… */
  measureMs: number;
  /** …and for at least this many bytes (a rate from a few packets means nothing). */
  measureBytes: number;
  /** After connections were added, the total rate is measured this long once they all deliver. */
  probeMs: number;
  /** Split only when the rest would take longer than this at the measured rate… */
  longRemainingMs: number;
  /** …and, once a doubling paid, double again while the rest would still take longer than this. */
  keepAddingMs: number;
  /** A doubling must raise the total rate by at least this fraction for another one to be tried. */
  minGain: number;
  /** No piece smaller than this is split off (a new request costs a round trip or more). */
  minSegmentBytes: number;
  /** A finished connection takes half of the biggest piece only when that piece would take longer than this. */
  stealAfterMs: number;
}

export const DEFAULT_PLANNER_OPTIONS: Omit<SegmentPlannerOptions, 'maxSegments'> = {
  measureMs: 500,
  measureBytes: 512 * 1024,
  probeMs: 500,
  longRemainingMs: 1500,
  keepAddingMs: 1000,
  minGain: 0.25,
  minSegmentBytes: 1024 * 1024,
  stealAfterMs: 1000,
};

/** What the download reports at each tick. */
export interface TransferSample {
  now: number;
  /** Bytes received so far, all connections together. */
  received: number;
  /** Bytes not yet received (nor claimed by a write under way). */
  remaining: number;
  /** Connections running (opening or delivering). */
  connections: number;
  /** Of them, those that have delivered bytes on their current response. */
  flowing: number;
}

/** The first split adds connections up to this many times the measured stream(s). */
const FIRST_SPLIT_FACTOR = 4;

export class SegmentPlanner {
  private phase: 'measuring' | 'probing' | 'settled' = 'measuring';
  private window: { at: number; received: number } | undefined;
  private rateBeforeAddition = 0;
  /** The total rate last measured (bytes per ms; 0 = not yet). */
  lastRate = 0;
  /** When it stopped adding connections after having added some (for the log). */
  settledAt: number | undefined;

  constructor(readonly options: SegmentPlannerOptions) {}

  /** How many connections to add now (0 = none). */
  next(sample: TransferSample): number {
    if (this.phase === 'settled') return 0;
    // A window starts only once every connection delivers: one still opening would make an addition look useless.
    if (!this.window) {
      if (sample.flowing >= sample.connections) this.window = { at: sample.now, received: sample.received };
      return 0;
    }
    const elapsed = sample.now - this.window.at;
    const bytes = sample.received - this.window.received;
    if (this.phase === 'measuring' ? elapsed < this.options.measureMs || bytes < this.options.measureBytes : elapsed < this.options.probeMs) return 0;
    const rate = bytes / elapsed;
    this.lastRate = rate;
    if (this.phase === 'probing' && rate < this.rateBeforeAddition * (1 + this.options.minGain)) {
      // The last doubling did not pay: the link, not the connection, is the limit.
      this.phase = 'settled';
      this.settledAt = sample.now;
      return 0;
    }
    const add = this.worthAdding(sample, rate);
    if (add === 0) {
      if (this.phase === 'probing') {
        this.phase = 'settled';
        this.settledAt = sample.now;
      }
      // Still one stream: measure again (the link may slow down later).
      else this.window = { at: sample.now, received: sample.received };
      return 0;
    }
    this.phase = 'probing';
    this.rateBeforeAddition = rate;
    this.window = undefined;
    return add;
  }

  /**
   * How many connections to add (within the cap) when the rest is long and big enough to share.
   * After a doubling that paid, double again. The first split goes further when the rest is
   * long: to as many connections as would bring it near `keepAddingMs`, at most 4× the one
   * stream. Each step costs a probe (half a second or more), which for a mid-sized layer is
   * most of its time: 1 → 2 → 4 on a 28 MiB layer at 8 MiB/s per connection ended it before
   * the second step paid.
   */
  private worthAdding(sample: TransferSample, rate: number): number {
    const { maxSegments, longRemainingMs, keepAddingMs, minSegmentBytes } = this.options;
    const room = maxSegments - sample.connections;
    if (room <= 0 || rate <= 0) return 0;
    const restMs = sample.remaining / rate;
    // The first split has to beat a fast link's noise; after a doubling that paid, the link is
    // known to limit each connection, and another pays as long as the rest is not nearly done.
    if (restMs <= (this.phase === 'measuring' ? longRemainingMs : keepAddingMs)) return 0;
    const wanted = this.phase === 'measuring' ? Math.min(Math.ceil(restMs / keepAddingMs), FIRST_SPLIT_FACTOR * sample.connections) : 2 * sample.connections;
    let add = Math.min(room, Math.max(sample.connections, wanted - sample.connections));
    // No piece under minSegmentBytes: fewer connections when the rest is small.
    while (add > 0 && sample.remaining / (sample.connections + add) < minSegmentBytes) add--;
    return add;
  }

  /**
   * A connection finished its piece while `connections` others still run: should it take
   * half of the biggest piece left (`largestRemaining` bytes)? Only when that piece would
   * take long on one connection, so the tail does not run on one slow connection.
   */
  shouldSteal(largestRemaining: number, connections: number): boolean {
    if (largestRemaining < 2 * this.options.minSegmentBytes) return false;
    if (this.lastRate <= 0) return false;
    const perConnection = this.lastRate / Math.max(1, connections + 1);
    return largestRemaining / perConnection > this.options.stealAfterMs;
  }
}
