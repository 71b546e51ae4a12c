// Bearer tokens on the request path: one fetch per key however many requests need it, and a
// token in use renewed in the background before it runs out, so that a request holding a
// valid token never waits for the token service. Renewal is triggered by use (a request in
// the last part of a token's life), so an idle scope costs no token requests: its token
// simply lapses and the next request fetches one.

import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { TokenCache, TokenResponse } from './auth.js';

/**
 * Renew once this much of a token's life has passed. The cache stops handing a token out
 * 10 s before it expires, or after 3/4 of its life for short ones (auth.ts): renewal starts
 * before that (Docker Hub's 300 s tokens: at 210 s; the spec's default 60 s: at 42 s).
 */
const RENEW_AT_FRACTION = 0.7;
/** Renewals running at once, across upstreams; past it, the next use of a token tries again. */
const MAX_RENEWALS = 8;
/** After a failed renewal, the next use of the token tries again no sooner than this. */
const RENEW_RETRY_MS = 5_000;

export class TokenStore {
  /** When each cached token is due for renewal; bounded like the cache it describes. */
  private readonly renewAt = new LRUCache<string, number>({ max: 4096 });
  private readonly renewals = new Map<string, Promise<string>>();

  constructor(
    private readonly cache: TokenCache,
    private readonly clock: Clock,
    private readonly onRenewalError: (key: string, err: unknown) => void,
  ) {}

  /** The token for `key`: the cached one (renewed in the background when due), or a fetched one. */
  async token(key: string, fetchToken: () => Promise<TokenResponse>): Promise<string> {
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      const due = this.renewAt.get(key);
      if (due !== undefined && this.clock.now() >= due) this.renew(key, fetchToken);
      return cached;
    }
    // The cached token just ran out while its renewal is under way: that is the one to wait for.
    const renewing = this.renewals.get(key);
    if (renewing) return renewing.catch(() => this.fetch(key, fetchToken));
    return this.fetch(key, fetchToken);
  }

  /** The upstream refused `rejected`: drop it (unless a newer token replaced it already) and get another. */
  async replace(key: string, rejected: string | undefined, fetchToken: () => Promise<TokenResponse>): Promise<string> {
    if (rejected === undefined || this.cache.get(key) === rejected) {
      this.cache.invalidate(key);
      this.renewAt.delete(key);
    }
    return this.token(key, fetchToken);
  }

  private fetch(key: string, fetchToken: () => Promise<TokenResponse>): Promise<string> {
    return this.cache.getOrFetch(key, () => this.timed(key, fetchToken));
  }

  /** Fetch, and note when the new token will be due for renewal. */
  private async timed(key: string, fetchToken: () => Promise<TokenResponse>): Promise<TokenResponse> {
    const started = this.clock.now();
    const token = await fetchToken();
    this.renewAt.set(key, started + (token.expiresAt - started) * RENEW_AT_FRACTION);
    return token;
  }

  private renew(key: string, fetchToken: () => Promise<TokenResponse>): void {
    if (this.renewals.has(key) || this.renewals.size >= MAX_RENEWALS) return;
    const renewal = this.timed(key, fetchToken).then((token) => {
      this.cache.set(key, token);
      return token.token;
    });
    this.renewals.set(key, renewal);
    renewal
      .catch((err: unknown) => {
        this.renewAt.set(key, this.clock.now() + RENEW_RETRY_MS);
        this.onRenewalError(key, err);
      })
      .finally(() => this.renewals.delete(key));
  }
}
