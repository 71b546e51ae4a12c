// The pull-events webhook when it is down or slow (issue 15, item 8): nock, on the global
// fetch the webhook sink uses, injects refused connections, resets, 5xx, a POST held open,
// one that never answers, and a refusal. The mirror keeps answering pulls (asserted by
// ordering: a pull completes while the webhook's request is still held open), and the
// events arrive, in order and once each, when the webhook recovers; the queue stays bounded.
import nock from 'nock';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { PullEvent } from '../../src/server/pull-events.js';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { waitFor } from '../fixtures/wait.js';

const HOOK = 'http://webhook.test';
let upstream: FakeUpstream;
let mirror: TestMirror | undefined;
let pulls = 0;

beforeAll(async () => {
  upstream = await startFakeUpstream();
  // Nothing leaves the machine: an unmatched webhook request fails like a network error.
  nock.disableNetConnect();
  nock.enableNetConnect(/^127\.0\.0\.1(:\d+)?$/);
});
afterEach(async () => {
  await mirror?.stop();
  mirror = undefined;
  nock.cleanAll();
});
afterAll(async () => {
  nock.enableNetConnect();
  nock.restore();
  await upstream?.stop();
});

async function startWithWebhook(webhook: Record<string, unknown> = {}): Promise<TestMirror> {
  mirror = await startMirror({
    upstreamUrl: upstream.url,
    document: { events: { webhook: { url: `${HOOK}/pulls`, flushInterval: '20ms', backoff: '20ms', maxBackoff: '100ms', timeout: '2s', ...webhook } } },
  });
  return mirror;
}

/** One image pull (its manifest GET by tag); returns the tag. */
async function pull(m: TestMirror): Promise<string> {
  const tag = `t${++pulls}`;
  addTinyImage(upstream, 'team/events', tag, tag);
  const res = await get(`${m.url}/v2/team/events/manifests/${tag}`);
  expect(res.status).toBe(200);
  return tag;
}

const eventsOf = (body: unknown) => (typeof body === 'string' ? JSON.parse(body) : body) as PullEvent[];

/** A webhook that answers 200 from now on (after the interceptors registered before it), recording what it got. */
/** A webhook that takes each POST and holds its answer until the test calls the matching `held` entry. */
function holdingWebhook(): { held: (() => void)[]; received: PullEvent[] } {
  const held: (() => void)[] = [];
  const received: PullEvent[] = [];
  nock(HOOK).post('/pulls').reply((_uri, body, callback) => {
    received.push(...eventsOf(body));
    held.push(() => callback(null, [200, '']));
  });
  recovered(received);
  return { held, received };
}

function recovered(received: PullEvent[]): nock.Scope {
  return nock(HOOK).post('/pulls').times(1000).reply(200, (_uri, body) => {
    received.push(...eventsOf(body));
    return '';
  });
}

async function metric(m: TestMirror, name: string, labels: Record<string, string>): Promise<number> {
  const text = (await get(`${m.url}/metrics`)).body.toString();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && wanted.every((w) => line.includes(w))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('webhook failure modes', () => {
  const failures: [string, (i: nock.Interceptor) => nock.Scope][] = [
    ['refused', (i) => i.replyWithError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))],
    ['reset', (i) => i.replyWithError(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }))],
    ['500', (i) => i.reply(500, 'internal error')],
    ['429', (i) => i.reply(429, 'slow down')],
  ];

  it.each(failures)('%s: pulls are answered; once the webhook recovers every event arrives once, in order', async (_mode, fail) => {
    const failing = fail(nock(HOOK).post('/pulls').times(3));
    const received: PullEvent[] = [];
    recovered(received);
    const m = await startWithWebhook();
    const tags: string[] = [];
    for (let i = 0; i < 5; i++) tags.push(await pull(m));
    await waitFor(() => received.length >= 5, 10_000, 'the events after the webhook recovered');
    expect(failing.isDone()).toBe(true);
    expect(received.map((e) => e.tag)).toEqual(tags);
    expect(await metric(m, 'mirror_events_failed_total', { sink: 'webhook' })).toBe(3);
    expect(await metric(m, 'mirror_events_sent_total', { sink: 'webhook' })).toBe(5);
    expect(await metric(m, 'mirror_events_dropped_total', { sink: 'webhook' })).toBe(0);
    expect(await metric(m, 'mirror_events_queued', { sink: 'webhook' })).toBe(0);
  });

  it('slow: a pull completes while the webhook request is still held open', async () => {
    const { held, received } = holdingWebhook();
    const m = await startWithWebhook({ batchSize: 1 });
    const first = await pull(m);
    await waitFor(() => held.length === 1, 10_000, 'the webhook to hold the first POST');
    // The POST is open and unanswered; pulls go on.
    const more: string[] = [];
    for (let i = 0; i < 4; i++) more.push(await pull(m));
    expect(held).toHaveLength(1);
    expect(await metric(m, 'mirror_events_sent_total', { sink: 'webhook' })).toBe(0);
    expect(await metric(m, 'mirror_events_queued', { sink: 'webhook' })).toBe(5);
    held[0]!();
    await waitFor(() => received.length >= 5, 10_000, 'the rest of the events');
    expect(received.map((e) => e.tag)).toEqual([first, ...more]);
    expect(await metric(m, 'mirror_events_sent_total', { sink: 'webhook' })).toBe(5);
  });

  it('a POST that never answers is abandoned after the timeout and retried', async () => {
    const received: PullEvent[] = [];
    let attempts = 0;
    nock(HOOK).post('/pulls').reply(() => {
      attempts++;
      // Never answered.
      return new Promise<never>(() => undefined);
    });
    recovered(received);
    const m = await startWithWebhook({ timeout: '200ms' });
    const tag = await pull(m);
    await waitFor(() => received.length >= 1, 10_000, 'the event after the time-out');
    expect(attempts).toBe(1);
    expect(received.map((e) => e.tag)).toEqual([tag]);
    expect(await metric(m, 'mirror_events_failed_total', { sink: 'webhook' })).toBe(1);
  });

  it('a full queue drops the oldest waiting events and counts them; the batch in flight is kept', async () => {
    const { held, received } = holdingWebhook();
    const m = await startWithWebhook({ batchSize: 1, queueSize: 5 });
    const tags = [await pull(m)];
    await waitFor(() => held.length === 1, 10_000, 'the first POST');
    for (let i = 0; i < 9; i++) tags.push(await pull(m));
    // 1 in flight + 4 waiting fit: of the 9 that followed, the 5 oldest were dropped.
    expect(await metric(m, 'mirror_events_dropped_total', { sink: 'webhook', reason: 'queue-full' })).toBe(5);
    expect(await metric(m, 'mirror_events_queued', { sink: 'webhook' })).toBe(5);
    held[0]!();
    await waitFor(() => received.length >= 5, 10_000, 'the kept events');
    expect(received.map((e) => e.tag)).toEqual([tags[0], ...tags.slice(6)]);
  });

  it('a webhook that refuses a batch (4xx) loses that batch only, counted', async () => {
    const received: PullEvent[] = [];
    const refusing = nock(HOOK).post('/pulls').reply(400, 'bad payload');
    recovered(received);
    const m = await startWithWebhook();
    await pull(m);
    await waitFor(() => refusing.isDone(), 10_000, 'the refused POST');
    await waitFor(async () => (await metric(m, 'mirror_events_dropped_total', { sink: 'webhook', reason: 'rejected' })) === 1, 10_000, 'the drop to be counted');
    const next = await pull(m);
    await waitFor(() => received.length >= 1, 10_000, 'the next event');
    expect(received.map((e) => e.tag)).toEqual([next]);
    expect(await metric(m, 'mirror_events_failed_total', { sink: 'webhook' })).toBe(0);
  });
});
