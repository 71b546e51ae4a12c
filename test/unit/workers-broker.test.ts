// The primary's broker (src/workers/broker.ts): who leads a flight across workers, what a
// follower hears and when, shared token buckets and leases, and a dead worker's share.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { buildConfig } from '../../src/config.js';
import { Broker, type ToWorker } from '../../src/workers/broker.js';

function broker(workers = [1, 2, 3], spec = { perSecond: 1, burst: 2 }) {
  const sent: { to: number; message: ToWorker }[] = [];
  const clock = new ManualClock();
  const b = new Broker((to, message) => sent.push({ to, message }), () => workers, () => spec, clock);
  const replies = (to: number) => sent.filter((s) => s.to === to && s.message.mirror === 'reply').map((s) => (s.message as { value: unknown }).value);
  return { b, sent, clock, replies };
}

describe('workers broker', () => {
  it('the first asker leads a flight; the others hear only when it releases, then the next leads anew', () => {
    const { b, replies } = broker();
    b.handle(1, { mirror: 'lead', key: 'k', req: 1 });
    b.handle(2, { mirror: 'lead', key: 'k', req: 1 });
    b.handle(3, { mirror: 'lead', key: 'other', req: 1 });
    expect(replies(1)).toEqual(['lead']);
    expect(replies(2)).toEqual([]);
    expect(replies(3)).toEqual(['lead']);
    b.handle(2, { mirror: 'release', key: 'k' }); // not the leader's: ignored
    expect(replies(2)).toEqual([]);
    b.handle(1, { mirror: 'release', key: 'k' });
    expect(replies(2)).toEqual(['followed']);
    b.handle(2, { mirror: 'lead', key: 'k', req: 2 });
    expect(replies(2)).toEqual(['followed', 'lead']);
  });

  it('a leader that dies releases its flights and leases', () => {
    const { b, replies } = broker();
    b.handle(1, { mirror: 'lead', key: 'k', req: 1 });
    b.handle(1, { mirror: 'lease', lease: 'eviction', req: 2 });
    b.handle(2, { mirror: 'lead', key: 'k', req: 1 });
    b.handle(3, { mirror: 'lease', lease: 'eviction', req: 1 });
    expect(replies(3)).toEqual([false]);
    b.workerGone(1);
    expect(replies(2)).toEqual(['followed']);
    expect(b.flightCount).toBe(0);
    b.handle(3, { mirror: 'lease', lease: 'eviction', req: 2 });
    expect(replies(3)).toEqual([false, true]);
  });

  it('one token bucket per name for all workers', () => {
    const { b, clock, replies } = broker([1, 2], { perSecond: 1, burst: 2 });
    b.handle(1, { mirror: 'token', bucket: 'revalidation\u0000docker.io', req: 1 });
    b.handle(2, { mirror: 'token', bucket: 'revalidation\u0000docker.io', req: 1 });
    b.handle(2, { mirror: 'token', bucket: 'revalidation\u0000docker.io', req: 2 });
    b.handle(1, { mirror: 'token', bucket: 'revalidation\u0000ghcr.io', req: 2 });
    expect(replies(1)).toEqual([true, true]);
    expect(replies(2)).toEqual([true, false]);
    clock.advance(1000);
    b.handle(2, { mirror: 'token', bucket: 'revalidation\u0000docker.io', req: 3 });
    expect(replies(2)).toEqual([true, false, true]);
  });

  it('relays a published event to every other worker, in order', () => {
    const { b, sent } = broker();
    b.handle(2, { mirror: 'publish', event: { kind: 'tag', key: 'a' } });
    b.handle(2, { mirror: 'publish', event: { kind: 'added', bytes: 5 } });
    expect(sent.map((s) => [s.to, s.message])).toEqual([
      [1, { mirror: 'event', event: { kind: 'tag', key: 'a' } }],
      [3, { mirror: 'event', event: { kind: 'tag', key: 'a' } }],
      [1, { mirror: 'event', event: { kind: 'added', bytes: 5 } }],
      [3, { mirror: 'event', event: { kind: 'added', bytes: 5 } }],
    ]);
    expect(b.handle(1, { mirror: 'metrics', req: 1 })).toBe(false);
  });
});

describe('workers configuration', () => {
  it('auto is the CPUs available; a count from the file, MIRROR_WORKERS or --workers; nonsense refused', () => {
    expect(buildConfig({}, {}).workers).toBeGreaterThanOrEqual(1);
    expect(buildConfig({ workers: 3 }, {}).workers).toBe(3);
    expect(buildConfig({ workers: 3 }, { env: { MIRROR_WORKERS: '2' } }).workers).toBe(2);
    expect(buildConfig({}, { env: { MIRROR_WORKERS: '2' }, overrides: { workers: '1' } }).workers).toBe(1);
    expect(() => buildConfig({ workers: 0 }, {})).toThrow(/workers/);
    expect(() => buildConfig({}, { overrides: { workers: 'many' } })).toThrow(/workers/);
  });
});
