// The journal of commits: what this process is putting into the store, written (and synced)
// before each commit, so that the index and the store can be reconciled after a crash in time
// proportional to what changed, never by walking the cache.
//
//   <storage.path>/journal/<pid>-<time>-<random>   one file per running mirror, a digest a line
//
// A digest is appended before its file is committed (renamed or uploaded) and stays pending
// until the index is seen to hold it (or the file is seen gone): the periodic settle
// (index-recovery.ts reconciles each) resolves what landed, and retries what the index
// refused (a full disk, SQLITE_BUSY), so that a committed file is never invisible to eviction.
// When nothing is pending the file is emptied (after the index's WAL is synced). A clean close
// removes it; a file left by a process that is gone is the sign of an unclean end, and its
// digests are what the next start reconciles.

import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/reference.js';
import type { BlobStore, StoredObject } from './blob-store.js';
import { syncDirectory } from './file-store.js';
import { isProcessAlive } from './scratch.js';

/** A journal a process that is gone left behind: the digests it was committing. */
export interface LeftJournal {
  file: string;
  digests: string[];
}

/**
 * Make the index agree with the store about `digest`; `unchanged()` is false once the digest
 * was recorded again meanwhile (a commit under way): then change nothing, the next settle decides.
 */
export type Reconcile = (digest: string, unchanged: () => boolean) => Promise<void>;

interface Pending {
  /** Bumped on every new record of the digest: a settle decides only on what it checked. */
  generation: number;
  /** The commit call returned (the file is in place, or the commit failed): ready to reconcile. */
  landed: boolean;
}

export class CommitJournal {
  /** Journals this process has open: another mirror in the same process on the same storage (tests do it) is alive. */
  private static readonly openHere = new Set<string>();
  private readonly pending = new Map<string, Pending>();
  private generation = 0;
  /** Lines in the file since it was last emptied. */
  private lines = 0;
  /** Appends, truncations and the close, in order. */
  private chain: Promise<void> = Promise.resolve();
  /** Lines waiting for the next append (group commit: one write and one sync for all of them). */
  private batch: { lines: string[]; written: Promise<void> } | undefined;
  private settling: Promise<void> | undefined;

  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
  ) {}

  static directory(storagePath: string): string {
    return join(storagePath, 'journal');
  }

  /** Journals left by processes that are gone (or by an earlier mirror in this process). */
  static async leftBehind(storagePath: string): Promise<LeftJournal[]> {
    const dir = CommitJournal.directory(storagePath);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const left: LeftJournal[] = [];
    for (const name of names) {
      const pid = Number(name.split('-')[0]);
      // A live process's journal (a prewarm beside the server, a second server) is its own business.
      const file = join(dir, name);
      if (CommitJournal.openHere.has(file)) continue;
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isProcessAlive(pid)) continue;
      const text = await readFile(file, 'utf8').catch(() => '');
      left.push({ file, digests: [...new Set(text.split('\n').filter((line) => line.length > 0))] });
    }
    return left;
  }

  /** Start this process's journal. */
  static async create(storagePath: string): Promise<CommitJournal> {
    const dir = CommitJournal.directory(storagePath);
    await mkdir(dir, { recursive: true });
    const file = join(dir, `${process.pid}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`);
    const handle = await open(file, 'a');
    // The file's name must survive a power loss as surely as the lines appended to it.
    await syncDirectory(dir);
    CommitJournal.openHere.add(file);
    return new CommitJournal(file, handle);
  }

  /** Digests not yet reconciled with the index. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Note (durably) that `digest` is about to be committed; resolves once it is on disk. */
  record(digest: string): Promise<void> {
    this.pending.set(digest, { generation: ++this.generation, landed: false });
    if (!this.batch) {
      const batch: { lines: string[]; written: Promise<void> } = { lines: [], written: Promise.resolve() };
      batch.written = this.enqueue(async () => {
        // Later records start the next batch.
        if (this.batch === batch) this.batch = undefined;
        await this.handle.write(batch.lines.join(''));
        await this.handle.datasync();
        this.lines += batch.lines.length;
      });
      this.batch = batch;
    }
    this.batch.lines.push(`${digest}\n`);
    return this.batch.written;
  }

  /** The commit of `digest` returned: the next settle reconciles it. */
  landed(digest: string): void {
    const entry = this.pending.get(digest);
    if (entry) entry.landed = true;
  }

  /** The index and the store may disagree about `digest` (a row without its file): reconcile it at the next settle. */
  suspect(digest: string): void {
    this.pending.set(digest, { generation: ++this.generation, landed: true });
  }

  /**
   * Reconcile every landed digest with `reconcile` (which throws when the index cannot be
   * written: the digest stays pending for the next settle). When nothing is pending, the
   * file is emptied after `makeDurable` (the index's WAL synced) succeeds.
   */
  settle(reconcile: Reconcile, makeDurable: () => void): Promise<void> {
    this.settling ??= this.settleOnce(reconcile, makeDurable).finally(() => {
      this.settling = undefined;
    });
    return this.settling;
  }

  private async settleOnce(reconcile: Reconcile, makeDurable: () => void): Promise<void> {
    let failure: Error | undefined;
    for (const [digest, entry] of [...this.pending]) {
      if (!entry.landed) continue;
      const generation = entry.generation;
      try {
        await reconcile(digest, () => this.pending.get(digest)?.generation === generation);
      } catch (err) {
        failure = err as Error;
        continue;
      }
      // Recorded again while it was checked: the next settle decides.
      if (this.pending.get(digest)?.generation === generation) this.pending.delete(digest);
    }
    if (failure) throw failure;
    if (this.pending.size > 0 || this.lines === 0) return;
    makeDurable();
    await this.enqueue(async () => {
      if (this.pending.size > 0) return;
      await this.handle.truncate(0);
      this.lines = 0;
    });
  }

  /**
   * Stop journalling. With nothing pending the file is removed (a clean end); otherwise it
   * stays for the next start to reconcile.
   */
  async close(): Promise<{ clean: boolean }> {
    const clean = this.pending.size === 0;
    await this.enqueue(async () => {
      CommitJournal.openHere.delete(this.file);
      await this.handle.close();
      if (clean) await unlink(this.file).catch(() => undefined);
    });
    return { clean };
  }

  private enqueue(work: () => Promise<void>): Promise<void> {
    const run = this.chain.then(work);
    this.chain = run.catch(() => undefined);
    return run;
  }
}

/**
 * The store, with every commit recorded in the journal first. Only what goes into the store
 * needs recording: a deletion that the index does not hear of leaves a row without its file,
 * which reads and eviction find and drop.
 */
export class JournaledStore implements BlobStore {
  readonly kind: BlobStore['kind'];
  readonly directUrl?: (digest: Digest) => Promise<string | undefined>;

  constructor(
    private readonly inner: BlobStore,
    private readonly journal: CommitJournal,
  ) {
    this.kind = inner.kind;
    if (inner.directUrl) this.directUrl = (digest) => inner.directUrl!(digest);
  }

  init(): Promise<void> {
    return this.inner.init();
  }

  stat(digest: Digest): Promise<StoredObject | undefined> {
    return this.inner.stat(digest);
  }

  createReadStream(digest: Digest, start?: number, end?: number): Readable {
    return this.inner.createReadStream(digest, start, end);
  }

  read(digest: Digest, maxBytes?: number): Promise<Buffer | undefined> {
    return this.inner.read(digest, maxBytes);
  }

  async commit(tempPath: string, digest: Digest): Promise<void> {
    try {
      await this.journal.record(digest.value);
      await this.inner.commit(tempPath, digest);
    } finally {
      this.journal.landed(digest.value);
    }
  }

  async write(digest: Digest, bytes: Uint8Array): Promise<void> {
    try {
      await this.journal.record(digest.value);
      await this.inner.write(digest, bytes);
    } finally {
      this.journal.landed(digest.value);
    }
  }

  delete(digest: Digest): Promise<boolean> {
    return this.inner.delete(digest);
  }

  list(): AsyncGenerator<StoredObject> {
    return this.inner.list();
  }
}
