// The single-flight download's state machine and its bounds (issue 13): slots of the global
// limit, abandoned downloads, readers while it commits. A scripted source feeds the bytes;
// the store is the real filesystem store in a temp directory.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { DownloadLimiter } from '../../src/cache/download-limiter.js';
import type { DownloadSource } from '../../src/cache/download-source.js';
import { Downloads, type DownloadOptions } from '../../src/cache/downloads.js';
import { FileBlobStore } from '../../src/cache/file-store.js';
import { ScratchSpace } from '../../src/cache/scratch.js';
import { digestOf } from '../../src/oci/digest.js';
import { RegistryError } from '../../src/oci/errors.js';
import { parseDigest } from '../../src/oci/reference.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
const roots: string[] = [];
afterAll(() => roots.forEach((r) => rmSync(r, { recursive: true, force: true })));

async function storage() {
  const root = mkdtempSync(join(tmpdir(), 'downloads-unit-'));
  roots.push(root);
  const scratch = new ScratchSpace(root);
  await scratch.init();
  const store = new FileBlobStore(root, scratch);
  await store.init();
  return { root, store, scratch };
}

function blob(size: number, seed: number) {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) bytes.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return { bytes, digest: parseDigest(digestOf(bytes, 'sha256')) };
}

/** A source whose body the test feeds by hand; it remembers what was opened and aborted. */
function scriptedSource(totalSize: number) {
  const body = new PassThrough();
  const state = { opened: 0, destroyed: false };
  body.on('close', () => (state.destroyed = true));
  const source: DownloadSource = {
    open: async () => {
      state.opened++;
      return { body, totalSize };
    },
  };
  return { source, body, state };
}

function options(overrides: Partial<DownloadOptions> = {}): DownloadOptions {
  return {
    resumeAttempts: 0,
    segmentThreshold: 1024 * MiB,
    writeTimeoutMs: 60_000,
    abandonAfterMs: 0,
    logger: pino({ level: 'silent' }),
    onCommitted: () => undefined,
    ...overrides,
  };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

describe('DownloadLimiter', () => {
  it('grants slots up to the limit, then in arrival order as they are released', async () => {
    const limiter = new DownloadLimiter({ maxConcurrent: 2, maxQueued: 10, queueTimeoutMs: 60_000 });
    const a = await limiter.acquire();
    const b = await limiter.acquire();
    const order: string[] = [];
    const c = limiter.acquire().then((release) => (order.push('c'), release));
    const d = limiter.acquire().then((release) => (order.push('d'), release));
    expect([limiter.active, limiter.queued]).toEqual([2, 2]);
    a();
    a(); // a second release gives nothing back
    const releaseC = await c;
    expect(order).toEqual(['c']);
    expect([limiter.active, limiter.queued]).toEqual([2, 1]);
    b();
    (await d)();
    releaseC();
    expect([limiter.active, limiter.queued]).toEqual([0, 0]);
  });

  it('refuses with 429 TOOMANYREQUESTS and Retry-After when the queue is full or the wait too long, counting each refusal', async () => {
    let refused = 0;
    const limiter = new DownloadLimiter({ maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 50 }, () => refused++);
    const held = await limiter.acquire();
    const waiting = limiter.acquire();
    const full = await limiter.acquire().catch((e: unknown) => e);
    expect(full).toBeInstanceOf(RegistryError);
    expect((full as RegistryError).status).toBe(429);
    expect((full as RegistryError).code).toBe('TOOMANYREQUESTS');
    expect(Number((full as RegistryError).headers['retry-after'])).toBeGreaterThan(0);
    const late = await waiting.catch((e: unknown) => e);
    expect((late as RegistryError).code).toBe('TOOMANYREQUESTS');
    expect(refused).toBe(2);
    expect(limiter.queued).toBe(0);
    held();
    expect(limiter.active).toBe(0);
  });

  it('lets a waiting download go when it is stopped, and 0 means no limit', async () => {
    const limiter = new DownloadLimiter({ maxConcurrent: 1, maxQueued: 5, queueTimeoutMs: 60_000 });
    const held = await limiter.acquire();
    const stop = new AbortController();
    const waiting = limiter.acquire(stop.signal);
    stop.abort(new Error('shutting down'));
    await expect(waiting).rejects.toThrow('shutting down');
    expect(limiter.queued).toBe(0);
    held();
    const unbounded = new DownloadLimiter({ maxConcurrent: 0, maxQueued: 0, queueTimeoutMs: 1 });
    const slots = await Promise.all(Array.from({ length: 100 }, () => unbounded.acquire()));
    expect(unbounded.active).toBe(100);
    slots.forEach((release) => release());
  });
});

describe('BlobDownload', () => {
  it('runs → committing → done: verified bytes in the store, onCommitted told, the temp file gone', async () => {
    const { root, store, scratch } = await storage();
    const { bytes, digest } = blob(3 * MiB, 1);
    const committed: number[] = [];
    const downloads = new Downloads({ store, scratch }, options({ onCommitted: (_d, size) => committed.push(size) }));
    const download = downloads.start(digest, { open: async () => ({ body: Readable.from([bytes.subarray(0, MiB), bytes.subarray(MiB)]), totalSize: bytes.length }) });
    expect(download.state).toBe('running');
    expect(downloads.get(digest)).toBe(download);
    await download.finished;
    expect(download.state).toBe('done');
    expect(committed).toEqual([bytes.length]);
    expect((await store.read(digest))!.equals(bytes)).toBe(true);
    await waitFor(() => downloads.get(digest) === undefined, 5_000);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
  });

  it('content that does not match its digest fails the download: nothing in the store, the temp file removed', async () => {
    const { root, store, scratch } = await storage();
    const { bytes, digest } = blob(MiB, 2);
    const wrong = Buffer.from(bytes);
    wrong[10] = wrong[10]! ^ 0xff;
    const downloads = new Downloads({ store, scratch }, options());
    const download = downloads.start(digest, { open: async () => ({ body: Readable.from([wrong]), totalSize: wrong.length }) });
    await expect(download.finished).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    expect(download.state).toBe('failed');
    expect(await store.stat(digest)).toBeUndefined();
    await waitFor(() => readdirSync(join(root, 'tmp')).length === 0, 5_000);
  });

  it('a new download waits for a slot; its slot is free again once its source is read, before the commit ends', async () => {
    const { store, scratch } = await storage();
    const limiter = new DownloadLimiter({ maxConcurrent: 1, maxQueued: 5, queueTimeoutMs: 60_000 });
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const commit = store.commit.bind(store);
    store.commit = async (path, d) => {
      await held;
      await commit(path, d);
    };
    const downloads = new Downloads({ store, scratch }, options({ limiter }));
    const first = scriptedSource(MiB);
    const one = blob(MiB, 3);
    const two = blob(MiB, 4);
    const a = downloads.start(one.digest, first.source);
    const b = downloads.start(two.digest, { open: async () => ({ body: Readable.from([two.bytes]), totalSize: two.bytes.length }) });
    await a.ready;
    expect([limiter.active, limiter.queued]).toEqual([1, 1]);
    // A peer's request does not wait.
    const peer = blob(MiB, 5);
    const c = downloads.start(peer.digest, { open: async () => ({ body: Readable.from([peer.bytes]), totalSize: peer.bytes.length }) }, { limited: false });
    await c.ready;
    first.body.end(one.bytes);
    await waitFor(() => a.state === 'committing', 5_000);
    await b.ready; // got the slot while the first still commits
    release();
    await Promise.all([a.finished, b.finished, c.finished]);
    expect(limiter.active).toBe(0);
  });

  it('nobody reading it for abandonAfter: cancelled (its source destroyed, the temp file removed)', async () => {
    const { root, store, scratch } = await storage();
    // Big enough not to be worth finishing when nobody reads it (more than 8 MiB to go).
    const { bytes, digest } = blob(32 * MiB, 6);
    const abandoned: string[] = [];
    const downloads = new Downloads({ store, scratch }, options({ abandonAfterMs: 50, onAbandoned: () => abandoned.push('x') }));
    const scripted = scriptedSource(bytes.length);
    const download = downloads.start(digest, scripted.source);
    await download.ready;
    const reader = download.createReader(0, undefined)!;
    scripted.body.write(bytes.subarray(0, 64 * 1024));
    reader.destroy(); // the only client leaves
    await expect(download.finished).rejects.toThrow(/abandoned/);
    expect(abandoned).toHaveLength(1);
    expect(scripted.state.destroyed).toBe(true);
    await waitFor(() => readdirSync(join(root, 'tmp')).length === 0, 5_000);
  });

  it('a background download (prefetch) with its own slot: no reader yet is not abandonment; after a reader came and left, it is', async () => {
    const { store, scratch } = await storage();
    const { bytes, digest } = blob(32 * MiB, 8);
    const limiter = new DownloadLimiter({ maxConcurrent: 1, maxQueued: 0, queueTimeoutMs: 1_000 });
    const abandoned: string[] = [];
    const downloads = new Downloads({ store, scratch }, options({ abandonAfterMs: 20, limiter, onAbandoned: () => abandoned.push('x') }));
    const slot = limiter.tryAcquire()!;
    expect(limiter.tryAcquire()).toBeUndefined();
    const scripted = scriptedSource(bytes.length);
    const download = downloads.start(digest, scripted.source, { slot, background: true });
    await download.ready;
    scripted.body.write(bytes.subarray(0, 64 * 1024));
    // Many abandonAfter periods with nobody reading: the timer is the behaviour under test.
    const since = Date.now();
    await waitFor(() => Date.now() - since > 200, 5_000, 'ten abandonAfter periods');
    expect([download.state, abandoned.length]).toEqual(['running', 0]);
    // It holds the slot it was given (it took no other): released when it ends.
    expect(limiter.active).toBe(1);
    const reader = download.createReader(0, undefined)!;
    reader.destroy(); // a client came and left: the usual rule from now on
    await expect(download.finished).rejects.toThrow(/abandoned/);
    expect(abandoned).toHaveLength(1);
    await waitFor(() => limiter.active === 0, 5_000, 'the slot to be released');
  });

  it('nobody reading it, but more than half done: it finishes', async () => {
    const { store, scratch } = await storage();
    const { bytes, digest } = blob(32 * MiB, 7);
    const said: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void said.push(JSON.parse(line).msg as string) });
    const downloads = new Downloads({ store, scratch }, options({ abandonAfterMs: 20, logger }));
    const scripted = scriptedSource(bytes.length);
    const download = downloads.start(digest, scripted.source);
    await download.ready;
    const reader = download.createReader(0, undefined)!;
    scripted.body.write(bytes.subarray(0, 20 * MiB));
    await waitFor(() => download.written === 20 * MiB, 5_000);
    reader.destroy(); // the only client leaves
    // The grace period ends with nobody reading: it is judged worth finishing.
    await waitFor(() => said.some((m) => /nearly done/.test(m)), 5_000, 'the grace period to end');
    expect(download.state).toBe('running');
    scripted.body.end(bytes.subarray(20 * MiB));
    await download.finished;
    expect(download.state).toBe('done');
  });

  it('stopped while its source is still opening: that request is aborted, and what an open already returned is left alone', async () => {
    const { store, scratch } = await storage();
    const { digest } = blob(MiB, 10);
    let aborted: unknown;
    const downloads = new Downloads({ store, scratch }, options());
    const download = downloads.start(digest, {
      open: (_offset, signal) =>
        new Promise((_resolve, reject) =>
          signal!.addEventListener('abort', () => {
            aborted = signal!.reason;
            reject(signal!.reason as Error);
          }),
        ),
    });
    await waitFor(() => download.tempPath !== undefined, 5_000);
    downloads.abortAll('shutting down');
    await expect(download.finished).rejects.toThrow('shutting down');
    expect((aborted as Error).message).toBe('shutting down');
    // A source that answered and was then refused (no room: its response is handed to a client).
    const handedOn = new PassThrough();
    let openSignal: AbortSignal | undefined;
    const refused = downloads.start(blob(MiB, 11).digest, {
      open: async (_offset, signal) => {
        openSignal = signal;
        throw Object.assign(new RegistryError('UNAVAILABLE', 'no room, response handed on'), { response: handedOn });
      },
    });
    await expect(refused.ready).rejects.toThrow('no room');
    expect(openSignal!.aborted).toBe(false);
    expect(handedOn.destroyed).toBe(false);
  });

  it('a reader joining while it commits reads the verified temp file', async () => {
    const { store, scratch } = await storage();
    const { bytes, digest } = blob(2 * MiB, 8);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const commit = store.commit.bind(store);
    store.commit = async (path, d) => {
      await held;
      await commit(path, d);
    };
    const downloads = new Downloads({ store, scratch }, options());
    const download = downloads.start(digest, { open: async () => ({ body: Readable.from([bytes]), totalSize: bytes.length }) });
    await waitFor(() => download.state === 'committing', 5_000);
    const reader = download.createReader(MiB, undefined)!;
    expect((await readAll(reader)).equals(bytes.subarray(MiB))).toBe(true);
    release();
    await download.finished;
  });

  it('once the temp file has left (moved into the store, the commit not yet over) there is no reader: the store has the blob', async () => {
    const { store, scratch } = await storage();
    const { bytes, digest } = blob(MiB, 9);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let moved = false;
    const commit = store.commit.bind(store);
    store.commit = async (path, d) => {
      await commit(path, d);
      moved = true;
      await held;
    };
    const downloads = new Downloads({ store, scratch }, options());
    const download = downloads.start(digest, { open: async () => ({ body: Readable.from([bytes]), totalSize: bytes.length }) });
    await waitFor(() => moved, 5_000);
    expect(download.state).toBe('committing');
    expect(download.createReader(0, undefined)).toBeUndefined();
    release();
    await download.finished;
    expect(() => download.createReader(0, undefined)).toThrow(/not running/);
  });
});
