// What a sink of pull events is: it takes JSON-serialisable records and delivers them on
// its own time (sinks.ts opens the configured ones).

import type { Logger } from 'pino';
import type { MirrorMetrics } from '../metrics.js';

export interface EventSink {
  /** Hand over one event (a JSON-serialisable object); returns at once. */
  publish(event: object): void;
  /** Reopen files (SIGHUP, after log rotation). */
  reopen(): void;
  /** Deliver what is buffered within the deadline, then stop; what is left is counted as dropped. */
  close(deadlineMs: number): Promise<void>;
}

export interface SinkDeps {
  metrics: MirrorMetrics;
  logger: Logger;
}
