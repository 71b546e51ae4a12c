// The adaptive segment planner (src/cache/segment-planner.ts) on simulated links: time and
// rates are made up, so each case runs in microseconds and says exactly when connections
// are added.
import { describe, expect, it } from 'vitest';
import { DEFAULT_PLANNER_OPTIONS, SegmentPlanner } from '../../src/cache/segment-planner.js';

const MiB = 1024 * 1024;

/**
 * Drive a planner over a simulated download of `size` bytes, ticking every 100 ms. `rate(n)`
 * is the total bytes per second with n connections; a new connection delivers `openMs` after
 * it was added. Returns the connection count over time and when the download ended.
 */
function simulate(size: number, rate: (connections: number) => number, { maxSegments = 8, openMs = 100 } = {}) {
  const planner = new SegmentPlanner({ ...DEFAULT_PLANNER_OPTIONS, maxSegments });
  let received = 0;
  const opening: number[] = []; // when each pending connection starts delivering
  let flowing = 1;
  const history: { at: number; connections: number }[] = [{ at: 0, connections: 1 }];
  let now = 0;
  for (; received < size && now < 600_000; now += 100) {
    while (opening.length > 0 && opening[0]! <= now) {
      opening.shift();
      flowing++;
    }
    received = Math.min(size, received + (rate(flowing) * 100) / 1000);
    const connections = flowing + opening.length;
    const add = planner.next({ now, received, remaining: size - received, connections, flowing });
    if (add > 0) {
      for (let i = 0; i < add; i++) opening.push(now + openMs);
      history.push({ at: now, connections: connections + add });
    }
  }
  return { history, endedAt: now, planner, maxConnections: Math.max(...history.map((h) => h.connections)) };
}

describe('SegmentPlanner', () => {
  it('never splits a fast link: the rest never takes long', () => {
    // 256 MiB at 400 MiB/s: done in well under a second of measuring.
    expect(simulate(256 * MiB, () => 400 * MiB).maxConnections).toBe(1);
    // 256 MiB at 150 MiB/s: measured after a second, the ~100 MiB left take under a second.
    expect(simulate(256 * MiB, () => 150 * MiB).maxConnections).toBe(1);
  });

  it('splits a link that limits each connection after half a second, first to 4, then doubles up to the cap', () => {
    const run = simulate(256 * MiB, (n) => n * 8 * MiB);
    expect(run.history.map((h) => h.connections)).toEqual([1, 4, 8]);
    // The first addition comes after the first half second of measuring, not before.
    expect(run.history[1]!.at).toBeGreaterThanOrEqual(500);
    expect(run.history[1]!.at).toBeLessThan(800);
    // 256 MiB at 8 MiB/s is 32 s on one connection; adding as it goes makes it a fraction.
    expect(run.endedAt).toBeLessThan(8000);
    expect(simulate(256 * MiB, (n) => n * 8 * MiB, { maxSegments: 4 }).maxConnections).toBe(4);
    expect(simulate(256 * MiB, (n) => n * 8 * MiB, { maxSegments: 3 }).maxConnections).toBe(3);
    expect(simulate(256 * MiB, (n) => n * 8 * MiB, { maxSegments: 1 }).maxConnections).toBe(1);
  });

  it('stops after the first step that does not raise the total rate (the link, not the connection, is the limit)', () => {
    // 10 MiB/s in total however many connections share it: one try with 4, no more.
    const shared = simulate(128 * MiB, () => 10 * MiB);
    expect(shared.history.map((h) => h.connections)).toEqual([1, 4]);
    // Per-connection 8 MiB/s but 18 MiB/s in total: 1 → 4 pays (8 → 18), 4 → 6 adds nothing: settled there.
    const capped = simulate(256 * MiB, (n) => Math.min(n * 8 * MiB, 18 * MiB), { maxSegments: 6 });
    expect(capped.history.map((h) => h.connections)).toEqual([1, 4, 6]);
  });

  it('splits a mid-sized layer on a slow link as far as its rest calls for, at once', () => {
    // 8 MiB/s per connection. 28 MiB: after half a second 24 MiB are left (3 s), three connections.
    const mid = simulate(28 * MiB, (n) => n * 8 * MiB);
    expect(mid.history.map((h) => h.connections)).toEqual([1, 3]);
    // One stream would take 3.5 s; split at once it ends in about half that.
    expect(mid.endedAt).toBeLessThan(2000);
    // 20 MiB: 16 MiB left (2 s): one more connection. 12 MiB: 8 MiB left (1 s) is not long: one stream.
    expect(simulate(20 * MiB, (n) => n * 8 * MiB).history.map((h) => h.connections)).toEqual([1, 2]);
    expect(simulate(12 * MiB, (n) => n * 8 * MiB).maxConnections).toBe(1);
  });

  it('measures an addition only once the new connections deliver (slow to open is not "no gain")', () => {
    // Connections take 2 s to open: were the window started at once, 1 → 2 would look useless.
    const run = simulate(512 * MiB, (n) => n * 4 * MiB, { openMs: 2000 });
    expect(run.maxConnections).toBe(8);
  });

  it('does not split when what is left is too small to share', () => {
    // 2.5 MiB at 0.4 MiB/s would take long, but once measured under 2 MiB are left: two pieces under 1 MiB each.
    expect(simulate(2.5 * MiB, () => 0.4 * MiB).maxConnections).toBe(1);
    // The same rate with more to fetch is split, into no piece under 1 MiB: 3.5 MiB left, three pieces.
    expect(simulate(4 * MiB, () => 0.4 * MiB).maxConnections).toBe(3);
    expect(simulate(8 * MiB, () => 0.4 * MiB).maxConnections).toBe(4);
  });

  it('steals half of the biggest piece left only when that piece would take long on one connection', () => {
    const { planner } = simulate(256 * MiB, (n) => n * 8 * MiB);
    // 8 connections at 64 MiB/s in total: 8 MiB/s each.
    expect(planner.shouldSteal(16 * MiB, 7)).toBe(true);
    expect(planner.shouldSteal(4 * MiB, 7)).toBe(false);
    expect(planner.shouldSteal(1.5 * MiB, 7)).toBe(false);
    // Nothing measured yet: no stealing.
    expect(new SegmentPlanner({ ...DEFAULT_PLANNER_OPTIONS, maxSegments: 8 }).shouldSteal(100 * MiB, 1)).toBe(false);
  });
});
