// A per-upstream circuit breaker. After `threshold` consecutive failures the upstream is
// marked down for `cooldownMs`: requests fail at once (the mirror answers from its cache)
// instead of each waiting out a time-out. Then one probe at a time tests recovery.

import type { Clock } from '../clock.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private probing = false;
  private opened = false;

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly clock: Clock,
  ) {}

  get state(): BreakerState {
    if (!this.opened) return 'closed';
    return this.clock.now() - this.openedAt >= this.cooldownMs ? 'half-open' : 'open';
  }

  /** ms until a probe may be sent, 0 when requests may go now. */
  retryInMs(): number {
    return this.opened ? Math.max(0, this.openedAt + this.cooldownMs - this.clock.now()) : 0;
  }

  /** May a request go to the upstream now? Returns whether it is the recovery probe. */
  acquire(): { allowed: boolean; probe: boolean } {
    if (this.threshold <= 0) return { allowed: true, probe: false };
    const state = this.state;
    if (state === 'closed') return { allowed: true, probe: false };
    if (state === 'half-open' && !this.probing) {
      this.probing = true;
      return { allowed: true, probe: true };
    }
    return { allowed: false, probe: false };
  }

  success(probe: boolean): void {
    if (probe) this.probing = false;
    this.failures = 0;
    this.opened = false;
  }

  failure(probe: boolean): void {
    if (probe) this.probing = false;
    this.failures++;
    if (probe || (this.threshold > 0 && this.failures >= this.threshold)) {
      this.opened = true;
      this.openedAt = this.clock.now();
    }
  }

  /** The probe ended without telling us anything (e.g. a 404): let another one go. */
  release(probe: boolean): void {
    if (probe) this.probing = false;
  }
}
