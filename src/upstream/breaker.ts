// A per-upstream circuit breaker. After `threshold` consecutive failures that say the
// upstream ITSELF is unhealthy, it is marked down for `cooldownMs`: requests fail at once
// (the mirror answers from its cache) instead of each waiting out a time-out. Then one
// probe at a time tests recovery.
//
// What counts: connection errors and time-outs, and 5xx answers to requests for no
// repository (`/v2/`). A 5xx for one repository is that request's failure (a client can
// provoke it on purpose: a name the upstream chokes on, a layer asked for as a manifest);
// 5xx answers count only once the recent failures span several distinct repositories.

import type { Clock } from '../clock.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

/** Repository-scoped 5xx answers count once the recent failures span this many repositories. */
export const DEFAULT_DISTINCT_REPOSITORIES = 3;

export class CircuitBreaker {
  /** Consecutive failures that say the upstream itself is unhealthy (network, time-out, /v2/). */
  private healthFailures = 0;
  /** Consecutive 5xx answers for some repository, and which repositories (up to the needed count). */
  private repositoryFailures = 0;
  private readonly failedRepositories = new Set<string>();
  private openedAt = 0;
  private probing = false;
  private opened = false;

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly clock: Clock,
    private readonly distinctRepositories = DEFAULT_DISTINCT_REPOSITORIES,
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
    this.healthFailures = 0;
    this.repositoryFailures = 0;
    this.failedRepositories.clear();
    this.opened = false;
  }

  /**
   * A failed request. `repository` set: a 5xx answer for that repository (evidence against
   * the upstream only together with failures for other repositories); unset: a connection
   * error, a time-out or a 5xx for `/v2/`, which say the upstream itself is unwell.
   */
  failure(probe: boolean, repository?: string): void {
    if (probe) this.probing = false;
    if (repository === undefined) this.healthFailures++;
    else {
      this.repositoryFailures++;
      if (this.failedRepositories.size < this.distinctRepositories) this.failedRepositories.add(repository);
    }
    // A failed probe (the upstream was already marked down) opens it again at once.
    if (probe || (this.threshold > 0 && this.evidence() >= this.threshold)) {
      this.opened = true;
      this.openedAt = this.clock.now();
    }
  }

  /** The probe ended without telling us anything (e.g. a 404): let another one go. */
  release(probe: boolean): void {
    if (probe) this.probing = false;
  }

  /** How many of the recent failures speak against the upstream's health. */
  private evidence(): number {
    const spread = this.failedRepositories.size >= this.distinctRepositories;
    return this.healthFailures + (spread ? this.repositoryFailures : 0);
  }
}
