// Which of an upstream's credentials a request uses. Docker Hub counts pulls (manifest GETs;
// HEADs are free) per account and reports what is left on its answers
// (`ratelimit-remaining: 76;w=21600`): the mirror notes it per credential and pulls with the
// one that has most left, an unknown count being a full one, and anonymously once every
// credential is spent for its window. Credentials are known here by their name, never by
// their secret.

import type { Clock } from '../clock.js';
import { ANONYMOUS_CREDENTIAL, type UpstreamCredential } from '../config.js';
import { headerValue } from '../http/headers.js';

/** Docker Hub's window when an answer names none. */
const DEFAULT_WINDOW_MS = 21_600_000;

export interface RateLimit {
  limit: number | undefined;
  remaining: number | undefined;
  updatedAt: number;
}

/** One credential's pulls left as last reported; `remaining` undefined once unknown (never seen, or the window passed). */
export interface CredentialQuota {
  credential: string;
  limit: number | undefined;
  remaining: number | undefined;
}

interface Reported {
  limit: number | undefined;
  remaining: number;
  seenAt: number;
  windowMs: number;
}

/** `76;w=21600` → { value: 76, windowMs: 21600000 } */
export function parseRateLimitHeader(value: string | undefined): { value: number; windowMs: number | undefined } | undefined {
  if (!value) return undefined;
  const [count, ...params] = value.split(';');
  const n = Number.parseInt(count!.trim(), 10);
  if (!Number.isFinite(n)) return undefined;
  const w = params.map((p) => /^\s*w\s*=\s*(\d+)\s*$/.exec(p)).find(Boolean);
  return { value: n, windowMs: w ? Number(w[1]) * 1000 : undefined };
}

export class CredentialPool {
  private readonly reported = new Map<string, Reported>();
  /** Pulls sent and not yet answered, per credential: concurrent pulls do not all pick one credential's last pull. */
  private readonly inFlight = new Map<string, number>();

  constructor(
    private readonly credentials: readonly UpstreamCredential[],
    private readonly clock: Clock,
  ) {}

  /**
   * The credential for the next request: the one with most pulls left (ties go to the one
   * listed first), or undefined (anonymous) when every one is spent. A request that counts as
   * a pull holds one of its credential's pulls until `settle`.
   */
  pick(countsPull: boolean): UpstreamCredential | undefined {
    const chosen = this.best();
    if (countsPull) {
      const name = chosen?.name ?? ANONYMOUS_CREDENTIAL;
      this.inFlight.set(name, (this.inFlight.get(name) ?? 0) + 1);
    }
    return chosen;
  }

  /** A pull picked with `pick(true)` was answered (or failed). */
  settle(credential: UpstreamCredential | undefined): void {
    const name = credential?.name ?? ANONYMOUS_CREDENTIAL;
    const n = (this.inFlight.get(name) ?? 0) - 1;
    if (n > 0) this.inFlight.set(name, n);
    else this.inFlight.delete(name);
  }

  /** Note the pulls left that an answer to a request sent with `credential` reported. */
  record(credential: UpstreamCredential | undefined, headers: Record<string, string | string[] | undefined>): void {
    const remaining = parseRateLimitHeader(headerValue(headers, 'ratelimit-remaining'));
    if (!remaining) return;
    const limit = parseRateLimitHeader(headerValue(headers, 'ratelimit-limit'));
    this.reported.set(credential?.name ?? ANONYMOUS_CREDENTIAL, {
      limit: limit?.value,
      remaining: remaining.value,
      seenAt: this.clock.now(),
      windowMs: remaining.windowMs ?? limit?.windowMs ?? DEFAULT_WINDOW_MS,
    });
  }

  /** A credential has no pull left (what it reported, less the pulls in flight). */
  spent(credential: UpstreamCredential): boolean {
    return this.left(credential.name) <= 0;
  }

  /** The rate limit of the credential the next request would use; undefined when unknown. */
  current(): RateLimit | undefined {
    const reported = this.known(this.best()?.name ?? ANONYMOUS_CREDENTIAL);
    return reported && { limit: reported.limit, remaining: reported.remaining, updatedAt: reported.seenAt };
  }

  /** Every credential's pulls left, then the anonymous ones'. */
  quotas(): CredentialQuota[] {
    return [...this.credentials.map((c) => c.name), ANONYMOUS_CREDENTIAL].map((name) => {
      const reported = this.known(name);
      return { credential: name, limit: reported?.limit, remaining: reported?.remaining };
    });
  }

  private best(): UpstreamCredential | undefined {
    let chosen: UpstreamCredential | undefined;
    let most = 0;
    for (const c of this.credentials) {
      const left = this.left(c.name);
      if (left > most) {
        chosen = c;
        most = left;
      }
    }
    return chosen;
  }

  /** Pulls left; unknown counts as full. */
  private left(name: string): number {
    const reported = this.known(name);
    return (reported ? reported.remaining : Number.POSITIVE_INFINITY) - (this.inFlight.get(name) ?? 0);
  }

  /** What was reported, while its window lasts (after it, every pull counted then is forgotten). */
  private known(name: string): Reported | undefined {
    const reported = this.reported.get(name);
    return reported && this.clock.now() < reported.seenAt + reported.windowMs ? reported : undefined;
  }
}
