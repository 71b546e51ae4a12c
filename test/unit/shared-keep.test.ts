// What replicas on a shared bucket need kept (issue 13, item 7): the merge of their published
// states and the evictor's order over the bucket, as pure functions.
import { describe, expect, it } from 'vitest';
import type { ControlObjects } from '../../src/cache/blob-store.js';
import { orderForEviction } from '../../src/cache/shared-eviction.js';
import { mergeStates, readStates, RecentUses, type ReplicaState } from '../../src/cache/shared-keep.js';

const d = (n: number) => `sha256:${String(n).padStart(64, '0')}`;

function state(replica: string, parts: Partial<ReplicaState> = {}): ReplicaState {
  return { replica, publishedAt: 0, heartbeatMs: 1000, pinned: [], fresh: [], inUse: [], used: [], ...parts };
}

function objectsWith(files: Record<string, { body: string; modifiedAt: number }>): ControlObjects & { deleted: string[] } {
  const deleted: string[] = [];
  return {
    deleted,
    async get(name) {
      const f = files[name];
      return f && { body: Buffer.from(f.body), etag: 'e' };
    },
    async put() {
      return 'e';
    },
    async delete(name) {
      deleted.push(name);
    },
    async list(prefix) {
      return Object.entries(files).filter(([n]) => n.startsWith(prefix)).map(([name, f]) => ({ name, modifiedAt: f.modifiedAt }));
    },
  };
}

describe('shared keep', () => {
  it('keeps every replica\'s pins; fresh and in-use content only of live replicas; the latest use of any', () => {
    const merged = mergeStates([
      { state: state('live', { pinned: [d(1)], fresh: [d(2)], inUse: [d(3)], used: [[d(5), 100]] }), live: true },
      { state: state('down', { pinned: [d(4)], fresh: [d(6)], inUse: [d(7)], used: [[d(5), 300], [d(8), 50]] }), live: false },
    ]);
    expect([...merged.keep].sort()).toEqual([d(1), d(2), d(3), d(4)]);
    expect(merged.lastUse.get(d(5))).toBe(300);
    expect(merged.lastUse.get(d(8))).toBe(50);
  });

  it('reads the other replicas\' states: skips its own, deletes expired ones, tells live from silent', async () => {
    const now = 1_000_000;
    const objects = objectsWith({
      'replicas/me.json': { body: JSON.stringify(state('me')), modifiedAt: now },
      'replicas/live.json': { body: JSON.stringify(state('live', { pinned: [d(1)] })), modifiedAt: now - 2000 },
      'replicas/silent.json': { body: JSON.stringify(state('silent', { pinned: [d(2)] })), modifiedAt: now - 60_000 },
      'replicas/gone.json': { body: JSON.stringify(state('gone', { pinned: [d(3)] })), modifiedAt: now - 500_000 },
    });
    const states = await readStates(objects, { exclude: 'me', now, expiryMs: 400_000 });
    expect(states.map((s) => [s.state.replica, s.live])).toEqual([['live', true], ['silent', false]]);
    expect(objects.deleted).toEqual(['replicas/gone.json']);
  });

  it('refuses to go on when a replica\'s state cannot be understood (its pins would be unknown)', async () => {
    const objects = objectsWith({ 'replicas/x.json': { body: '{"replica":"x"', modifiedAt: 10 } });
    await expect(readStates(objects, { now: 20, expiryMs: 1000 })).rejects.toThrow(/cannot understand replicas\/x.json/);
  });

  it('orders the bucket by the latest use of any replica (or the upload), and keeps recent and kept content', () => {
    const now = 100_000;
    const lastUse = new Map([[d(1), 90_000], [d(2), 10_000]]);
    const { entries, keep } = orderForEviction(
      [
        { digest: d(1), size: 1, modifiedAt: 1_000 }, // old upload, used recently elsewhere
        { digest: d(2), size: 1, modifiedAt: 2_000 },
        { digest: d(3), size: 1, modifiedAt: 5_000 },
        { digest: d(4), size: 1, modifiedAt: 99_000 }, // just uploaded
        { digest: d(5), size: 1, modifiedAt: 3_000 },
      ],
      { now, recentUseMs: 20_000, lastUse: (x) => lastUse.get(x), keep: (x) => x === d(5) },
    );
    expect(entries.map((e) => e.digest)).toEqual([d(5), d(3), d(2), d(1), d(4)]);
    expect([d(1), d(2), d(3), d(4), d(5)].map(keep)).toEqual([true, false, false, true, true]);
  });

  it('remembers a bounded number of recent uses, newest last, and says when a use is new', () => {
    const uses = new RecentUses(3);
    expect(uses.note(d(1), 1)).toBe(true);
    expect(uses.note(d(2), 2)).toBe(true);
    expect(uses.note(d(1), 3)).toBe(false);
    uses.note(d(3), 4);
    uses.note(d(4), 5);
    expect(uses.entries()).toEqual([[d(1), 3], [d(3), 4], [d(4), 5]]);
  });
});
