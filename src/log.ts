import pino, { type Logger, type DestinationStream } from 'pino';

/**
 * The process logger: pino JSON on stdout, written asynchronously so that the hot path
 * never waits for the terminal. Secrets are redacted wherever they might appear.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: undefined,
      redact: {
        paths: ['authorization', 'password', 'token', '*.authorization', '*.password', '*.token', 'headers.authorization', 'req.headers.authorization'],
        censor: '[redacted]',
      },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

export type { Logger };
