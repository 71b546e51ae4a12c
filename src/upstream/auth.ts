// Challenge-driven authentication with an upstream registry, as Docker clients do it:
// the first 401's WWW-Authenticate decides (Bearer realm/service/scope, or Basic);
// bearer tokens are cached per (upstream, scope) until shortly before they expire.
// https://distribution.github.io/distribution/spec/auth/token/

import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse a WWW-Authenticate header into its challenges (RFC 7235 auth-param lists). */
export function parseWwwAuthenticate(header: string | undefined): Challenge[] {
  if (!header) return [];
  const challenges: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipSpace = () => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  const readToken = () => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  while (i < n) {
    skipSpace();
    while (i < n && header[i] === ',') {
      i++;
      skipSpace();
    }
    const scheme = readToken();
    if (!scheme) break;
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    for (;;) {
      skipSpace();
      const mark = i;
      const key = readToken();
      skipSpace();
      if (!key || header[i] !== '=') {
        // Not a param (a token68 or the next challenge's scheme): rewind and stop.
        i = mark;
        if (key) {
          // Skip a token68 so the outer loop does not read it as a scheme.
          while (i < n && header[i] !== ',') i++;
        }
        break;
      }
      i++; // '='
      skipSpace();
      let value = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++; // closing quote
      } else {
        const start = i;
        while (i < n && header[i] !== ',' && header[i] !== ' ') i++;
        value = header.slice(start, i);
      }
      challenge.params[key.toLowerCase()] = value;
      skipSpace();
      if (header[i] === ',') {
        i++;
        // Peek: "key=" continues this challenge; "Scheme key=" starts the next one.
        skipSpace();
        const peek = i;
        readToken();
        skipSpace();
        const continues = header[i] === '=';
        i = peek;
        if (!continues) break;
      } else break;
    }
  }
  return challenges;
}

/** The Basic Authorization header for a user name and password (RFC 7617). */
export function basicAuthorization(credentials: { username: string; password: string }): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

export interface TokenResponse {
  token: string;
  /** ms since epoch */
  expiresAt: number;
}

/** Parse a token endpoint's JSON. `expires_in` defaults to 60 s as the spec says. */
export function parseTokenResponse(body: unknown, now: number): TokenResponse {
  if (!body || typeof body !== 'object') throw new Error('token endpoint answered no JSON object');
  const b = body as Record<string, unknown>;
  const token = typeof b.token === 'string' && b.token ? b.token : typeof b.access_token === 'string' ? b.access_token : '';
  if (!token) throw new Error('token endpoint answered no token');
  const expiresIn = typeof b.expires_in === 'number' && b.expires_in > 0 ? b.expires_in : 60;
  let issuedAt = now;
  if (typeof b.issued_at === 'string') {
    const t = Date.parse(b.issued_at);
    // Trust the issuer's clock only when it is close to ours.
    if (Number.isFinite(t) && Math.abs(t - now) < 5 * 60_000) issuedAt = Math.min(t, now);
  }
  return { token, expiresAt: issuedAt + expiresIn * 1000 };
}

/**
 * Bearer tokens per (upstream, service, scope), refreshed before they expire. A scope names
 * one repository, so clients decide how many keys there are: the least recently used go
 * past MAX_ENTRIES, and each entry lives only until its refresh time (lru-cache's TTL on our clock).
 */
export class TokenCache {
  /** Tokens are ~1–3 KB (JWTs): a few MB at most. */
  static readonly MAX_ENTRIES = 4096;
  private readonly tokens: LRUCache<string, { token: string; refreshAt: number }>;
  /** In-flight fetches: bounded by the requests waiting for them. */
  private readonly pending = new Map<string, Promise<string>>();

  constructor(
    private readonly clock: Clock,
    /** Refresh this long before expiry (a pull that starts now must not fail halfway). */
    private readonly marginMs = 10_000,
  ) {
    this.tokens = new LRUCache({ max: TokenCache.MAX_ENTRIES, perf: clock });
  }

  static key(upstream: string, service: string, scope: string): string {
    return `${upstream}\u0000${service}\u0000${scope}`;
  }

  get(key: string): string | undefined {
    const entry = this.tokens.get(key);
    if (!entry) return undefined;
    if (this.clock.now() >= entry.refreshAt) {
      this.tokens.delete(key);
      return undefined;
    }
    return entry.token;
  }

  set(key: string, token: TokenResponse): void {
    // Short-lived tokens refresh after three quarters of their life, long ones marginMs early.
    const now = this.clock.now();
    const life = token.expiresAt - now;
    const refreshAt = token.expiresAt - Math.min(this.marginMs, life / 4);
    if (refreshAt <= now) return;
    this.tokens.set(key, { token: token.token, refreshAt }, { ttl: refreshAt - now });
  }

  invalidate(key: string): void {
    this.tokens.delete(key);
  }

  /** One token fetch per key at a time, however many requests need it. */
  async getOrFetch(key: string, fetchToken: () => Promise<TokenResponse>): Promise<string> {
    const cached = this.get(key);
    if (cached) return cached;
    let pending = this.pending.get(key);
    if (!pending) {
      pending = fetchToken()
        .then((t) => {
          this.set(key, t);
          return t.token;
        })
        .finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return pending;
  }
}
