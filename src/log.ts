import pino, { type Logger, type DestinationStream } from 'pino';

/**
 * The process logger: pino JSON on stdout, buffered and written asynchronously so that the
 * hot path never waits for the terminal nor pays a write(2) per access line (that alone
 * cost ~40% of the manifest hit rate). The buffer is flushed at least every second.
 * Secrets are redacted wherever they might appear.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const stream = destination ?? pino.destination({ dest: 1, sync: false, minLength: 8192 });
  if (!destination) {
    setInterval(() => {
      try {
        (stream as { flush?: () => void }).flush?.();
      } catch {
        // not ready yet
      }
    }, 1000).unref();
  }
  return pino(
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
}

export type { Logger };
