// An upstream's authentication challenge, learned once. Until the first answer says what the
// upstream wants, one request goes without credentials (the probe) and the requests that
// arrive meanwhile wait for what it learns: twenty clients starting at once cost one 401,
// not twenty.

import type { Challenge } from './auth.js';

export interface ChallengeTurn {
  /** The challenge to answer; undefined when the upstream asks none (or nothing is known). */
  challenge: Challenge | undefined;
  /** This request is the probe: it must call `learn()` with what it hears, then `release()`. */
  probe: boolean;
}

export class ChallengeGate {
  private challenge: Challenge | undefined;
  /** A response has told whether (and how) the upstream challenges. */
  private known = false;
  private probing: { done: Promise<void>; release: () => void } | undefined;

  /** The challenge last learned (a later 401 may bring a new one). */
  get current(): Challenge | undefined {
    return this.challenge;
  }

  /** Before a request: the challenge to answer, after waiting for a probe in progress. */
  async turn(): Promise<ChallengeTurn> {
    if (this.known) return { challenge: this.challenge, probe: false };
    if (!this.probing) {
      let release!: () => void;
      const done = new Promise<void>((r) => (release = r));
      this.probing = { done, release };
      return { challenge: undefined, probe: true };
    }
    await this.probing.done;
    // A probe that failed (network, time-out) taught nothing: go on as it did, in parallel.
    return { challenge: this.challenge, probe: false };
  }

  /**
   * What an answer taught: a 401's challenge (undefined when none was usable), or, for an
   * answer to a request sent without credentials that was no 401, that none is asked.
   */
  learn(challenge: Challenge | undefined): void {
    this.known = true;
    if (challenge) this.challenge = challenge;
  }

  /** The probe is over (learned or failed): the waiting requests go. */
  release(): void {
    const probing = this.probing;
    this.probing = undefined;
    probing?.release();
  }
}
