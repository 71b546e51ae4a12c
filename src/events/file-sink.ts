// Events appended to a file, one JSON object a line. Writes are asynchronous; when the disk
// falls behind by more than a bound, further events are dropped (and counted) rather than
// held in memory. A failed open or write is logged and retried on a later event, at most
// every few seconds. SIGHUP reopens the file (logrotate's `create` mode).

import { createWriteStream, type WriteStream } from 'node:fs';
import type { EventSink, SinkDeps } from './event-sink.js';

/** Bytes waiting for the disk past which events are dropped. */
const MAX_PENDING_BYTES = 8 * 1024 * 1024;
const REOPEN_AFTER_ERROR_MS = 5000;

export class FileSink implements EventSink {
  private stream: WriteStream | undefined;
  private brokenUntil = 0;
  /** Labelled once, so each event hashes no labels. */
  private readonly sent: { inc(): void };

  constructor(
    private readonly path: string,
    private readonly deps: SinkDeps,
  ) {
    this.sent = deps.metrics.eventsSent.labels('file');
    this.stream = this.open();
  }

  publish(event: object): void {
    const { metrics } = this.deps;
    const stream = this.stream ?? this.open();
    if (!stream) {
      metrics.eventsDropped.inc({ sink: 'file', reason: 'unwritable' });
      return;
    }
    if (stream.writableLength > MAX_PENDING_BYTES) {
      metrics.eventsDropped.inc({ sink: 'file', reason: 'queue-full' });
      return;
    }
    stream.write(`${JSON.stringify(event)}\n`, (err) => {
      if (!err) {
        this.sent.inc();
        return;
      }
      metrics.eventsFailed.inc({ sink: 'file' });
      metrics.eventsDropped.inc({ sink: 'file', reason: 'write-error' });
    });
  }

  reopen(): void {
    const old = this.stream;
    this.stream = undefined;
    this.brokenUntil = 0;
    old?.end();
    this.stream = this.open();
  }

  async close(): Promise<void> {
    const stream = this.stream;
    this.stream = undefined;
    this.brokenUntil = Number.POSITIVE_INFINITY;
    if (!stream || stream.destroyed) return;
    await new Promise<void>((resolve) => {
      stream.once('close', resolve);
      stream.end();
    });
  }

  private open(): WriteStream | undefined {
    if (Date.now() < this.brokenUntil) return undefined;
    const stream = createWriteStream(this.path, { flags: 'a', mode: 0o640 });
    stream.on('error', (err) => {
      this.deps.logger.error({ file: this.path, err: err.message }, 'cannot write pull events to the file; dropping them for a few seconds');
      if (this.stream === stream) this.stream = undefined;
      this.brokenUntil = Date.now() + REOPEN_AFTER_ERROR_MS;
    });
    return stream;
  }
}
