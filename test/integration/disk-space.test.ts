// Disk space (issue 13, item 5): each download reserves its size before it starts, so that
// concurrent cold downloads cannot all pass the free-space check and then die with ENOSPC;
// the one that finds no room passes through, verified and unstored. ENOSPC in the middle of
// a download (the disk filled by someone else) fails that download cleanly, and the next
// request passes through. Each case has its own size-limited tmpfs (needs root, as CI has).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { parseDigest } from '../../src/oci/reference.js';
import { startMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
});
afterAll(async () => {
  await upstream?.stop();
});

/** A tmpfs of `size` for one test; undefined (and a loud note) where mounting is not allowed. */
function smallDisk(size: string): { path: string; unmount(): void } | undefined {
  const path = mkdtempSync(join(tmpdir(), 'mirror-space-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', path], { stdio: 'pipe' });
  } catch (err) {
    rmSync(path, { recursive: true, force: true });
    process.stderr.write(`\n*** cannot mount a size-limited tmpfs (${(err as Error).message.split('\n')[0]}): the disk-space tests are SKIPPED (run as root) ***\n\n`);
    return undefined;
  }
  return {
    path,
    unmount() {
      try {
        execFileSync('umount', [path], { stdio: 'pipe' });
      } catch {
        execFileSync('umount', ['-l', path], { stdio: 'pipe' });
      }
      rmSync(path, { recursive: true, force: true });
    },
  };
}

const canMount = (() => {
  const probe = smallDisk('1m');
  probe?.unmount();
  return probe !== undefined;
})();

const freeBytes = (path: string) => {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
};

describe.skipIf(!canMount)('space reserved per download', () => {
  it('two concurrent cold downloads that do not both fit: one is stored, the other passes through, both clients get the right bytes, no ENOSPC', async () => {
    const disk = smallDisk('64m')!;
    const mirror = await startMirror({ upstreamUrl: upstream.url, storage: disk.path });
    try {
      // Each fits alone; the two together do not.
      const size = Math.floor((freeBytes(disk.path) * 0.6) / MiB) * MiB;
      const a = pseudoRandomBytes(size, 'reserve-a');
      const b = pseudoRandomBytes(size, 'reserve-b');
      const digests = [upstream.addBlob(a), upstream.addBlob(b)];
      // Slow enough that both are under way at once.
      upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 16 * MiB } : undefined);
      const [ra, rb] = await Promise.all(digests.map((d) => get(`${mirror.url}/v2/team/app/blobs/${d}`)));
      for (const [i, r] of [ra!, rb!].entries()) {
        expect(r.status).toBe(200);
        expect(r.truncated).toBe(false);
        expect(sha256(r.body)).toBe(digests[i]);
      }
      await waitFor(() => mirror.mirror.downloads.size === 0, 10_000, 'the downloads to end');
      expect(digests.filter((d) => existsSync(blobFile(disk.path, d)))).toHaveLength(1);
      expect(mirror.logs.filter((l) => l.msg.startsWith('cache disk is full: passing the blob through'))).toHaveLength(1);
      expect(mirror.logs.filter((l) => /ENOSPC|no space left/i.test(JSON.stringify(l)))).toEqual([]);
      expect(readdirSync(join(disk.path, 'tmp'))).toHaveLength(0);
    } finally {
      upstream.fault = undefined;
      await mirror.stop();
      disk.unmount();
    }
  });

  it('storage.minFree is kept free: a blob that would eat into it passes through', async () => {
    const disk = smallDisk('64m')!;
    const mirror = await startMirror({ upstreamUrl: upstream.url, storage: disk.path, document: { storage: { minFree: '40MiB' } } });
    try {
      const small = pseudoRandomBytes(4 * MiB, 'under-the-reserve');
      const smallDigest = upstream.addBlob(small);
      const big = pseudoRandomBytes(30 * MiB, 'into-the-reserve');
      const bigDigest = upstream.addBlob(big);
      expect(sha256((await get(`${mirror.url}/v2/team/app/blobs/${smallDigest}`)).body)).toBe(smallDigest);
      const passed = await get(`${mirror.url}/v2/team/app/blobs/${bigDigest}`);
      expect(passed.status).toBe(200);
      expect(sha256(passed.body)).toBe(bigDigest);
      await waitFor(() => mirror.mirror.downloads.size === 0, 10_000, 'the downloads to end');
      expect(existsSync(blobFile(disk.path, smallDigest))).toBe(true);
      expect(existsSync(blobFile(disk.path, bigDigest))).toBe(false);
    } finally {
      await mirror.stop();
      disk.unmount();
    }
  });
});

describe.skipIf(!canMount)('the disk filling up during a download', () => {
  it('fails that download cleanly (nothing partial kept), and the next request passes through verified', async () => {
    const disk = smallDisk('64m')!;
    const mirror = await startMirror({ upstreamUrl: upstream.url, storage: disk.path });
    try {
      const bytes = pseudoRandomBytes(40 * MiB, 'filled-under-it');
      const digest = upstream.addBlob(bytes);
      upstream.fault = (r) => (r.kind === 'blob' ? { bytesPerSecond: 16 * MiB } : undefined);
      const first = get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      await waitFor(() => (mirror.mirror.downloads.get(parseDigest(digest))?.written ?? 0) > 4 * MiB, 10_000, 'the download to be under way');
      // Someone else fills the disk.
      writeFileSync(join(disk.path, 'filler'), Buffer.alloc(Math.floor(freeBytes(disk.path) - 8 * MiB)));
      const cut = await first;
      expect(cut.truncated).toBe(true);
      await waitFor(() => mirror.mirror.downloads.size === 0, 10_000, 'the download to end');
      expect(existsSync(blobFile(disk.path, digest))).toBe(false);
      expect(readdirSync(join(disk.path, 'tmp'))).toHaveLength(0);
      expect(mirror.logs.some((l) => l.msg.startsWith('blob download failed') && /ENOSPC|no space/i.test(String(l.err)))).toBe(true);

      upstream.fault = undefined;
      const passed = await get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      expect(passed.status).toBe(200);
      expect(passed.truncated).toBe(false);
      expect(sha256(passed.body)).toBe(digest);
      expect(existsSync(blobFile(disk.path, digest))).toBe(false);
    } finally {
      upstream.fault = undefined;
      await mirror.stop();
      disk.unmount();
    }
  });
});
