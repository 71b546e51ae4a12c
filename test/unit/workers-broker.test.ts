// The primary's broker (src/workers/broker.ts): who leads a flight across workers, what a
// follower hears and when, shared token buckets and leases, and a dead worker's share.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { buildConfig } from '../../src/config.js';
import { Broker, type ToWorker } from '../../src/workers/broker.js';
import { WorkerLink } from '../../src/workers/worker-link.js';

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

describe('one blob download across workers', () => {
  const running = (written: number) => ({ state: 'running' as const, path: '/cache/tmp/x', totalSize: 100, written, verified: false });
  const toWorker = (sent: { to: number; message: ToWorker }[], to: number, kind: ToWorker['mirror']) => sent.filter((s) => s.to === to && s.message.mirror === kind).map((s) => s.message);

  it('the first claim owns it; later claims follow with the latest news, which reaches every follower; the owner hears how many follow', () => {
    const { b, sent, replies } = broker();
    b.handle(1, { mirror: 'dl-claim', digest: 'd', repository: 'hub\u0000team/app', req: 1 });
    expect(replies(1)).toEqual([{ role: 'own' }]);
    b.handle(1, { mirror: 'dl-news', digest: 'd', news: running(10) });
    b.handle(2, { mirror: 'dl-claim', digest: 'd', repository: 'hub\u0000team/other', req: 1 });
    expect(replies(2)).toEqual([{ role: 'follow', owner: 1, repository: 'hub\u0000team/app', news: running(10) }]);
    b.handle(3, { mirror: 'dl-claim', digest: 'd', repository: 'hub\u0000team/app', req: 1 });
    expect(toWorker(sent, 1, 'dl-followers')).toEqual([
      { mirror: 'dl-followers', digest: 'd', followers: 1 },
      { mirror: 'dl-followers', digest: 'd', followers: 2 },
    ]);
    // News from a worker that does not own the download is ignored.
    b.handle(2, { mirror: 'dl-news', digest: 'd', news: running(99) });
    b.handle(1, { mirror: 'dl-news', digest: 'd', news: running(50) });
    expect(toWorker(sent, 2, 'dl-news')).toEqual([{ mirror: 'dl-news', digest: 'd', news: running(50) }]);
    expect(toWorker(sent, 3, 'dl-news')).toEqual([{ mirror: 'dl-news', digest: 'd', news: running(50) }]);
    b.handle(2, { mirror: 'dl-unfollow', digest: 'd' });
    expect(toWorker(sent, 1, 'dl-followers').at(-1)).toEqual({ mirror: 'dl-followers', digest: 'd', followers: 1 });
    // Done: forgotten, and the next claim owns a download anew (after finding the store has it).
    b.handle(1, { mirror: 'dl-news', digest: 'd', news: { ...running(100), state: 'done', verified: true } });
    expect(toWorker(sent, 2, 'dl-news')).toHaveLength(1);
    expect(toWorker(sent, 3, 'dl-news')).toHaveLength(2);
    expect(b.sharedDownloadCount).toBe(0);
    b.handle(2, { mirror: 'dl-claim', digest: 'd', repository: 'hub\u0000team/app', req: 2 });
    expect(replies(2).at(-1)).toEqual({ role: 'own' });
  });

  it('an owner that dies orphans its download: every follower hears it, and the first to claim again owns it', () => {
    const { b, sent, replies } = broker();
    b.handle(1, { mirror: 'dl-claim', digest: 'd', repository: 'r', req: 1 });
    b.handle(2, { mirror: 'dl-claim', digest: 'd', repository: 'r', req: 1 });
    b.handle(3, { mirror: 'dl-claim', digest: 'd', repository: 'r', req: 1 });
    b.workerGone(1);
    for (const follower of [2, 3]) expect(toWorker(sent, follower, 'dl-news')).toEqual([{ mirror: 'dl-news', digest: 'd', news: { state: 'orphaned', written: 0, verified: false } }]);
    b.handle(3, { mirror: 'dl-claim', digest: 'd', repository: 'r', req: 2 });
    b.handle(2, { mirror: 'dl-claim', digest: 'd', repository: 'r', req: 2 });
    expect(replies(3).at(-1)).toEqual({ role: 'own' });
    expect(replies(2).at(-1)).toEqual({ role: 'follow', owner: 3, repository: 'r', news: undefined });
    // A follower that dies is only no longer counted.
    b.workerGone(2);
    expect(toWorker(sent, 3, 'dl-followers').at(-1)).toEqual({ mirror: 'dl-followers', digest: 'd', followers: 0 });
    expect(b.sharedDownloadCount).toBe(1);
  });
});

describe('the worker end of the channel', () => {
  it('news right behind a claim reply reaches the download the claim continuation registers', async () => {
    // Node delivers IPC messages read together in consecutive ticks, ahead of promise
    // continuations: the follower registered after `await claimDownload` must still hear it.
    const sentToPrimary: unknown[] = [];
    const channel = Object.assign(new EventEmitter(), { connected: true, send: (message: unknown) => (sentToPrimary.push(message), true) });
    const link = new WorkerLink(2, channel);
    const registered = new Map<string, number[]>();
    link.onDownloadNews((digest, news) => registered.get(digest)?.push(news.written));
    const following = link.claimDownload('d', 'r').then((claim) => {
      registered.set('d', []);
      return claim;
    });
    const req = (sentToPrimary[0] as { req: number }).req;
    process.nextTick(() => channel.emit('message', { mirror: 'reply', req, value: { role: 'follow', owner: 1, repository: 'r', news: undefined } }));
    process.nextTick(() => channel.emit('message', { mirror: 'dl-news', digest: 'd', news: { state: 'running', path: '/t', totalSize: 9, written: 5, verified: false } }));
    expect(await following).toMatchObject({ role: 'follow', owner: 1 });
    await new Promise((resolve) => setImmediate(resolve));
    expect(registered.get('d')).toEqual([5]);
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
