/** A token bucket: at most `burst` at once, refilled at `perSecond`. Bounds revalidation rate. */
import type { Clock } from '../clock.js';

export class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly clock: Clock,
  ) {
    this.tokens = burst;
    this.updatedAt = clock.now();
  }

  tryTake(): boolean {
    if (this.perSecond <= 0) return true; // 0 = unbounded
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updatedAt) / 1000) * this.perSecond);
    this.updatedAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Paces byte consumption to `bytesPerSecond` (shared by every caller): a slow reader slows TCP. */
export class ByteRateLimiter {
  private nextFree = 0;

  constructor(private readonly bytesPerSecond: number) {}

  /** Resolves when `bytes` may be consumed. */
  async take(bytes: number): Promise<void> {
    // Each batch is released when its share of the rate has elapsed, so any amount of
    // bytes takes at least bytes ÷ rate, however large the batches are.
    const now = performance.now();
    this.nextFree = Math.max(now, this.nextFree) + (bytes / this.bytesPerSecond) * 1000;
    const wait = this.nextFree - now;
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  }
}
