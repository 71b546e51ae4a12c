// The pure parts of talking to an upstream economically: the challenge learned once, tokens
// renewed off the request path, and credentials chosen by the pulls they have left.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenCache, type TokenResponse } from '../../src/upstream/auth.js';
import { ChallengeGate } from '../../src/upstream/challenge-gate.js';
import { CredentialPool, parseRateLimitHeader } from '../../src/upstream/credentials.js';
import { TokenStore } from '../../src/upstream/token-store.js';

const bearer = { scheme: 'bearer', params: { realm: 'https://auth/token' } };

describe('challenge gate', () => {
  it('lets one request probe while the others wait for what it learns', async () => {
    const gate = new ChallengeGate();
    const first = await gate.turn();
    expect(first).toEqual({ challenge: undefined, probe: true });
    let waited = false;
    const second = gate.turn().then((t) => ((waited = true), t));
    await Promise.resolve();
    expect(waited).toBe(false);
    gate.learn(bearer);
    gate.release();
    expect(await second).toEqual({ challenge: bearer, probe: false });
    expect(await gate.turn()).toEqual({ challenge: bearer, probe: false });
  });

  it('after a failed probe, the waiting requests go on without a challenge, and the next one probes', async () => {
    const gate = new ChallengeGate();
    await gate.turn();
    const waiting = gate.turn();
    gate.release();
    expect(await waiting).toEqual({ challenge: undefined, probe: false });
    expect((await gate.turn()).probe).toBe(true);
  });

  it('an upstream that answers without a challenge is asked nothing again', async () => {
    const gate = new ChallengeGate();
    await gate.turn();
    gate.learn(undefined);
    gate.release();
    expect(await gate.turn()).toEqual({ challenge: undefined, probe: false });
  });
});

describe('token store', () => {
  function setup() {
    const clock = new ManualClock();
    const errors: unknown[] = [];
    const store = new TokenStore(new TokenCache(clock), clock, (_key, err) => errors.push(err));
    let fetches = 0;
    let gate: Promise<void> | undefined;
    const fetch = async (): Promise<TokenResponse> => {
      const n = ++fetches;
      if (gate) await gate;
      return { token: `t${n}`, expiresAt: clock.now() + 300_000 };
    };
    const hold = () => {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => {
        gate = undefined;
        release();
      };
    };
    return { clock, store, fetch, hold, errors, fetches: () => fetches };
  }

  it('fetches once for concurrent requests', async () => {
    const { store, fetch, fetches } = setup();
    expect(new Set(await Promise.all(Array.from({ length: 10 }, () => store.token('k', fetch))))).toEqual(new Set(['t1']));
    expect(fetches()).toBe(1);
  });

  it('renews a token used late in its life in the background; the request gets the old one at once', async () => {
    const { clock, store, fetch, hold, fetches } = setup();
    await store.token('k', fetch);
    clock.advance(200_000); // before 70 % of 300 s: no renewal
    expect(await store.token('k', fetch)).toBe('t1');
    expect(fetches()).toBe(1);
    clock.advance(20_000);
    const release = hold();
    // The token service hangs; the request is answered anyway, and only one renewal starts.
    expect(await store.token('k', fetch)).toBe('t1');
    expect(await store.token('k', fetch)).toBe('t1');
    expect(fetches()).toBe(2);
    // Past the old token's end while the renewal still runs: that renewal is awaited, not doubled.
    clock.advance(75_000);
    const late = store.token('k', fetch);
    release();
    expect(await late).toBe('t2');
    expect(fetches()).toBe(2);
    expect(await store.token('k', fetch)).toBe('t2');
  });

  it('never renews a token nobody uses: it lapses, and the next request fetches', async () => {
    const { clock, store, fetch, fetches } = setup();
    await store.token('k', fetch);
    clock.advance(3_600_000);
    expect(fetches()).toBe(1);
    expect(await store.token('k', fetch)).toBe('t2');
  });

  it('a failed renewal is reported, the valid token still served, and tried again a little later', async () => {
    const { clock, store, errors } = setup();
    let fail = false;
    let fetches = 0;
    const fetch = async (): Promise<TokenResponse> => {
      fetches++;
      if (fail) throw new Error('token service down');
      return { token: `t${fetches}`, expiresAt: clock.now() + 300_000 };
    };
    await store.token('k', fetch);
    clock.advance(250_000);
    fail = true;
    expect(await store.token('k', fetch)).toBe('t1');
    await new Promise((r) => setImmediate(r));
    expect(errors).toHaveLength(1);
    expect(await store.token('k', fetch)).toBe('t1');
    expect(fetches).toBe(2); // not at every request
    clock.advance(6_000);
    fail = false;
    expect(await store.token('k', fetch)).toBe('t1');
    await new Promise((r) => setImmediate(r));
    expect(fetches).toBe(3);
    expect(await store.token('k', fetch)).toBe('t3');
  });

  it('replaces a refused token once, however many requests it was refused to', async () => {
    const { store, fetch, fetches } = setup();
    const old = await store.token('k', fetch);
    const replaced = await Promise.all(Array.from({ length: 5 }, () => store.replace('k', old, fetch)));
    expect(new Set(replaced)).toEqual(new Set(['t2']));
    // A request refused with t1 after t2 arrived keeps t2.
    expect(await store.replace('k', old, fetch)).toBe('t2');
    expect(fetches()).toBe(2);
  });
});

describe('credential pool', () => {
  const alice = { name: 'alice', username: 'alice', password: 'a-secret' };
  const bob = { name: 'bot', username: 'bob', password: 'b-secret' };
  const said = (remaining: string, limit = '100;w=21600') => ({ 'ratelimit-remaining': remaining, 'ratelimit-limit': limit });

  it('reads Docker Hub headers', () => {
    expect(parseRateLimitHeader('76;w=21600')).toEqual({ value: 76, windowMs: 21_600_000 });
    expect(parseRateLimitHeader('5')).toEqual({ value: 5, windowMs: undefined });
    expect(parseRateLimitHeader('x')).toBeUndefined();
    expect(parseRateLimitHeader(undefined)).toBeUndefined();
  });

  it('uses the credential with most left (unknown counts as full), then anonymous once all are spent', () => {
    const clock = new ManualClock();
    const pool = new CredentialPool([alice, bob], clock);
    const pull = (remaining: number) => {
      const c = pool.pick(true);
      pool.record(c, said(`${remaining};w=21600`));
      pool.settle(c);
      return c?.name ?? 'anonymous';
    };
    expect(pull(1)).toBe('alice'); // both unknown: the first listed
    expect(pull(3)).toBe('bot'); // bob unknown = full
    expect(pull(2)).toBe('bot');
    expect(pull(0)).toBe('bot'); // 2 > 1
    expect(pull(0)).toBe('alice');
    expect(pool.pick(false)).toBeUndefined();
    expect(pool.quotas()).toEqual([
      { credential: 'alice', limit: 100, remaining: 0 },
      { credential: 'bot', limit: 100, remaining: 0 },
      { credential: 'anonymous', limit: undefined, remaining: undefined },
    ]);
    pool.record(undefined, said('40;w=21600'));
    expect(pool.current()).toEqual({ limit: 100, remaining: 40, updatedAt: clock.now() });
    // The window passes: what was counted then is forgotten, the credentials are full again.
    clock.advance(21_600_000);
    expect(pool.pick(false)).toBe(alice);
    expect(pool.quotas().map((q) => q.remaining)).toEqual([undefined, undefined, undefined]);
  });

  it('counts pulls in flight, so concurrent pulls do not all spend one credential’s last one', () => {
    const pool = new CredentialPool([alice, bob], new ManualClock());
    pool.record(alice, said('2;w=60'));
    pool.record(bob, said('1;w=60'));
    const picks = [pool.pick(true), pool.pick(true), pool.pick(true), pool.pick(true)];
    expect(picks.map((c) => c?.name)).toEqual(['alice', 'alice', 'bot', undefined]);
    // HEADs are free: they hold nothing.
    expect(pool.pick(false)).toBeUndefined();
    for (const c of picks) pool.settle(c);
    expect(pool.pick(false)).toBe(alice);
  });
});
