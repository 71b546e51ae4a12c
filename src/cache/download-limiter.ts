// The global bound on blob downloads running at once (issue 13): each new download takes a
// slot before it opens its source; past the limit it waits in a bounded queue for a bounded
// time, then is refused with 429 TOOMANYREQUESTS and Retry-After. Clients that join a
// running download never ask for a slot (downloads.ts), so one popular blob is never refused.

import { RegistryError } from '../oci/errors.js';

export interface DownloadLimits {
  /** Slots (0 = unbounded). */
  maxConcurrent: number;
  /** Downloads that may wait for a slot; past it they are refused at once. */
  maxQueued: number;
  /** The longest wait for a slot. */
  queueTimeoutMs: number;
}

/** Seconds a refused client is told to wait: about as long as a queued download may wait. */
const MIN_RETRY_AFTER_SECONDS = 5;

interface Waiter {
  grant(release: () => void): void;
  refuse(error: Error): void;
}

export class DownloadLimiter {
  private running = 0;
  /** FIFO: the oldest waiting download gets the next free slot. */
  private readonly queue = new Set<Waiter>();
  /** Told when a slot is left free (nobody queued took it): background work may use it. */
  private readonly slotFreed = new Set<() => void>();

  constructor(
    private readonly limits: DownloadLimits,
    /** Told of every refusal (a metric). */
    private readonly onRefused: () => void = () => undefined,
  ) {}

  /** Downloads holding a slot. */
  get active(): number {
    return this.running;
  }

  /** Downloads waiting for one. */
  get queued(): number {
    return this.queue.size;
  }

  /**
   * A slot: resolves with its release (call it once, when the download no longer reads its
   * source), or rejects with 429 when the queue is full or the wait too long, or with the
   * signal's reason when the download is stopped while it waits.
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    const { maxConcurrent, maxQueued, queueTimeoutMs } = this.limits;
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    if (maxConcurrent === 0 || (this.running < maxConcurrent && this.queue.size === 0)) return Promise.resolve(this.take());
    if (this.queue.size >= maxQueued) return Promise.reject(this.refusal(`${maxConcurrent} downloads are running and ${this.queue.size} waiting`));
    return new Promise((resolve, reject) => {
      const settle = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.queue.delete(waiter);
      };
      const waiter: Waiter = {
        grant: (release) => {
          settle();
          resolve(release);
        },
        refuse: (error) => {
          settle();
          reject(error);
        },
      };
      const timer = setTimeout(() => waiter.refuse(this.refusal(`no download slot free within ${queueTimeoutMs} ms`)), queueTimeoutMs);
      timer.unref();
      const onAbort = () => waiter.refuse(signal!.reason as Error);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.add(waiter);
    });
  }

  /**
   * A slot only if one is free now and no download waits for one (undefined otherwise):
   * for background work (prefetch), which must never queue before clients nor be refused.
   */
  tryAcquire(): (() => void) | undefined {
    const { maxConcurrent } = this.limits;
    if (maxConcurrent === 0 || (this.running < maxConcurrent && this.queue.size === 0)) return this.take();
    return undefined;
  }

  /** `listener` is called whenever a released slot is left free. Returns the unsubscribe. */
  onSlotFreed(listener: () => void): () => void {
    this.slotFreed.add(listener);
    return () => this.slotFreed.delete(listener);
  }

  private take(): () => void {
    this.running++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running--;
      const next = this.queue.values().next();
      if (!next.done) next.value.grant(this.take());
      else for (const listener of this.slotFreed) listener();
    };
  }

  private refusal(why: string): RegistryError {
    this.onRefused();
    const seconds = Math.max(MIN_RETRY_AFTER_SECONDS, Math.ceil(this.limits.queueTimeoutMs / 1000));
    return new RegistryError('TOOMANYREQUESTS', `the mirror is at its limit of concurrent downloads (${why}); retry later`, {
      detail: { maxConcurrent: this.limits.maxConcurrent },
      headers: { 'retry-after': String(seconds) },
    });
  }
}
