import pino, { type Logger, type DestinationStream } from 'pino';

/** Log lines held in memory while stdout does not take them; beyond this they are dropped (and counted). */
export const LOG_BUFFER_BYTES = 16 * 1024 * 1024;
/** How often a drop is reported (once stdout takes lines again). */
const DROP_REPORT_MS = 10_000;

/**
 * The process logger: pino JSON on stdout, buffered and written asynchronously so that the
 * hot path never waits for the terminal nor pays a write(2) per access line (that alone
 * cost ~40% of the manifest hit rate). The buffer is flushed at least every second, and
 * synchronously at exit. It is bounded: a log reader that stops reading (a paused terminal,
 * a stuck log shipper) costs at most LOG_BUFFER_BYTES of memory, never unbounded growth; the
 * lines beyond are dropped and a warning says how many.
 * Secrets are redacted wherever they might appear.
 */
export function createLogger(level: string, destination?: DestinationStream, options: { fd?: number; bufferBytes?: number } = {}): Logger {
  const stream = destination ?? pino.destination({ dest: options.fd ?? 1, sync: false, minLength: 8192, maxLength: options.bufferBytes ?? LOG_BUFFER_BYTES });
  let dropped = 0;
  if (!destination) {
    (stream as unknown as NodeJS.EventEmitter).on('drop', () => dropped++);
    setInterval(() => {
      try {
        (stream as { flush?: () => void }).flush?.();
      } catch {
        // not ready yet
      }
    }, 1000).unref();
  }
  const logger = pino(
    {
      level,
      base: undefined,
      redact: {
        paths: ['authorization', 'password', 'token', 'headers.authorization', 'upstream.password'],
        censor: '[redacted]',
      },
    },
    stream,
  );
  if (!destination) {
    setInterval(() => {
      if (dropped === 0) return;
      const lines = dropped;
      dropped = 0;
      logger.warn({ droppedLines: lines }, 'stdout did not take the log as fast as it was written: log lines were dropped');
      // Still no room (the warning itself was dropped): keep the count for the next report.
      if (dropped > 0) dropped += lines - 1;
    }, DROP_REPORT_MS).unref();
  }
  return logger;
}

export type { Logger };
