// The eviction lease of a shared bucket (issue 13, item 7), against an in-memory object store
// that honours (or ignores) conditional writes the way S3 does: at most one replica holds it,
// it expires when its holder stops renewing, and lost answers are settled by reading it back.
import { describe, expect, it } from 'vitest';
import { PreconditionFailed, type ControlObjects } from '../../src/cache/blob-store.js';
import { EvictionLease, LEASE_OBJECT, probeConditionalWrites } from '../../src/cache/eviction-lease.js';
import { ManualClock } from '../../src/clock.js';

const TTL = 30_000;

/** An object store in memory; every call yields, so concurrent callers interleave as over a network. */
class FakeObjects implements ControlObjects {
  readonly objects = new Map<string, { body: Buffer; etag: string }>();
  private etags = 0;
  /** A store that ignores If-None-Match / If-Match. */
  ignoreConditions = false;
  /** The next write lands but its answer is lost (the client sees an error). */
  loseNextAnswer = false;
  writes = 0;

  async get(name: string) {
    await new Promise((r) => setImmediate(r));
    const o = this.objects.get(name);
    return o && { body: Buffer.from(o.body), etag: o.etag };
  }

  async put(name: string, body: Buffer, condition?: { ifAbsent: true } | { ifEtag: string }) {
    await new Promise((r) => setImmediate(r));
    const current = this.objects.get(name);
    if (condition && !this.ignoreConditions) {
      if ('ifAbsent' in condition && current) throw new PreconditionFailed(name);
      if ('ifEtag' in condition && current?.etag !== condition.ifEtag) throw new PreconditionFailed(name);
    }
    const etag = `etag-${++this.etags}`;
    this.objects.set(name, { body: Buffer.from(body), etag });
    if (name === LEASE_OBJECT) this.writes++;
    if (this.loseNextAnswer) {
      this.loseNextAnswer = false;
      throw new Error('socket hang up');
    }
    return etag;
  }

  async delete(name: string) {
    this.objects.delete(name);
  }

  async list(prefix: string) {
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).map((name) => ({ name, modifiedAt: 0 }));
  }

  holder(): string | undefined {
    const o = this.objects.get(LEASE_OBJECT);
    return o && (JSON.parse(o.body.toString()) as { holder: string }).holder;
  }
}

function lease(objects: FakeObjects, holder: string, clock: ManualClock, sleep?: (ms: number) => Promise<void>) {
  return new EvictionLease(objects, { holder, ttlMs: TTL, now: () => clock.now(), settleMs: 50, sleep });
}

describe('eviction lease', () => {
  it('probes whether the store honours conditional writes, and leaves no probe object behind', async () => {
    const honours = new FakeObjects();
    expect(await probeConditionalWrites(honours, 'n1')).toBe(true);
    const ignores = new FakeObjects();
    ignores.ignoreConditions = true;
    expect(await probeConditionalWrites(ignores, 'n2')).toBe(false);
    expect([...honours.objects.keys(), ...ignores.objects.keys()]).toEqual([]);
  });

  it('the first replica takes it; the second is refused while the holder renews', async () => {
    const objects = new FakeObjects();
    const clock = new ManualClock();
    const a = lease(objects, 'a', clock);
    const b = lease(objects, 'b', clock);
    expect(await a.refresh()).toMatchObject({ held: true, expiresAt: clock.now() + TTL });
    expect(await b.refresh()).toMatchObject({ held: false, holder: 'a' });
    for (let i = 0; i < 5; i++) {
      clock.advance(TTL / 3);
      expect(await a.refresh()).toMatchObject({ held: true, expiresAt: clock.now() + TTL });
      expect(await b.refresh()).toMatchObject({ held: false, holder: 'a' });
      expect([a.holds(), b.holds()]).toEqual([true, false]);
    }
  });

  it('of many replicas racing for an absent or an expired lease, exactly one wins', async () => {
    const objects = new FakeObjects();
    const clock = new ManualClock();
    const ids = ['a', 'b', 'c', 'd', 'e'];
    const contenders = ids.map((id) => lease(objects, id, clock));
    const first = await Promise.all(contenders.map((l) => l.refresh()));
    expect(first.filter((s) => s.held)).toHaveLength(1);
    expect(contenders.filter((l) => l.holds())).toHaveLength(1);
    const winner = contenders.find((l) => l.holds())!;
    const winnerId = ids[contenders.indexOf(winner)];
    expect(objects.holder()).toBe(winnerId);
    // The holder stops; once the lease has expired the others race again (the old holder too late).
    clock.advance(TTL + 1);
    const others = contenders.filter((l) => l !== winner);
    const second = await Promise.all(others.map((l) => l.refresh()));
    expect(second.filter((s) => s.held)).toHaveLength(1);
    expect(second.find((s) => s.held)).toMatchObject({ takenFrom: winnerId });
    expect(contenders.filter((l) => l.holds())).toHaveLength(1);
    expect(await winner.refresh()).toMatchObject({ held: false });
  });

  it('expires when its holder stops renewing; the holder stops deleting a third of the TTL before that', async () => {
    const objects = new FakeObjects();
    const clock = new ManualClock();
    const a = lease(objects, 'a', clock);
    const b = lease(objects, 'b', clock);
    await a.refresh();
    clock.advance((TTL * 2) / 3 + 1);
    expect(a.holds()).toBe(false); // margin for clock skew and a delete in flight
    expect(await b.refresh()).toMatchObject({ held: false, holder: 'a' }); // not expired for the others yet
    clock.advance(TTL / 3);
    expect(await b.refresh()).toMatchObject({ held: true, takenFrom: 'a' });
    expect(objects.holder()).toBe('b');
    expect(await a.refresh()).toMatchObject({ held: false, holder: 'b' });
  });

  it('a release lets another replica take it at once', async () => {
    const objects = new FakeObjects();
    const clock = new ManualClock();
    const a = lease(objects, 'a', clock);
    const b = lease(objects, 'b', clock);
    await a.refresh();
    await a.release();
    expect(a.holds()).toBe(false);
    expect(await b.refresh()).toMatchObject({ held: true, takenFrom: 'a' });
  });

  it('a write whose answer is lost is settled by reading the lease back', async () => {
    const objects = new FakeObjects();
    const clock = new ManualClock();
    const a = lease(objects, 'a', clock);
    await a.refresh(); // probes first
    clock.advance(TTL / 3);
    objects.loseNextAnswer = true;
    expect(await a.refresh()).toMatchObject({ held: true, expiresAt: clock.now() + TTL });
    expect(a.holds()).toBe(true);
  });

  it('an unreadable lease object counts as expired', async () => {
    const objects = new FakeObjects();
    objects.objects.set(LEASE_OBJECT, { body: Buffer.from('not json'), etag: 'x' });
    const clock = new ManualClock();
    expect(await lease(objects, 'a', clock).refresh()).toMatchObject({ held: true });
  });

  it('on a store that ignores conditions: write, wait, read back; of two racing, only the last writer holds it', async () => {
    const objects = new FakeObjects();
    objects.ignoreConditions = true;
    const clock = new ManualClock();
    const realSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
    const a = lease(objects, 'a', clock, realSleep);
    const b = lease(objects, 'b', clock, realSleep);
    const states = await Promise.all([a.refresh(), b.refresh()]);
    expect(a.conditionalWrites).toBe(false);
    expect(states.filter((s) => s.held)).toHaveLength(1);
    expect([a, b].filter((l) => l.holds())).toHaveLength(1);
    const holder = objects.holder();
    expect(states[holder === 'a' ? 0 : 1]).toMatchObject({ held: true });
  });
});
