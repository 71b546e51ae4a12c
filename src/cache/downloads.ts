// Single-flight blob downloads with progressive fan-out.
//
// The first miss for a digest starts one upstream download into a temp file; every
// client that asks for that digest, now or while it downloads, reads the temp file as
// it grows, each at its own pace (its own fd, its own position). The writer never waits
// for a reader, so a slow or vanished client never slows the download, and a
// download outlives the client that started it, but not by much once nobody reads it: it is
// cancelled after abandonAfter unless nearly done, and stopped at writeTimeout in any case.
// New downloads take a slot of the global limit (download-limiter.ts); joining does not.
// A dropped upstream connection resumes with `Range: bytes=N-`, the hash carried on.
// Only after the digest matches is the file fsynced and renamed into the store; on a
// mismatch every reader is destroyed (their clients see a cut connection, never bad
// bytes) and nothing enters the cache.

import { EventEmitter } from 'node:events';
import { openSync } from 'node:fs';
import { unlink, type FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { DigestVerifier } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import type { BlobStore } from './blob-store.js';
import type { DownloadLimiter } from './download-limiter.js';
import type { DownloadSource } from './download-source.js';
import { GrowingFileReader } from './growing-file-reader.js';
import type { ScratchSpace } from './scratch.js';
import { DEFAULT_PLANNER_OPTIONS, SegmentPlanner, type SegmentPlannerOptions } from './segment-planner.js';

/** The upstream cannot be trusted with segments (ignored Range, content changed): use one stream. */
class SegmentFallback extends Error {}

/**
 * A download nobody reads any more still finishes when this close to done: more than half
 * of it is here, or this little is left (cheaper to keep than to fetch again later).
 */
const WORTH_FINISHING_BYTES = 8 * 1024 * 1024;

const MiB = 1024 * 1024;
/**
 * Without a configured threshold: a fixed count splits every blob this big up front; auto
 * only ever splits a download measured to be slow, so smaller blobs may take part.
 */
const FIXED_SEGMENT_THRESHOLD = 32 * MiB;
const AUTO_SEGMENT_THRESHOLD = 8 * MiB;
/** Auto's cap on connections for one download when none is configured. */
const DEFAULT_MAX_SEGMENTS = 8;
/** How often an adaptive download's planner looks at the rate. */
const PLANNER_TICK_MS = 100;
/** How much of a segmented download's file is read back at once to be hashed (two buffers). */
const READ_BACK_BYTES = 4 * MiB;
/** Cut points fall on this boundary (tidy ranges; any would do). */
const SPLIT_ALIGN = 64 * 1024;

/** One piece [start, end] (inclusive) of a segmented download; bytes [start, pos) are in the temp file. */
interface Segment {
  start: number;
  end: number;
  pos: number;
  /** The end of the bytes a write under way has claimed (never less than pos): a cut goes after it. */
  reserved: number;
  /** Its current response has delivered bytes (for the planner: a connection still opening is not measured). */
  flowing: boolean;
}

export type DownloadState = 'running' | 'committing' | 'done' | 'failed';

export interface DownloadOptions {
  resumeAttempts: number;
  /** Blobs at least this big are fetched in segments when the source allows it (default: 32 MiB for a fixed count, 8 MiB for auto). */
  segmentThreshold?: number;
  /** `segments: auto`: at most this many connections for one download (default 8). */
  maxSegments?: number;
  /** `segments: auto`: the planner's windows and thresholds (tests shorten them). */
  planner?: Partial<Omit<SegmentPlannerOptions, 'maxSegments'>>;
  /** Told of every committed download: how many connections it used at most at once (a metric). */
  onDownloaded?(stats: { segmentsUsed: number; bytes: number; ms: number }): void;
  /** The longest a download goes on once no client reads it. */
  writeTimeoutMs: number;
  /** Cancelled sooner, after this long without a reader, unless worth finishing (0 or none = never sooner). */
  abandonAfterMs?: number;
  /** The global bound on downloads at once (none: unbounded). */
  limiter?: DownloadLimiter;
  /** Told of every download stopped because no client read it any more (a metric). */
  onAbandoned?(): void;
  logger: Logger;
  /** Called once the verified blob is in the store. */
  onCommitted(digest: Digest, size: number): void;
}


/**
 * A promise its owner settles later (a download's `ready` or `finished`). Rejections nobody
 * awaits are not unhandled: owners report them through their state and error too.
 */
export class Later {
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (err: Error) => void;
  constructor() {
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => undefined);
  }
}

export class BlobDownload extends EventEmitter {
  state: DownloadState = 'running';
  /** The whole blob is in the temp file and matches its digest (not yet durable or committed). */
  verified = false;
  /** Contiguous bytes written to the temp file (and hashed). */
  written = 0;
  totalSize: number | undefined;
  error: Error | undefined;
  tempPath: string | undefined;
  resumes = 0;
  /** The most upstream connections this download used at once (1 = one stream). */
  segmentsUsed = 1;
  /** Resolves when the upstream's first answer arrived (size known); rejects if it refused. */
  readonly ready: Promise<void>;
  /** Resolves when the blob is verified and in the store. */
  readonly finished: Promise<void>;
  private readers = 0;
  /** Other workers following this download (workers: N): their clients read it too. */
  private remoteReaders = 0;
  /** The upstream answered: the abandonment rule applies from now on. */
  private opened = false;
  /** A client has read this download at some point (a background one: the abandonment rule applies from then on). */
  private everRead = false;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Aborted when the download fails: a slot it waits for, a source it is opening. */
  private readonly stopped = new AbortController();
  private currentBody: Readable | undefined;
  private readonly activeBodies = new Set<Readable>();
  private readonly readyLater = new Later();
  private readonly finishedLater = new Later();

  constructor(
    readonly digest: Digest,
    private readonly storage: { store: BlobStore; scratch: ScratchSpace },
    private readonly source: DownloadSource,
    private readonly options: DownloadOptions,
    private readonly start: DownloadStart = {},
  ) {
    super();
    this.setMaxListeners(0);
    this.ready = this.readyLater.promise;
    this.finished = this.finishedLater.promise;
  }

  /** Runs the download to its end; never rejects (the outcome is in state/error). */
  async run(): Promise<void> {
    const verifier = new DigestVerifier(this.digest);
    let releaseSlot = this.start.slot ?? (() => {});
    const limiter = (this.start.limited ?? true) && !this.start.slot ? this.options.limiter : undefined;
    if (limiter) {
      try {
        releaseSlot = await limiter.acquire(this.stopped.signal);
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
        return;
      }
    }
    try {
      await this.transferAndCommit(verifier, releaseSlot);
    } finally {
      releaseSlot();
    }
  }

  /** Fetch into a temp file, verify, commit; the slot goes back once the source is read. */
  private async transferAndCommit(verifier: DigestVerifier, releaseSlot: () => void): Promise<void> {
    const temp = await this.storage.scratch.createTemp().catch((err: unknown) => {
      this.fail(err instanceof Error ? err : new Error(String(err)));
      return undefined;
    });
    if (!temp) return;
    this.tempPath = temp.path;
    const { handle } = temp;
    const startedAt = performance.now();
    let failure: Error | undefined;
    try {
      let segmentsTried = false;
      for (let attempt = 0; ; attempt++) {
        try {
          const { body, totalSize, etag, acceptsRanges } = await untilOpened(this.stopped.signal, (signal) => this.source.open(this.written, signal));
          if (this.state !== 'running') {
            body.destroy();
            throw this.error ?? new Error('download aborted');
          }
          if (totalSize !== undefined && totalSize > (this.source.maxSize ?? Infinity)) {
            body.destroy();
            throw this.tooBig(totalSize);
          }
          if (this.totalSize === undefined) this.totalSize = totalSize;
          else if (totalSize !== undefined && totalSize !== this.totalSize) {
            throw new RegistryError('BLOB_UNKNOWN', 'upstream changed the blob size while resuming', { status: 502, detail: { digest: this.digest.value } });
          }
          this.readyLater.resolve();
          this.opened = true;
          // Clients read it from now on; none might (they all left while it was opening).
          if (this.readers === 0 && this.remoteReaders === 0 && !this.idleTimer) this.startIdleTimer();
          const plan = segmentsTried || this.written > 0 || acceptsRanges === false || !this.source.openRange ? undefined : this.segmentPlan(totalSize);
          if (plan !== undefined && totalSize !== undefined) {
            segmentsTried = true;
            if (await this.runSegments(handle, verifier, body, totalSize, etag, plan)) break;
            // Fell back: go on with one stream from the verified prefix.
            attempt = -1;
            continue;
          }
          this.currentBody = body;
          const sink = this.fileSink(handle, verifier);
          try {
            await pipeline(body, sink.stream);
          } finally {
            // A write may still be under way when the connection drops: the resume offset
            // (and the hash) must include it before anything else happens.
            await sink.settled();
          }
          this.currentBody = undefined;
          if (this.totalSize === undefined || this.written >= this.totalSize) break;
          throw new Error(`upstream body ended at ${this.written} of ${this.totalSize} bytes`);
        } catch (err) {
          this.currentBody = undefined;
          const error = err instanceof Error ? err : new Error(String(err));
          // A refusal (404, 429, digest lies) or a local disk error is final; a cut connection resumes.
          const resumable =
            !(error instanceof RegistryError) &&
            !isLocalFsError(error) &&
            this.state === 'running' &&
            attempt < this.options.resumeAttempts &&
            (this.written === 0 || this.totalSize !== undefined);
          if (!resumable) throw error;
          this.resumes++;
          this.options.logger.warn(
            { digest: this.digest.value, offset: this.written, attempt: attempt + 1, err: error.message },
            'upstream blob download interrupted; resuming',
          );
        }
      }
      // Every byte is here: the source is done with, and its slot free for another download.
      releaseSlot();
      const computed = verifier.finish();
      if (computed !== this.digest.value) {
        throw new RegistryError('DIGEST_INVALID', 'upstream sent content that does not match its digest', {
          status: 502,
          detail: { expected: this.digest.value, computed, size: this.written },
        });
      }
      // The bytes are right: readers may have the last of them now. Durability (fsync) and
      // the rename into the store follow without holding clients up.
      this.verified = true;
      this.emit('progress');
      await handle.datasync();
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
    } finally {
      await handle.close().catch(() => undefined);
    }
    if (failure) {
      this.options.logger.warn({ digest: this.digest.value, bytes: this.written, err: failure.message }, 'blob download failed; nothing was cached');
      this.fail(failure);
      await unlink(temp.path).catch(() => undefined);
      return;
    }
    this.state = 'committing';
    try {
      await this.storage.store.commit(temp.path, this.digest);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
      await unlink(temp.path).catch(() => undefined);
      return;
    }
    this.totalSize = this.written;
    this.state = 'done';
    this.clearIdleTimer();
    const ms = Math.round(performance.now() - startedAt);
    this.options.logger.info({ digest: this.digest.value, bytes: this.written, ms, segmentsUsed: this.segmentsUsed, resumes: this.resumes }, 'blob downloaded');
    this.options.onDownloaded?.({ segmentsUsed: this.segmentsUsed, bytes: this.written, ms });
    try {
      this.options.onCommitted(this.digest, this.written);
    } catch (err) {
      // The bytes are safely in the store; the index can be repaired (mirror verify).
      this.options.logger.error({ digest: this.digest.value, err: (err as Error).message }, 'could not record a committed blob in the index');
    }
    this.finishedLater.resolve();
    this.emit('progress');
  }

  /**
   * How a blob of `totalSize` is fetched when the source allows ranges: a fixed count of
   * segments, a planner that adds them while they pay (auto), or undefined (one stream).
   */
  private segmentPlan(totalSize: number | undefined): number | SegmentPlanner | undefined {
    const segments = this.source.segments ?? 1;
    const auto = segments === 'auto';
    const maxSegments = this.options.maxSegments ?? DEFAULT_MAX_SEGMENTS;
    const threshold = this.options.segmentThreshold ?? (auto ? AUTO_SEGMENT_THRESHOLD : FIXED_SEGMENT_THRESHOLD);
    if (totalSize === undefined || totalSize < threshold) return undefined;
    if (!auto) return segments > 1 ? segments : undefined;
    return maxSegments > 1 ? new SegmentPlanner({ ...DEFAULT_PLANNER_OPTIONS, ...this.options.planner, maxSegments }) : undefined;
  }

  /**
   * Where one stream's bytes go: the temp file at `written`, then the hash, then the readers.
   * Chunks that arrive while a write is under way are batched into one writev, so the
   * upstream is never paused for a thread-pool round trip per 64 KiB (that alone made cold
   * blobs ~5x slower than warm ones).
   */
  private fileSink(handle: FileHandle, verifier: DigestVerifier): { stream: Writable; settled(): Promise<void> } {
    let last: Promise<void> = Promise.resolve();
    const accept = (chunks: Buffer[]): Promise<void> => {
      last = this.writeChunks(handle, verifier, chunks);
      return last;
    };
    return {
      stream: new Writable({
        highWaterMark: 4 * 1024 * 1024,
        write: (chunk: Buffer, _encoding, callback) => void accept([chunk]).then(() => callback(), callback),
        writev: (entries, callback) => void accept(entries.map((e) => e.chunk as Buffer)).then(() => callback(), callback),
      }),
      settled: () => last.then(() => undefined, () => undefined),
    };
  }

  private async writeChunks(handle: FileHandle, verifier: DigestVerifier, chunks: Buffer[]): Promise<void> {
    if (this.state !== 'running') throw this.error ?? new Error('download aborted');
    const length = chunks.reduce((n, c) => n + c.length, 0);
    if (this.totalSize !== undefined && this.written + length > this.totalSize) {
      throw new RegistryError('DIGEST_INVALID', 'upstream sent more bytes than it announced', { status: 502, detail: { digest: this.digest.value } });
    }
    if (this.written + length > (this.source.maxSize ?? Infinity)) throw this.tooBig(this.written + length);
    await this.source.throttle?.(length);
    let position = this.written;
    let pending = chunks;
    while (pending.length > 0) {
      const { bytesWritten } = await handle.writev(pending, position);
      position += bytesWritten;
      pending = dropBytes(pending, bytesWritten);
    }
    for (const c of chunks) verifier.update(c);
    this.written += length;
    this.emit('progress');
  }

  /**
   * Fetch [0, total) as parallel Range segments written at their offsets. The first segment
   * is the already open full response, read up to wherever its piece ends. `written` (what
   * readers see) is the contiguous prefix, hashed strictly in order: from memory when a write
   * lands right at it (the one-stream case costs nothing more than a plain download), else by
   * reading the file back as the gaps fill. `plan` is either a fixed count (the blob cut into
   * equal pieces up front) or a planner (segments: auto) that starts with the one stream and
   * adds connections while they raise the total rate, each time splitting the biggest piece
   * left, and again whenever a connection finishes its piece (work stealing: the tail does not
   * run on one connection). Returns false when the upstream cannot be trusted with ranges:
   * `written` is then a verified prefix to resume from with one stream.
   */
  private async runSegments(handle: FileHandle, verifier: DigestVerifier, first: Readable, total: number, etag: string | undefined, plan: number | SegmentPlanner): Promise<boolean> {
    const planner = typeof plan === 'number' ? undefined : plan;
    /** Sorted by start; together they tile [0, total). */
    const segments: Segment[] = [];
    const newSegment = (start: number, end: number): Segment => ({ start, end, pos: start, reserved: start, flowing: false });
    if (typeof plan === 'number') {
      const step = Math.ceil(total / plan / MiB) * MiB;
      for (let start = 0; start < total; start += step) segments.push(newSegment(start, Math.min(total, start + step) - 1));
    } else segments.push(newSegment(0, total - 1));
    const contiguous = () => {
      let end = 0;
      for (const seg of segments) {
        end = seg.pos;
        if (seg.pos <= seg.end) break;
      }
      return end;
    };
    // Hash (and publish to readers) the prefix as it becomes contiguous, strictly in order.
    let hashing: Promise<void> = Promise.resolve();
    let readBack: Buffer[] | undefined;
    const publish = (offset: number, chunks: Buffer[] | undefined) => {
      hashing = hashing.then(async () => {
        if (chunks && this.written === offset) {
          for (const c of chunks) verifier.update(c);
          this.written += chunks.reduce((n, c) => n + c.length, 0);
          this.emit('progress');
        }
        let until = contiguous();
        if (this.written >= until) return;
        // Big reads, the next one under way while this one is hashed: when the last pieces
        // land together, most of the blob is hashed here, after the download, on the clock.
        // Allocated only once pieces past the prefix need reading back: a download that never
        // split (most of them) holds none (eight prefetches would otherwise hold 64 MiB).
        readBack ??= [Buffer.allocUnsafe(READ_BACK_BYTES), Buffer.allocUnsafe(READ_BACK_BYTES)];
        const readAt = (buffer: Buffer, position: number, until: number) =>
          position < until ? handle.read(buffer, 0, Math.min(buffer.length, until - position), position).then((r) => r.bytesRead) : Promise.resolve(0);
        let turn = 0;
        let reading = readAt(readBack[turn]!, this.written, until);
        while (this.written < until) {
          const bytesRead = await reading;
          if (bytesRead === 0) throw new Error('segment data vanished from the temp file');
          const current = readBack[turn]!;
          turn ^= 1;
          until = contiguous();
          reading = readAt(readBack[turn]!, this.written + bytesRead, until);
          verifier.update(current.subarray(0, bytesRead));
          this.written += bytesRead;
          this.emit('progress');
        }
        await reading;
      });
      return hashing;
    };
    // The first segment that fails for good stops the others at once: their bytes would be
    // thrown away, and their upstream connections are someone else's bandwidth.
    const cancel = new AbortController();
    const signal = AbortSignal.any([cancel.signal, this.stopped.signal]);
    const bodies = new Set<Readable>();
    let firstFailure: Error | undefined;
    const stopOthers = (err: Error) => {
      if (firstFailure) return;
      firstFailure = err;
      cancel.abort(new Error(`another segment failed: ${err.message}`));
      for (const b of bodies) b.destroy();
    };
    /** Where one response's bytes go: its piece of the temp file, never past the piece's (current) end. */
    const segmentSink = (seg: Segment, body: Readable) => {
      let last: Promise<void> = Promise.resolve();
      const write = async (chunks: Buffer[]) => {
        if (this.state !== 'running') throw this.error ?? new Error('download aborted');
        // Past the end of the piece (it was cut, or the first response runs on): not ours.
        if (seg.pos > seg.end) return;
        const pieces = takeBytes(chunks, seg.end + 1 - seg.pos);
        const offset = seg.pos;
        const length = pieces.reduce((n, c) => n + c.length, 0);
        // Claimed before any await: a cut is never placed inside a write under way.
        seg.reserved = offset + length;
        seg.flowing = true;
        await this.source.throttle?.(length);
        let position = offset;
        for (let pending = pieces; pending.length > 0; ) {
          const { bytesWritten } = await handle.writev(pending, position);
          position += bytesWritten;
          pending = dropBytes(pending, bytesWritten);
        }
        seg.pos = offset + length;
        // At the prefix: hash from memory, and wait for it (memory stays bounded). Elsewhere:
        // it is read back once the gap before it fills.
        if (offset === this.written) await publish(offset, pieces);
        else void publish(offset, undefined).catch(() => undefined);
        if (seg.pos > seg.end) body.destroy();
      };
      const accept = (chunks: Buffer[]) => (last = write(chunks));
      return {
        stream: new Writable({
          highWaterMark: 4 * MiB,
          write: (chunk: Buffer, _encoding, callback) => void accept([chunk]).then(() => callback(), callback),
          writev: (entries, callback) => void accept(entries.map((e) => e.chunk as Buffer)).then(() => callback(), callback),
        }),
        settled: () => last.then(() => undefined, () => undefined),
      };
    };
    const fetchSegment = async (seg: Segment, firstBody: Readable | undefined) => {
      for (let attempt = 0; seg.pos <= seg.end; attempt++) {
        let body: Readable;
        if (firstBody && attempt === 0) body = firstBody;
        else if (seg.start === 0 && seg.end === total - 1) {
          // Still the one stream of an adaptive download (nothing split off yet): resume it as
          // a plain download resumes (`bytes=N-`, and an upstream that ignores Range is skipped
          // through), not as a segment whose dishonest answer would end segmenting.
          if (signal.aborted) throw signal.reason as Error;
          const answer = await untilOpened(signal, (pending) => this.source.open(seg.pos, pending));
          body = answer.body;
          if (signal.aborted || (answer.totalSize !== undefined && answer.totalSize !== total)) {
            body.destroy();
            if (signal.aborted) throw signal.reason as Error;
            throw new RegistryError('BLOB_UNKNOWN', 'upstream changed the blob size while resuming', { status: 502, detail: { digest: this.digest.value } });
          }
        } else {
          if (signal.aborted) throw signal.reason as Error;
          const [start, end] = [seg.pos, seg.end];
          const answer = await untilOpened(signal, (pending) => this.source.openRange!(start, end, pending));
          body = answer.body;
          if (signal.aborted) {
            body.destroy();
            throw signal.reason as Error;
          }
          const r = answer.range;
          const honest = answer.status === 206 && r && r.start === start && r.end === end && r.total === total && (!etag || !answer.etag || answer.etag === etag);
          if (!honest) {
            answer.body.destroy();
            throw new SegmentFallback(
              answer.status === 200 ? 'upstream ignored Range' : `upstream answered a segment with ${answer.status} ${r ? `bytes ${r.start}-${r.end}/${r.total}` : ''}${answer.etag && etag && answer.etag !== etag ? ' and another ETag' : ''}`,
            );
          }
        }
        this.activeBodies.add(body);
        bodies.add(body);
        const sink = segmentSink(seg, body);
        try {
          await pipeline(body, sink.stream);
        } catch (err) {
          // A write may still be under way: the resume offset must include it.
          await sink.settled();
          // Destroyed on purpose at the end of its piece: done.
          if (seg.pos > seg.end && this.state === 'running' && !signal.aborted) break;
          if (signal.aborted) throw signal.reason as Error;
          if (err instanceof SegmentFallback || this.state !== 'running' || isLocalFsError(err as Error) || attempt >= this.options.resumeAttempts) throw err;
          this.resumes++;
          this.options.logger.warn({ digest: this.digest.value, offset: seg.pos, end: seg.end, err: (err as Error).message }, 'segment interrupted; resuming it');
          continue;
        } finally {
          await sink.settled();
          seg.flowing = false;
          this.activeBodies.delete(body);
          bodies.delete(body);
          // The first response runs on to the end of the blob, a cut piece's past the cut: stop it.
          if (!body.readableEnded) body.destroy();
        }
        if (seg.pos <= seg.end) {
          if (attempt >= this.options.resumeAttempts) throw new Error(`segment ending at ${seg.end} ended early at ${seg.pos}`);
          this.resumes++;
        }
      }
    };
    const left = (seg: Segment) => Math.max(0, seg.end + 1 - Math.max(seg.pos, seg.reserved));
    const biggestLeft = () => {
      let biggest: Segment | undefined;
      for (const seg of segments) if (seg.pos <= seg.end && (!biggest || left(seg) > left(biggest))) biggest = seg;
      return biggest;
    };
    let running = 0;
    let settle!: () => void;
    const allDone = new Promise<void>((resolve) => (settle = resolve));
    const launch = (seg: Segment, firstBody?: Readable) => {
      running++;
      this.segmentsUsed = Math.max(this.segmentsUsed, running);
      fetchSegment(seg, firstBody).then(
        () => {
          running--;
          // A connection is free: take over half of the biggest piece left, when that is long.
          const biggest = biggestLeft();
          if (planner && biggest && !firstFailure && this.state === 'running' && planner.shouldSteal(left(biggest), running) && split(biggest)) {
            this.options.logger.debug({ digest: this.digest.value, connections: running, piece: left(biggest) * 2 }, 'a connection finished its piece; it takes over half of the biggest left');
          }
          if (running === 0) settle();
        },
        (err: unknown) => {
          stopOthers(err instanceof Error ? err : new Error(String(err)));
          running--;
          if (running === 0) settle();
        },
      );
    };
    /** Cut the rest of `seg` in two and start a connection on the second half; false when too small. */
    const split = (seg: Segment): boolean => {
      const from = Math.max(seg.pos, seg.reserved);
      const cut = Math.ceil((from + left(seg) / 2) / SPLIT_ALIGN) * SPLIT_ALIGN;
      if (cut <= from || seg.end + 1 - cut < (planner?.options.minSegmentBytes ?? MiB)) return false;
      const piece = newSegment(cut, seg.end);
      seg.end = cut - 1;
      segments.splice(segments.indexOf(seg) + 1, 0, piece);
      launch(piece);
      return true;
    };
    this.segmentsUsed = 1;
    segments.forEach((seg, i) => launch(seg, i === 0 ? first : undefined));
    const ticker = planner
      ? setInterval(() => {
          if (firstFailure || this.state !== 'running') return;
          const sample = { now: performance.now(), received: 0, remaining: 0, connections: running, flowing: 0 };
          for (const seg of segments) {
            sample.received += seg.pos - seg.start;
            sample.remaining += left(seg);
            if (seg.flowing) sample.flowing++;
          }
          const add = planner.next(sample);
          if (add > 0 || planner.settledAt === sample.now) {
            this.options.logger.debug(
              { digest: this.digest.value, connections: running, add, bytesPerSecond: Math.round(planner.lastRate * 1000), remaining: sample.remaining },
              add > 0 ? 'download measured slow; adding Range connections' : 'more connections would not help this download',
            );
          }
          for (let n = add; n > 0; n--) {
            const biggest = biggestLeft();
            if (!biggest || !split(biggest)) break;
          }
        }, PLANNER_TICK_MS)
      : undefined;
    ticker?.unref();
    try {
      await allDone;
    } finally {
      clearInterval(ticker);
    }
    await publish(0, undefined);
    if (!firstFailure) return true;
    // The first failure is the cause; the others' are the cancellations it caused.
    if (firstFailure instanceof SegmentFallback && this.state === 'running') {
      this.options.logger.warn({ digest: this.digest.value, reason: firstFailure.message, verifiedPrefix: this.written }, 'segmented download not possible; continuing with one stream');
      this.segmentsUsed = 1;
      return false;
    }
    throw firstFailure;
  }

  /** The upstream's blob is larger than the bound (descriptor or cap): nothing of it is kept. */
  private tooBig(size: number): RegistryError {
    return new RegistryError('SIZE_INVALID', `upstream blob is larger (${size} bytes or more) than the ${this.source.maxSize} bytes it may have`, {
      status: 502,
      detail: { digest: this.digest.value, size, maxSize: this.source.maxSize },
    });
  }

  private fail(error: Error): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.error = error;
    this.clearIdleTimer();
    this.stopped.abort(error);
    this.currentBody?.destroy(error);
    for (const body of this.activeBodies) body.destroy(error);
    this.readyLater.reject(error);
    this.finishedLater.reject(error);
    this.emit('progress');
  }

  /**
   * A stream of bytes `[start, end]` (inclusive; end undefined = to the end of the blob)
   * that follows the download, read from its temp file at the client's pace. While the
   * download commits (an S3 upload can take long) the verified temp file is still read;
   * undefined once it is gone (renamed into the store, or uploaded and removed): the store
   * has the blob then. Done or failed: an error (read the store, or the failure). The reader keeps its own fd, so the rename or removal is fine.
   */
  createReader(start: number, end: number | undefined): Readable | undefined {
    if ((this.state !== 'running' && this.state !== 'committing') || !this.tempPath) throw new Error('download is not running');
    let fd: number;
    try {
      fd = openSync(this.tempPath, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && this.state === 'committing') return undefined;
      throw err;
    }
    this.readers++;
    this.everRead = true;
    this.clearIdleTimer();
    return new GrowingFileReader(this, fd, start, end, () => {
      this.readers--;
      if (this.readers === 0 && this.remoteReaders === 0 && this.state === 'running') this.startIdleTimer();
    });
  }

  /** How many other workers follow this download (their clients count as readers). */
  setRemoteReaders(count: number): void {
    this.remoteReaders = count;
    if (count > 0) {
      this.everRead = true;
      this.clearIdleTimer();
    } else if (this.readers === 0 && this.opened && this.state === 'running') this.startIdleTimer();
  }

  /**
   * Nobody reads the download: after abandonAfter it is cancelled, unless worth finishing;
   * after writeTimeout it is stopped in any case.
   */
  private startIdleTimer(): void {
    this.clearIdleTimer();
    const { abandonAfterMs = 0, writeTimeoutMs } = this.options;
    // A background download (prefetch) is started for clients still to come: nobody reading
    // it yet is expected, not abandonment. Only writeTimeout stops it until a reader came and left.
    const awaitingFirstReader = this.start.background === true && !this.everRead;
    const early = !awaitingFirstReader && abandonAfterMs > 0 && abandonAfterMs < writeTimeoutMs;
    this.idleTimer = setTimeout(() => {
      if (this.state !== 'running' || this.verified) return;
      if (early && this.worthFinishing()) {
        this.options.logger.info({ digest: this.digest.value, bytes: this.written, of: this.totalSize }, 'no client reads this download any more; finishing it, it is nearly done');
        this.idleTimer = setTimeout(() => this.abandon(writeTimeoutMs), writeTimeoutMs - abandonAfterMs);
        this.idleTimer.unref();
        return;
      }
      this.abandon(early ? abandonAfterMs : writeTimeoutMs);
    }, early ? abandonAfterMs : writeTimeoutMs);
    this.idleTimer.unref();
  }

  private worthFinishing(): boolean {
    const total = this.totalSize;
    return total !== undefined && (this.written * 2 >= total || total - this.written <= WORTH_FINISHING_BYTES);
  }

  private abandon(afterMs: number): void {
    if (this.state !== 'running' || this.verified) return;
    this.options.onAbandoned?.();
    this.fail(new Error(`download abandoned: no client for ${afterMs} ms`));
  }

  private clearIdleTimer(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /**
   * Stop the download (shutdown): readers are cut, nothing is committed. A download whose
   * bytes are already verified is let finish its commit (moments away): its readers may have
   * had every byte, and the cache should keep what they got.
   */
  abort(reason: string): void {
    if (this.verified) return;
    this.fail(new Error(reason));
  }
}

/** The buffers left after the first `count` bytes (for a short writev). */
/** The first `count` bytes of `buffers` (all of them when they hold no more). */
function takeBytes(buffers: Buffer[], count: number): Buffer[] {
  const taken: Buffer[] = [];
  let room = count;
  for (const b of buffers) {
    if (room <= 0) break;
    taken.push(b.length > room ? b.subarray(0, room) : b);
    room -= b.length;
  }
  return taken;
}

function dropBytes(buffers: Buffer[], count: number): Buffer[] {
  const rest: Buffer[] = [];
  let skip = count;
  for (const b of buffers) {
    if (skip >= b.length) skip -= b.length;
    else {
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
  }
  return rest;
}

/**
 * `open(signal)`, with a signal that follows `stop` only until it resolves: a request still
 * waiting for its answer is aborted, but what it answered is the caller's to destroy or to
 * hand on (a response passed through to a client when the disk has no room must live on).
 */
async function untilOpened<T>(stop: AbortSignal, open: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const pending = new AbortController();
  const abort = () => pending.abort(stop.reason);
  if (stop.aborted) abort();
  else stop.addEventListener('abort', abort, { once: true });
  try {
    return await open(pending.signal);
  } finally {
    stop.removeEventListener('abort', abort);
  }
}

function isLocalFsError(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EROFS' || code === 'EIO' || code === 'EBADF';
}

/** How a download starts. */
export interface DownloadStart {
  /** Takes a slot of the global limit (default; a peer replica's request does not: that replica holds one). */
  limited?: boolean;
  /** A slot of the global limit the caller already holds (taken without queueing): the download releases it. */
  slot?: () => void;
  /** Started for clients still to come (prefetch): not abandoned before a first reader came and went. */
  background?: boolean;
}

/** The downloads in flight, one per digest. */
export class Downloads {
  private readonly inFlight = new Map<string, BlobDownload>();

  constructor(
    private readonly storage: { store: BlobStore; scratch: ScratchSpace },
    private readonly options: DownloadOptions,
  ) {}

  get(digest: Digest | string): BlobDownload | undefined {
    return this.inFlight.get(typeof digest === 'string' ? digest : digest.value);
  }

  get size(): number {
    return this.inFlight.size;
  }

  /** The digests being downloaded now. */
  digests(): IterableIterator<string> {
    return this.inFlight.keys();
  }

  /** Start a download for `digest`; the caller has checked there is none. */
  start(digest: Digest, source: DownloadSource, start: DownloadStart = {}): BlobDownload {
    const download = new BlobDownload(digest, this.storage, source, this.options, start);
    this.inFlight.set(digest.value, download);
    void download.run().finally(() => {
      if (this.inFlight.get(digest.value) === download) this.inFlight.delete(digest.value);
    });
    return download;
  }

  abortAll(reason: string): void {
    for (const d of this.inFlight.values()) d.abort(reason);
  }

  async settled(): Promise<void> {
    await Promise.allSettled([...this.inFlight.values()].map((d) => d.finished));
  }
}
