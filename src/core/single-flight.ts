// Coalescing identical work: while one manifest fetch, tag revalidation or referrers fetch for
// a key runs, every other caller for that key waits for its result instead of asking the
// upstream again.

import type { CacheOutcome, ManifestResult } from './results.js';

export class SingleFlight<T extends { outcome: CacheOutcome } = ManifestResult> {
  private readonly inFlight = new Map<string, Promise<T>>();

  /** Is work for `key` running (a caller would join it rather than start it)? */
  has(key: string): boolean {
    return this.inFlight.has(key);
  }

  /** The first caller runs `work`; the others get its result marked 'coalesced' (or 'stale'). */
  async run(key: string, work: () => Promise<T>): Promise<T> {
    const running = this.inFlight.get(key);
    if (running) {
      const result = await running;
      return { ...result, outcome: result.outcome === 'stale' ? 'stale' : 'coalesced' };
    }
    const promise = work().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, promise);
    return promise;
  }
}
