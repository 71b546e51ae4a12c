// Reserving disk space per download (src/cache/space-reservation.ts), on a disk whose free
// space the test sets.
import { describe, expect, it } from 'vitest';
import { DiskSpace } from '../../src/cache/space-reservation.js';

const MiB = 1024 * 1024;

function disk(freeMiB: number, totalMiB = 10_000) {
  const state = { free: freeMiB * MiB };
  const measure = async () => ({ bavail: state.free / 4096, bsize: 4096, blocks: (totalMiB * MiB) / 4096 });
  return { state, measure };
}

describe('disk space reservations', () => {
  it('counts what running downloads have yet to write against the free space, and gives it back on release', async () => {
    const { state, measure } = disk(1000);
    const space = new DiskSpace('/x', 100 * MiB, measure);
    let writtenA = 0;
    const a = await space.tryReserve(500 * MiB, () => writtenA);
    expect(a).toBeDefined();
    // 1000 free - 100 kept - 500 reserved = 400: 450 does not fit, 400 would.
    expect(await space.tryReserve(450 * MiB, () => 0)).toBeUndefined();
    // A writes 200 MiB: the disk has 200 less free, A needs 200 less: nothing changes.
    writtenA = 200 * MiB;
    state.free -= 200 * MiB;
    expect(space.outstandingBytes).toBe(300 * MiB);
    expect(await space.tryReserve(450 * MiB, () => 0)).toBeUndefined();
    a!.release();
    a!.release();
    expect(space.outstandingBytes).toBe(0);
    expect(await space.tryReserve(450 * MiB, () => 0)).toBeDefined();
  });

  it('concurrent reservations see each other', async () => {
    const { measure } = disk(1000);
    const space = new DiskSpace('/x', 0, measure);
    const results = await Promise.all([space.tryReserve(600 * MiB, () => 0), space.tryReserve(600 * MiB, () => 0)]);
    expect(results.filter((r) => r !== undefined)).toHaveLength(1);
  });

  it('keeps 1% of the disk (at most 64 MiB) by default, and does not refuse when the disk cannot be measured', async () => {
    const small = new DiskSpace('/x', undefined, disk(100, 1000).measure);
    expect(await small.tryReserve(91 * MiB, () => 0)).toBeUndefined();
    expect(await small.tryReserve(90 * MiB, () => 0)).toBeDefined();
    const big = new DiskSpace('/x', undefined, disk(100, 100_000).measure);
    expect(await big.tryReserve(37 * MiB, () => 0)).toBeUndefined();
    expect(await big.tryReserve(36 * MiB, () => 0)).toBeDefined();
    const unknown = new DiskSpace('/x', undefined, async () => {
      throw new Error('ENOSYS');
    });
    expect(await unknown.tryReserve(10 ** 15, () => 0)).toBeDefined();
  });
});
