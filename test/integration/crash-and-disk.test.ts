// Crash safety (kill -9 mid-download) and a full disk (issue 4), with the mirror as a
// real process and a size-limited tmpfs for its cache.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror } from '../fixtures/mirror.js';
import { runCli, startMirrorProcess } from '../fixtures/mirror-process.js';
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

describe('kill -9 during downloads', () => {
  it('loses nothing committed, serves nothing half-written, and sweeps temp files on restart', async () => {
    const storage = mkdtempSync(join(tmpdir(), 'mirror-crash-'));
    try {
      const committed = pseudoRandomBytes(2 * MiB, 'committed');
      const committedDigest = upstream.addBlob(committed);
      const partial = pseudoRandomBytes(32 * MiB, 'partial');
      const partialDigest = upstream.addBlob(partial);
      upstream.fault = (r) => (r.kind === 'blob' && r.path.endsWith(partialDigest) ? { bytesPerSecond: 8 * MiB } : undefined);

      const first = await startMirrorProcess(['--storage', storage, '--upstream', upstream.url, '--log-level', 'info']);
      expect((await get(`${first.url}/v2/team/app/blobs/${committedDigest}`)).status).toBe(200);
      // The client's last byte comes once the digest checks out; the commit (fsync, rename) follows.
      await waitFor(() => existsSync(blobFile(storage, committedDigest)), 10_000, 'the first blob to be committed');
      // Start the slow download, let some bytes land, then kill the process outright.
      const cut = get(`${first.url}/v2/team/app/blobs/${partialDigest}`).catch(() => undefined);
      // Some bytes landed in the temp file (a download well under way, far from done).
      const tmpBytes = () => readdirSync(join(storage, 'tmp')).reduce((n, f) => n + statSync(join(storage, 'tmp', f)).size, 0);
      await waitFor(() => tmpBytes() >= 2 * MiB, 10_000, 'the download to be under way');
      expect(readdirSync(join(storage, 'tmp'))).toHaveLength(1);
      expect(tmpBytes()).toBeLessThan(partial.length);
      await first.kill('SIGKILL');
      await cut;
      expect(existsSync(blobFile(storage, partialDigest))).toBe(false);
      expect(existsSync(blobFile(storage, committedDigest))).toBe(true);

      upstream.fault = undefined;
      upstream.reset();
      const second = await startMirrorProcess(['--storage', storage, '--upstream', upstream.url, '--log-level', 'info']);
      try {
        expect(readdirSync(join(storage, 'tmp'))).toHaveLength(0);
        expect(second.output()).toMatch(/removed unfinished downloads/);
        const hit = await get(`${second.url}/v2/team/app/blobs/${committedDigest}`);
        expect(sha256(hit.body)).toBe(committedDigest);
        expect(upstream.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(0);
        const refetched = await get(`${second.url}/v2/team/app/blobs/${partialDigest}`);
        expect(sha256(refetched.body)).toBe(partialDigest);
        expect(upstream.count({ kind: 'blob', method: 'GET', authorized: true })).toBe(1);
      } finally {
        await second.kill('SIGTERM');
      }
    } finally {
      upstream.fault = undefined;
      rmSync(storage, { recursive: true, force: true });
    }
  });
});

describe('a full disk', () => {
  const mountPoint = mkdtempSync(join(tmpdir(), 'mirror-full-'));
  // Mounting a size-limited tmpfs needs root (CI runs as root). Without it the test fails,
  // unless MIRROR_TEST_SKIP_DISK_FULL=1 says that skipping it is intended.
  const skipIntended = process.env.MIRROR_TEST_SKIP_DISK_FULL === '1';
  let mounted = false;
  let whyNot = '';
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mountPoint], { stdio: 'pipe' });
    mounted = true;
  } catch (err) {
    whyNot = `cannot mount a size-limited tmpfs here (${(err as Error).message.split('\n')[0]}): the disk-full test needs root`;
    if (skipIntended) console.warn(`\n*** SKIPPED: ${whyNot}; skipped because MIRROR_TEST_SKIP_DISK_FULL=1 ***\n`);
  }
  afterAll(() => {
    if (mounted) {
      try {
        execFileSync('umount', [mountPoint], { stdio: 'pipe' });
      } catch {
        // Still busy for a moment (a file handle closing): detach it lazily instead.
        execFileSync('umount', ['-l', mountPoint], { stdio: 'pipe' });
      }
    }
    rmSync(mountPoint, { recursive: true, force: true });
  });

  it.skipIf(!mounted && skipIntended)('a blob bigger than the free space passes through verified, nothing partial is stored, and hits keep working', async () => {
    if (!mounted) throw new Error(`${whyNot}. Run the suite as root, or set MIRROR_TEST_SKIP_DISK_FULL=1 to skip this test knowingly.`);
    const mirror = await startMirror({ upstreamUrl: upstream.url, storage: mountPoint });
    try {
      const small = pseudoRandomBytes(1 * MiB, 'small-before-full');
      const smallDigest = upstream.addBlob(small);
      expect(sha256((await get(`${mirror.url}/v2/team/app/blobs/${smallDigest}`)).body)).toBe(smallDigest);

      const big = pseudoRandomBytes(40 * MiB, 'too-big-for-the-disk');
      const bigDigest = upstream.addBlob(big);
      const passed = await get(`${mirror.url}/v2/team/app/blobs/${bigDigest}`);
      expect(passed.status).toBe(200);
      expect(passed.truncated).toBe(false);
      expect(sha256(passed.body)).toBe(bigDigest);
      expect(existsSync(blobFile(mountPoint, bigDigest))).toBe(false);
      expect(readdirSync(join(mountPoint, 'tmp'))).toHaveLength(0);

      upstream.reset();
      const hit = await get(`${mirror.url}/v2/team/app/blobs/${smallDigest}`);
      expect(sha256(hit.body)).toBe(smallDigest);
      expect(upstream.requests).toHaveLength(0);
    } finally {
      await mirror.stop({ keepStorage: true });
    }
  });
});

describe('the command line', () => {
  it('an invalid config stops start-up with every bad key and a non-zero exit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mirror-cfg-'));
    const file = join(dir, 'bad.yaml');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(file, 'listen: nowhere\nstorage:\n  path: /tmp/x\n  colour: blue\nupstreams:\n  docker.io:\n    url: not-a-url\n');
    const r = await runCli(['serve', '--config', file]);
    rmSync(dir, { recursive: true, force: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/listen: "nowhere" is not HOST:PORT/);
    expect(r.stderr).toMatch(/storage: unknown key "colour"/);
    expect(r.stderr).toMatch(/upstreams\.docker\.io\.url: /);
  });
});
