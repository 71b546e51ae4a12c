import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { parseTokenResponse, parseWwwAuthenticate, TokenCache } from '../../src/upstream/auth.js';
import { deferred } from '../fixtures/wait.js';

describe('WWW-Authenticate', () => {
  it("parses Docker Hub's Bearer challenge", () => {
    const [c] = parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"');
    expect(c).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' },
    });
  });
  it('parses Basic, unquoted values, spaces and several challenges', () => {
    expect(parseWwwAuthenticate('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
    const cs = parseWwwAuthenticate('Basic realm="a", Bearer realm=https://x/token, service=svc ,scope="repository:a/b:pull,push"');
    expect(cs.map((c) => c.scheme)).toEqual(['basic', 'bearer']);
    expect(cs[1]!.params).toEqual({ realm: 'https://x/token', service: 'svc', scope: 'repository:a/b:pull,push' });
  });
  it('handles escaped quotes and empty input', () => {
    expect(parseWwwAuthenticate('Bearer realm="a\\"b"')[0]!.params.realm).toBe('a"b');
    expect(parseWwwAuthenticate(undefined)).toEqual([]);
    expect(parseWwwAuthenticate('')).toEqual([]);
  });
});

describe('token responses', () => {
  it('reads token or access_token and defaults expires_in to 60 s', () => {
    const now = 1_000_000;
    expect(parseTokenResponse({ token: 't' }, now)).toEqual({ token: 't', expiresAt: now + 60_000 });
    expect(parseTokenResponse({ access_token: 'a', expires_in: 300 }, now)).toEqual({ token: 'a', expiresAt: now + 300_000 });
    expect(() => parseTokenResponse({}, now)).toThrow(/no token/);
  });
  it("uses issued_at only when the issuer's clock is close to ours", () => {
    const now = Date.UTC(2026, 0, 1);
    expect(parseTokenResponse({ token: 't', expires_in: 60, issued_at: new Date(now - 10_000).toISOString() }, now).expiresAt).toBe(now + 50_000);
    expect(parseTokenResponse({ token: 't', expires_in: 60, issued_at: '2001-01-01T00:00:00Z' }, now).expiresAt).toBe(now + 60_000);
  });
});

describe('token cache', () => {
  it('serves a token until shortly before it expires, then fetches a new one', async () => {
    const clock = new ManualClock();
    const cache = new TokenCache(clock, 10_000);
    let fetches = 0;
    const fetch = async () => ({ token: `t${++fetches}`, expiresAt: clock.now() + 300_000 });
    expect(await cache.getOrFetch('k', fetch)).toBe('t1');
    clock.advance(289_000);
    expect(await cache.getOrFetch('k', fetch)).toBe('t1');
    clock.advance(2_000); // within the 10 s margin
    expect(await cache.getOrFetch('k', fetch)).toBe('t2');
  });
  it('refreshes short-lived tokens after three quarters of their life', async () => {
    const clock = new ManualClock();
    const cache = new TokenCache(clock, 10_000);
    await cache.getOrFetch('k', async () => ({ token: 'short', expiresAt: clock.now() + 8_000 }));
    clock.advance(5_000);
    expect(cache.get('k')).toBe('short');
    clock.advance(1_500);
    expect(cache.get('k')).toBeUndefined();
  });
  it('makes one fetch for many concurrent callers, and invalidate forces a new one', async () => {
    const clock = new ManualClock();
    const cache = new TokenCache(clock);
    let fetches = 0;
    let answer = deferred();
    const fetch = async () => {
      fetches++;
      // The token endpoint answers only once every caller is waiting.
      await answer.promise;
      return { token: `t${fetches}`, expiresAt: clock.now() + 60_000 };
    };
    const all = Promise.all(Array.from({ length: 10 }, () => cache.getOrFetch('k', fetch)));
    answer.resolve();
    const tokens = await all;
    answer = deferred();
    answer.resolve();
    expect(new Set(tokens)).toEqual(new Set(['t1']));
    cache.invalidate('k');
    expect(await cache.getOrFetch('k', fetch)).toBe('t2');
    expect(fetches).toBe(2);
  });
  it('holds a bounded number of tokens however many repositories are pulled (issue 13)', async () => {
    const clock = new ManualClock();
    const cache = new TokenCache(clock);
    // One scope per repository: a client walking through names must not grow the map forever.
    for (let i = 0; i < 20_000; i++) cache.set(TokenCache.key('docker.io', 'registry', `repository:r${i}:pull`), { token: `t${i}`, expiresAt: clock.now() + 300_000 });
    expect(cache['tokens'].size).toBeLessThanOrEqual(4096);
    // The most recent ones are still there.
    expect(cache.get(TokenCache.key('docker.io', 'registry', 'repository:r19999:pull'))).toBe('t19999');
  });
});
