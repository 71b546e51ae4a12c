// The single-flight download (src/cache/downloads.ts) on its own: a scripted DownloadSource
// whose bodies the test writes, cuts and ends by hand, a real filesystem store and scratch
// space in a temp dir. One download per digest; readers that follow the file as it grows
// (the last byte only once verified); failures that reach every reader; resume by offset;
// verify failures that cut readers and leave nothing behind; the commit.
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { DownloadSource, RangeAnswer } from '../../src/cache/download-source.js';
import { Downloads, type BlobDownload } from '../../src/cache/downloads.js';
import { FileBlobStore } from '../../src/cache/file-store.js';
import { ScratchSpace } from '../../src/cache/scratch.js';
import { RegistryError } from '../../src/oci/errors.js';
import { parseDigest, type Digest } from '../../src/oci/reference.js';
import { deferred, waitFor } from '../fixtures/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function bytesOf(size: number, seed: string): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let offset = 0; offset < size; offset += block.length) {
    block.copy(out, offset);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

const digestOf = (bytes: Buffer): Digest => parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);

/**
 * A DownloadSource the test drives: every `open(offset)` hands out a body the test writes to,
 * cuts or ends; `failOpen` makes the next opens refuse.
 */
class ScriptedSource implements DownloadSource {
  readonly opens: number[] = [];
  readonly bodies: PassThrough[] = [];
  readonly ranges: [number, number][] = [];
  failOpen: Error | undefined;
  /** The size each open announces (undefined: none, like a chunked answer). */
  announce: (offset: number) => number | undefined;
  segments?: number;
  openRange?: (start: number, end: number) => Promise<RangeAnswer>;

  constructor(readonly blob: Buffer) {
    this.announce = () => blob.length;
  }

  async open(offset: number) {
    this.opens.push(offset);
    if (this.failOpen) throw this.failOpen;
    const body = new PassThrough();
    this.bodies.push(body);
    return { body, totalSize: this.announce(offset) };
  }

  /** The body of the latest open, once it is there. */
  async body(n: number): Promise<PassThrough> {
    await waitFor(() => this.bodies.length > n, 5000, `open #${n + 1}`);
    return this.bodies[n]!;
  }
}

/** Everything a reader delivers, as it arrives. */
function follow(reader: Readable) {
  const state = { chunks: [] as Buffer[], received: 0, ended: false, error: undefined as Error | undefined, body: () => Buffer.concat(state.chunks) };
  reader.on('data', (c: Buffer) => {
    state.chunks.push(c);
    state.received += c.length;
  });
  reader.on('end', () => (state.ended = true));
  reader.on('error', (err) => (state.error = err));
  return state;
}

let root: string;
let store: FileBlobStore;
let scratch: ScratchSpace;
let committed: { digest: string; size: number }[];

function downloads(options: { resumeAttempts?: number; writeTimeoutMs?: number; segmentThreshold?: number } = {}): Downloads {
  return new Downloads(
    { store, scratch },
    {
      resumeAttempts: options.resumeAttempts ?? 3,
      writeTimeoutMs: options.writeTimeoutMs ?? 60_000,
      segmentThreshold: options.segmentThreshold ?? 64 * MiB,
      logger: pino({ level: 'silent' }),
      onCommitted: (digest, size) => committed.push({ digest: digest.value, size }),
    },
  );
}

const tempFiles = () => readdirSync(scratch.dir);

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), 'downloads-unit-'));
  scratch = new ScratchSpace(root);
  await scratch.init();
  store = new FileBlobStore(root, scratch);
  await store.init();
  committed = [];
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

/** Write `bytes` into `body` and wait until the download has taken them. */
async function feed(download: BlobDownload, body: PassThrough, bytes: Buffer): Promise<void> {
  const target = download.written + bytes.length;
  body.write(bytes);
  await waitFor(() => download.written >= target, 5000, `${target} bytes written`);
}

describe('one download per digest', () => {
  it('is found by its digest while it runs, commits once, and is gone when done', async () => {
    const blob = bytesOf(256 * KiB, 'single');
    const digest = digestOf(blob);
    const source = new ScriptedSource(blob);
    const all = downloads();
    const download = all.start(digest, source);
    expect(all.get(digest)).toBe(download);
    expect(all.get(parseDigest(digest.value))).toBe(download);
    expect(all.size).toBe(1);
    expect(download.state).toBe('running');
    const body = await source.body(0);
    await download.ready;
    expect(download.totalSize).toBe(blob.length);
    body.end(blob);
    await download.finished;
    expect(download.state).toBe('done');
    expect(download.verified).toBe(true);
    expect(source.opens).toEqual([0]);
    expect(committed).toEqual([{ digest: digest.value, size: blob.length }]);
    expect(readFileSync(store.pathOf(digest)).equals(blob)).toBe(true);
    await waitFor(() => all.get(digest) === undefined, 5000, 'the download to leave the in-flight map');
    expect(all.size).toBe(0);
    expect(tempFiles()).toEqual([]);
    // Done: nobody reads the temp file any more (it has been renamed into the store).
    expect(() => download.createReader(0, undefined)).toThrow(/not running/);
  });

  it('keeps downloads of different digests apart', async () => {
    const a = bytesOf(64 * KiB, 'a');
    const b = bytesOf(96 * KiB, 'b');
    const all = downloads();
    const sa = new ScriptedSource(a);
    const sb = new ScriptedSource(b);
    const da = all.start(digestOf(a), sa);
    const db = all.start(digestOf(b), sb);
    expect(all.size).toBe(2);
    expect(all.get(digestOf(a))).toBe(da);
    expect(all.get(digestOf(b))).toBe(db);
    (await sb.body(0)).end(b);
    (await sa.body(0)).end(a);
    await Promise.all([da.finished, db.finished]);
    expect(readFileSync(store.pathOf(digestOf(a))).equals(a)).toBe(true);
    expect(readFileSync(store.pathOf(digestOf(b))).equals(b)).toBe(true);
    expect(committed.map((c) => c.digest).sort()).toEqual([digestOf(a).value, digestOf(b).value].sort());
  });
});

describe('readers', () => {
  it('read the file as it grows, each from its own offset, the last byte only once the digest is verified', async () => {
    const blob = bytesOf(1 * MiB, 'growing');
    const source = new ScriptedSource(blob);
    const download = downloads().start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    const early = follow(download.createReader(0, undefined)!);
    const ranged = follow(download.createReader(100, 199)!);
    // Half the blob: the early reader gets exactly that much, now.
    await feed(download, body, blob.subarray(0, 512 * KiB));
    await waitFor(() => early.received === 512 * KiB, 5000, 'the early reader to catch up with the download');
    await waitFor(() => ranged.ended, 5000, 'the ranged reader to end');
    expect(ranged.body().equals(blob.subarray(100, 200))).toBe(true);
    // A reader joining now starts from the beginning of the file.
    const late = follow(download.createReader(0, undefined)!);
    await waitFor(() => late.received === 512 * KiB, 5000, 'the late reader to read what is there');
    // Every byte but the last: held back, the digest is not checked yet.
    await feed(download, body, blob.subarray(512 * KiB));
    await waitFor(() => early.received === blob.length - 1 && late.received === blob.length - 1, 5000, 'all but the last byte');
    expect(download.verified).toBe(false);
    expect(early.ended).toBe(false);
    // The upstream's body ends: verified, then the last byte, then the end.
    body.end();
    await download.finished;
    await waitFor(() => early.ended && late.ended, 5000, 'the readers to end');
    expect(early.body().equals(blob)).toBe(true);
    expect(late.body().equals(blob)).toBe(true);
    expect(early.error).toBeUndefined();
  });

  it('a reader that stops reading holds nobody up: the download and the other readers go on', async () => {
    const blob = bytesOf(4 * MiB, 'stalled');
    const source = new ScriptedSource(blob);
    const download = downloads().start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    const stalled = download.createReader(0, undefined)!;
    stalled.pause();
    const reading = follow(download.createReader(0, undefined)!);
    body.end(blob);
    await download.finished;
    await waitFor(() => reading.ended, 5000, 'the other reader to end');
    expect(reading.body().equals(blob)).toBe(true);
    expect(readFileSync(store.pathOf(digestOf(blob))).equals(blob)).toBe(true);
    // And the stalled one still gets all of it, from its own fd, when it reads again.
    const late = follow(stalled);
    stalled.resume();
    await waitFor(() => late.ended, 5000, 'the stalled reader to end');
    expect(late.body().equals(blob)).toBe(true);
  });
});

describe('failures', () => {
  it('a refusal to open fails ready, finished and every reader with the same error; nothing is left', async () => {
    const blob = bytesOf(64 * KiB, 'refused');
    const source = new ScriptedSource(blob);
    const refusal = new RegistryError('BLOB_UNKNOWN', 'blob unknown to upstream');
    source.failOpen = refusal;
    const all = downloads();
    const download = all.start(digestOf(blob), source);
    await expect(download.ready).rejects.toBe(refusal);
    await expect(download.finished).rejects.toBe(refusal);
    expect(download.state).toBe('failed');
    expect(download.error).toBe(refusal);
    // A refusal is final: not retried.
    expect(source.opens).toEqual([0]);
    await waitFor(() => all.size === 0, 5000, 'the failed download to leave the map');
    expect(tempFiles()).toEqual([]);
    expect(existsSync(store.pathOf(digestOf(blob)))).toBe(false);
    expect(committed).toEqual([]);
  });

  it('a cut that cannot be resumed reaches every reader as an error; nothing is committed', async () => {
    const blob = bytesOf(1 * MiB, 'cut');
    const source = new ScriptedSource(blob);
    const download = downloads({ resumeAttempts: 0 }).start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    const readers = [follow(download.createReader(0, undefined)!), follow(download.createReader(0, undefined)!)];
    await feed(download, body, blob.subarray(0, 300 * KiB));
    await waitFor(() => readers.every((r) => r.received === 300 * KiB), 5000, 'the readers to catch up');
    body.destroy(new Error('connection reset by peer'));
    await expect(download.finished).rejects.toThrow(/connection reset/);
    await waitFor(() => readers.every((r) => r.error !== undefined), 5000, 'every reader to fail');
    for (const r of readers) {
      expect(r.ended).toBe(false);
      expect(r.received).toBe(300 * KiB);
    }
    expect(source.opens).toEqual([0]);
    await waitFor(() => tempFiles().length === 0, 5000, 'the temp file to be removed');
    expect(existsSync(store.pathOf(digestOf(blob)))).toBe(false);
    expect(committed).toEqual([]);
  });

  it('a reader that arrives after the failure gets the error at once', async () => {
    const blob = bytesOf(64 * KiB, 'late-failure');
    const source = new ScriptedSource(blob);
    const download = downloads({ resumeAttempts: 0 }).start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    body.destroy(new Error('gone'));
    await expect(download.finished).rejects.toThrow(/gone/);
    expect(() => download.createReader(0, undefined)).toThrow(/not running/);
  });
});

describe('resume', () => {
  it('a dropped connection is resumed from the bytes written, the hash carried on; readers never notice', async () => {
    const blob = bytesOf(2 * MiB, 'resume');
    const source = new ScriptedSource(blob);
    const download = downloads({ resumeAttempts: 2 }).start(digestOf(blob), source);
    const first = await source.body(0);
    await download.ready;
    const reader = follow(download.createReader(0, undefined)!);
    await feed(download, first, blob.subarray(0, 700 * KiB));
    first.destroy(new Error('connection reset'));
    const second = await source.body(1);
    expect(source.opens).toEqual([0, 700 * KiB]);
    second.end(blob.subarray(700 * KiB));
    await download.finished;
    expect(download.resumes).toBe(1);
    await waitFor(() => reader.ended, 5000, 'the reader to end');
    expect(reader.error).toBeUndefined();
    expect(reader.body().equals(blob)).toBe(true);
    expect(readFileSync(store.pathOf(digestOf(blob))).equals(blob)).toBe(true);
  });

  it('gives up after resumeAttempts, and when the upstream changes the size while resuming', async () => {
    const blob = bytesOf(512 * KiB, 'give-up');
    const source = new ScriptedSource(blob);
    const download = downloads({ resumeAttempts: 2 }).start(digestOf(blob), source);
    for (let n = 0; n < 3; n++) {
      const body = await source.body(n);
      await feed(download, body, blob.subarray(download.written, download.written + 10 * KiB));
      body.destroy(new Error(`reset ${n}`));
    }
    await expect(download.finished).rejects.toThrow(/reset 2/);
    expect(source.opens).toEqual([0, 10 * KiB, 20 * KiB]);

    const other = bytesOf(512 * KiB, 'size-change');
    const changing = new ScriptedSource(other);
    changing.announce = (offset) => (offset === 0 ? other.length : other.length + 1);
    const resized = downloads({ resumeAttempts: 2 }).start(digestOf(other), changing);
    const body = await changing.body(0);
    await feed(resized, body, other.subarray(0, 10 * KiB));
    body.destroy(new Error('reset'));
    await expect(resized.finished).rejects.toThrow(/changed the blob size/);
    expect(existsSync(store.pathOf(digestOf(other)))).toBe(false);
  });
});

describe('verification', () => {
  it('wrong bytes of the right length: every reader is cut before the last byte, nothing enters the store', async () => {
    const blob = bytesOf(1 * MiB, 'verify');
    const wrong = Buffer.from(blob);
    wrong[wrong.length - 10] = wrong[wrong.length - 10]! ^ 0xff;
    const source = new ScriptedSource(blob);
    const download = downloads().start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    const readers = [follow(download.createReader(0, undefined)!), follow(download.createReader(512 * KiB, undefined)!)];
    body.end(wrong);
    const failure = await download.finished.catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(RegistryError);
    expect((failure as RegistryError).code).toBe('DIGEST_INVALID');
    await waitFor(() => readers.every((r) => r.error !== undefined), 5000, 'every reader to be cut');
    expect(readers[0]!.received).toBeLessThan(blob.length);
    expect(readers[1]!.received).toBeLessThan(blob.length - 512 * KiB);
    for (const r of readers) expect(r.ended).toBe(false);
    expect(download.verified).toBe(false);
    await waitFor(() => tempFiles().length === 0, 5000, 'the temp file to be removed');
    expect(existsSync(store.pathOf(digestOf(blob)))).toBe(false);
    expect(committed).toEqual([]);
  });

  it('more bytes than announced fail the download (DIGEST_INVALID), not the disk', async () => {
    const blob = bytesOf(128 * KiB, 'too-long');
    const source = new ScriptedSource(blob);
    const download = downloads().start(digestOf(blob), source);
    const body = await source.body(0);
    body.end(Buffer.concat([blob, Buffer.from('extra')]));
    const failure = await download.finished.catch((err: unknown) => err);
    expect((failure as RegistryError).code).toBe('DIGEST_INVALID');
    expect(download.written).toBeLessThanOrEqual(blob.length);
    expect(existsSync(store.pathOf(digestOf(blob)))).toBe(false);
  });

  it('without a announced size the blob is verified when the body ends', async () => {
    const blob = bytesOf(200 * KiB, 'chunked');
    const source = new ScriptedSource(blob);
    source.announce = () => undefined;
    const download = downloads().start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    expect(download.totalSize).toBeUndefined();
    const reader = follow(download.createReader(0, undefined)!);
    body.end(blob);
    await download.finished;
    expect(download.totalSize).toBe(blob.length);
    await waitFor(() => reader.ended, 5000, 'the reader to end');
    expect(reader.body().equals(blob)).toBe(true);
  });
});

describe('the end of a download', () => {
  it('goes on without readers, but fails once nobody has read it for writeTimeout', async () => {
    const blob = bytesOf(256 * KiB, 'abandoned');
    const source = new ScriptedSource(blob);
    const download = downloads({ writeTimeoutMs: 50 }).start(digestOf(blob), source);
    const body = await source.body(0);
    await download.ready;
    const reader = download.createReader(0, undefined)!;
    await feed(download, body, blob.subarray(0, 64 * KiB));
    reader.destroy();
    await waitFor(() => download.state === 'failed', 5000, 'the abandoned download to be stopped');
    await expect(download.finished).rejects.toThrow(/abandoned/);
    expect(body.destroyed).toBe(true);
    expect(existsSync(store.pathOf(digestOf(blob)))).toBe(false);
  });

  it('abort() stops a running download (shutdown), but lets a verified one commit', async () => {
    const blob = bytesOf(128 * KiB, 'abort');
    const source = new ScriptedSource(blob);
    const all = downloads();
    const running = all.start(digestOf(blob), source);
    const body = await source.body(0);
    await feed(running, body, blob.subarray(0, 1000));
    all.abortAll('mirror shutting down');
    await expect(running.finished).rejects.toThrow(/shutting down/);
    await all.settled();

    // Verified, in the middle of its commit: kept.
    const slowCommit = deferred();
    const realCommit = store.commit.bind(store);
    store.commit = async (temp, digest) => {
      await slowCommit.promise;
      return realCommit(temp, digest);
    };
    const again = new ScriptedSource(blob);
    const verified = all.start(digestOf(blob), again);
    (await again.body(0)).end(blob);
    await waitFor(() => verified.state === 'committing', 5000, 'the commit to start');
    all.abortAll('mirror shutting down');
    slowCommit.resolve();
    await verified.finished;
    expect(readFileSync(store.pathOf(digestOf(blob))).equals(blob)).toBe(true);
  });

  it('a commit that fails fails the download and its readers; the temp file is removed', async () => {
    const blob = bytesOf(64 * KiB, 'commit-fails');
    store.commit = async () => {
      throw Object.assign(new Error('ENOSPC: no space left on device, rename'), { code: 'ENOSPC' });
    };
    const source = new ScriptedSource(blob);
    const download = downloads().start(digestOf(blob), source);
    (await source.body(0)).end(blob);
    await expect(download.finished).rejects.toThrow(/ENOSPC/);
    expect(download.state).toBe('failed');
    await waitFor(() => tempFiles().length === 0, 5000, 'the temp file to be removed');
    expect(committed).toEqual([]);
  });
});

describe('segments', () => {
  function segmentedSource(blob: Buffer, answer: (start: number, end: number) => Promise<RangeAnswer>): ScriptedSource {
    const source = new ScriptedSource(blob);
    source.segments = 4;
    source.openRange = async (start, end) => {
      source.ranges.push([start, end]);
      return answer(start, end);
    };
    return source;
  }

  it('fetches a big blob as parallel ranges written at their offsets; readers see it in order', async () => {
    const blob = bytesOf(4 * MiB, 'segments');
    const gate = deferred();
    const source = segmentedSource(blob, async (start, end) => {
      const body = new PassThrough();
      // Every range answers only once all three were asked for: they run at the same time.
      void gate.promise.then(() => body.end(blob.subarray(start, end + 1)));
      return { status: 206, body, range: { start, end, total: blob.length }, etag: undefined };
    });
    const download = downloads({ segmentThreshold: 1 * MiB }).start(digestOf(blob), source);
    const first = await source.body(0);
    await download.ready;
    const reader = follow(download.createReader(0, undefined)!);
    await waitFor(() => source.ranges.length === 3, 5000, 'three range requests open at once');
    expect(source.ranges).toEqual([[1 * MiB, 2 * MiB - 1], [2 * MiB, 3 * MiB - 1], [3 * MiB, 4 * MiB - 1]]);
    // The first segment is the full answer, read up to its boundary.
    first.write(blob.subarray(0, 1 * MiB));
    gate.resolve();
    await download.finished;
    expect(download.segmentsUsed).toBe(4);
    await waitFor(() => reader.ended, 5000, 'the reader to end');
    expect(reader.body().equals(blob)).toBe(true);
    expect(readFileSync(store.pathOf(digestOf(blob))).equals(blob)).toBe(true);
  });

  it('falls back to one stream from the verified prefix when the upstream ignores Range', async () => {
    const blob = bytesOf(4 * MiB, 'fallback');
    const source = segmentedSource(blob, async () => {
      const body = new PassThrough();
      body.end(blob);
      return { status: 200, body, range: undefined, etag: undefined };
    });
    const download = downloads({ segmentThreshold: 1 * MiB }).start(digestOf(blob), source);
    const first = await source.body(0);
    first.end(blob.subarray(0, 1 * MiB + 5));
    // One stream again, from what was written and verified.
    const rest = await source.body(1);
    expect(source.opens).toEqual([0, download.written]);
    rest.end(blob.subarray(download.written));
    await download.finished;
    expect(download.segmentsUsed).toBe(1);
    expect(readFileSync(store.pathOf(digestOf(blob))).equals(blob)).toBe(true);
  });
});
