// Where pull events go: a JSON-lines file and/or a webhook, as configured. Publishing never
// waits and never throws: each sink buffers within a bound and counts what it drops, so a
// slow disk or a dead webhook costs the requests nothing.

import type { Config } from '../config.js';
import type { EventSink, SinkDeps } from './event-sink.js';
import { FileSink } from './file-sink.js';
import { WebhookSink } from './webhook-sink.js';

export class EventSinks implements EventSink {
  constructor(private readonly sinks: EventSink[]) {}

  publish(event: object): void {
    for (const sink of this.sinks) sink.publish(event);
  }

  reopen(): void {
    for (const sink of this.sinks) sink.reopen();
  }

  async close(deadlineMs: number): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.close(deadlineMs)));
  }
}

/** The configured sinks, or undefined when events are off. */
export function openEventSinks(config: Config['events'], deps: SinkDeps): EventSinks | undefined {
  const sinks: EventSink[] = [];
  if (config.file) sinks.push(new FileSink(config.file, deps));
  if (config.webhook) sinks.push(new WebhookSink(config.webhook, deps));
  return sinks.length > 0 ? new EventSinks(sinks) : undefined;
}
