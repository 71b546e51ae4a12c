// Disk space for downloads, reserved before they start. Measuring free space is not enough:
// concurrent cold downloads would all pass the check and then die with ENOSPC. Each download
// reserves its expected size; what the disk has free, less the reserve kept for everything
// else (storage.minFree), less what running downloads have yet to write, is what a new
// download may take. A reservation ends with its download (commit, failure, abort).

import { statfs } from 'node:fs/promises';

/** Without storage.minFree: keep 1% of the disk free, at most 64 MiB. */
const DEFAULT_MARGIN_BYTES = 64 * 1024 * 1024;
const DEFAULT_MARGIN_FRACTION = 0.01;

export interface Reservation {
  readonly bytes: number;
  /** Idempotent. */
  release(): void;
}

interface Held {
  bytes: number;
  /** Bytes the download has written so far: those are already gone from the measured free space. */
  written(): number;
}

export class DiskSpace {
  private readonly held = new Set<Held>();

  constructor(
    /** A directory on the disk downloads write to (the scratch space). */
    private readonly dir: string,
    /** Bytes to keep free (storage.minFree); undefined = 1% of the disk, at most 64 MiB. */
    private readonly minFree: number | undefined,
    private readonly measure: (dir: string) => Promise<{ bavail: number; bsize: number; blocks: number }> = statfs,
  ) {}

  /** What running downloads have reserved and not written yet. */
  get outstandingBytes(): number {
    let sum = 0;
    for (const h of this.held) sum += Math.max(0, h.bytes - h.written());
    return sum;
  }

  /**
   * Reserve `bytes` for a download whose progress `written()` reports; undefined when the disk
   * cannot take it. A disk that cannot be measured is not refused (its writes will tell).
   */
  async tryReserve(bytes: number, written: () => number): Promise<Reservation | undefined> {
    let available = Infinity;
    try {
      const fs = await this.measure(this.dir);
      const margin = this.minFree ?? Math.min(DEFAULT_MARGIN_BYTES, fs.blocks * fs.bsize * DEFAULT_MARGIN_FRACTION);
      available = fs.bavail * fs.bsize - margin;
    } catch {
      // cannot tell: try, and let a write error decide
    }
    // Measured, then checked and taken with no await in between: concurrent callers see each other.
    if (available - this.outstandingBytes < bytes) return undefined;
    const held: Held = { bytes, written };
    this.held.add(held);
    return {
      bytes,
      release: () => {
        this.held.delete(held);
      },
    };
  }
}
