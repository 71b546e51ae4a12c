// Events POSTed to a webhook in batches (a JSON array per POST), with the global fetch.
// Publishing only appends to a bounded in-memory queue: requests never wait for the
// webhook. One POST at a time, in order; a batch is sent when it is full or after
// flushInterval. A POST that fails (refused, reset, timed out, 408, 429, 5xx) is retried
// with exponential back-off (jittered, up to maxBackoff), for as long as it takes: the
// events are delivered once the webhook recovers. Meanwhile the queue fills; when full, the
// oldest waiting events are dropped and counted (the batch being retried is kept, so it is
// delivered first). Another 4xx means the webhook refuses the batch: it is dropped and
// counted, and the next one goes.

import type { WebhookConfig } from '../config.js';
import type { EventSink, SinkDeps } from './event-sink.js';

const SINK = { sink: 'webhook' } as const;

/** A FIFO of events with O(1) push and shift (an array with a moving head). */
class EventQueue {
  private items: object[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(event: object): void {
    this.items.push(event);
  }

  shift(): object | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head++];
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  take(n: number): object[] {
    const out: object[] = [];
    while (out.length < n && this.length > 0) out.push(this.shift()!);
    return out;
  }
}

type Attempt = 'sent' | 'retry' | 'rejected';

export class WebhookSink implements EventSink {
  private readonly queue = new EventQueue();
  /** The batch being POSTed or waiting to be retried. */
  private batch: object[] = [];
  private sending: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private timerKind: 'flush' | 'backoff' | undefined;
  private consecutiveFailures = 0;
  private closed = false;
  private readonly stop = new AbortController();
  /** The gauge's labelled child, so publishing hashes no labels. */
  private readonly queued: { set(n: number): void };

  constructor(
    private readonly config: WebhookConfig,
    private readonly deps: SinkDeps,
  ) {
    this.queued = deps.metrics.eventsQueued.labels('webhook');
  }

  publish(event: object): void {
    const { metrics } = this.deps;
    if (this.closed) {
      metrics.eventsDropped.inc({ ...SINK, reason: 'shutdown' });
      return;
    }
    if (this.queue.length + this.batch.length >= this.config.queueSize) {
      metrics.eventsDropped.inc({ ...SINK, reason: 'queue-full' });
      // The oldest waiting event makes room; with none waiting (all in the batch), this one goes.
      if (this.queue.shift() === undefined) return;
    }
    this.queue.push(event);
    this.updateGauge();
    this.schedule();
  }

  reopen(): void {}

  async close(deadlineMs: number): Promise<void> {
    this.closed = true;
    this.clearTimer();
    const deadline = setTimeout(() => this.stop.abort(), deadlineMs);
    try {
      // Drain: one attempt per batch, no waiting between them; the first failure ends it.
      while (!this.stop.signal.aborted) {
        if (this.sending) await this.sending;
        if (this.queue.length + this.batch.length === 0) break;
        const failures = this.consecutiveFailures;
        await this.send();
        if (this.consecutiveFailures > failures) break;
      }
    } finally {
      clearTimeout(deadline);
    }
    const left = this.queue.length + this.batch.length;
    if (left > 0) {
      this.deps.metrics.eventsDropped.inc({ ...SINK, reason: 'shutdown' }, left);
      this.deps.logger.warn({ url: this.redactedUrl, events: left }, 'pull events not delivered to the webhook before shutdown');
    }
    this.queue.take(left);
    this.batch = [];
    this.updateGauge();
  }

  /** Start a POST now (a full batch) or after flushInterval; a back-off wait is left alone. */
  private schedule(): void {
    if (this.closed || this.sending || this.timerKind === 'backoff') return;
    const full = this.queue.length >= this.config.batchSize;
    if (this.timer && !full) return;
    this.clearTimer();
    this.setTimer(full ? 0 : this.config.flushIntervalMs, 'flush');
  }

  private setTimer(ms: number, kind: 'flush' | 'backoff'): void {
    this.timerKind = kind;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerKind = undefined;
      void this.send();
    }, ms);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerKind = undefined;
  }

  private send(): Promise<void> {
    if (this.sending) return this.sending;
    if (this.batch.length === 0) this.batch = this.queue.take(this.config.batchSize);
    if (this.batch.length === 0) return Promise.resolve();
    this.sending = this.post(this.batch).then((attempt) => {
      this.sending = undefined;
      this.settle(attempt);
    });
    return this.sending;
  }

  private async post(batch: object[]): Promise<Attempt> {
    let problem: string;
    try {
      const res = await fetch(this.config.url, {
        method: 'POST',
        headers: { ...this.config.headers, 'content-type': 'application/json' },
        body: JSON.stringify(batch),
        signal: AbortSignal.any([AbortSignal.timeout(this.config.timeoutMs), this.stop.signal]),
      });
      // The answer's body is not needed: release the connection.
      await res.body?.cancel().catch(() => undefined);
      if (res.ok) return 'sent';
      problem = `HTTP ${res.status}`;
      if (res.status !== 408 && res.status !== 429 && res.status < 500) {
        this.deps.logger.warn({ url: this.redactedUrl, status: res.status, events: batch.length }, 'the webhook refused a batch of pull events; dropping it');
        return 'rejected';
      }
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      problem = e.cause?.code ?? e.cause?.message ?? e.name ?? e.message;
    }
    // Logged on the first failure of a run and then every tenth, not on every retry.
    if (this.consecutiveFailures % 10 === 0) {
      this.deps.logger.warn({ url: this.redactedUrl, problem, failures: this.consecutiveFailures + 1, queued: this.queue.length + batch.length }, 'could not deliver pull events to the webhook; retrying');
    }
    return 'retry';
  }

  private settle(attempt: Attempt): void {
    const { metrics } = this.deps;
    if (attempt === 'retry') {
      metrics.eventsFailed.inc(SINK);
      this.consecutiveFailures++;
      if (!this.closed) {
        const ceiling = Math.min(this.config.maxBackoffMs, this.config.backoffMs * 2 ** Math.min(this.consecutiveFailures - 1, 30));
        // Jitter (half to all of the ceiling): several mirrors do not retry in step.
        this.setTimer(ceiling / 2 + Math.random() * (ceiling / 2), 'backoff');
      }
      return;
    }
    if (attempt === 'sent') metrics.eventsSent.inc(SINK, this.batch.length);
    else metrics.eventsDropped.inc({ ...SINK, reason: 'rejected' }, this.batch.length);
    if (this.consecutiveFailures > 0 && attempt === 'sent') this.deps.logger.info({ url: this.redactedUrl }, 'the webhook takes pull events again');
    this.consecutiveFailures = 0;
    this.batch = [];
    this.updateGauge();
    if (this.queue.length > 0) this.schedule();
  }

  private updateGauge(): void {
    this.queued.set(this.queue.length + this.batch.length);
  }

  /** The URL for logs, without credentials or query (a token may hide there). */
  private get redactedUrl(): string {
    const url = new URL(this.config.url);
    return `${url.protocol}//${url.host}${url.pathname}`;
  }
}
