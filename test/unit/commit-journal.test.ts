// The journal of commits (src/cache/commit-journal.ts): recorded before a commit, pending
// until reconciled, emptied when nothing is pending, removed by a clean close, left for the
// next start otherwise.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CommitJournal } from '../../src/cache/commit-journal.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'mirror-journal-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const A = `sha256:${'a'.repeat(64)}`;
const B = `sha256:${'b'.repeat(64)}`;

describe('the commit journal', () => {
  it('writes concurrent records in one batch, keeps what the index refused, and empties itself once all is reconciled', async () => {
    const journal = await CommitJournal.create(root);
    await Promise.all([journal.record(A), journal.record(B)]);
    expect(readFileSync(journal.file, 'utf8')).toBe(`${A}\n${B}\n`);

    // Not landed yet (the commit is under way): a settle leaves them alone.
    const seen: string[] = [];
    await journal.settle(async (d) => void seen.push(d), () => undefined);
    expect(seen).toEqual([]);
    expect(journal.pendingCount).toBe(2);

    journal.landed(A);
    journal.landed(B);
    await expect(
      journal.settle(async (d) => {
        if (d === B) throw new Error('SQLITE_FULL');
      }, () => undefined),
    ).rejects.toThrow('SQLITE_FULL');
    expect(journal.pendingCount).toBe(1);
    expect(readFileSync(journal.file, 'utf8')).toBe(`${A}\n${B}\n`);

    let durable = 0;
    await journal.settle(async () => undefined, () => void durable++);
    expect(journal.pendingCount).toBe(0);
    expect(durable).toBe(1);
    expect(readFileSync(journal.file, 'utf8')).toBe('');
    // Appends go on after the truncation.
    await journal.record(A);
    expect(readFileSync(journal.file, 'utf8')).toBe(`${A}\n`);
  });

  it('does not resolve a digest recorded again while it was being reconciled', async () => {
    const journal = await CommitJournal.create(root);
    journal.suspect(A);
    let recordedAgain: Promise<void> | undefined;
    let unchangedAfter: boolean | undefined;
    await journal.settle(async (_d, unchanged) => {
      recordedAgain = journal.record(A);
      unchangedAfter = unchanged();
    }, () => undefined);
    await recordedAgain;
    expect(unchangedAfter).toBe(false);
    expect(journal.pendingCount).toBe(1);
  });

  it('a clean close removes the file; an unclean one leaves it for the next start', async () => {
    const clean = await CommitJournal.create(root);
    await clean.record(A);
    clean.landed(A);
    await clean.settle(async () => undefined, () => undefined);
    expect(await clean.close()).toEqual({ clean: true });
    expect(existsSync(clean.file)).toBe(false);

    const unclean = await CommitJournal.create(root);
    await unclean.record(B);
    expect(await unclean.close()).toEqual({ clean: false });
    expect(await CommitJournal.leftBehind(root)).toEqual([{ file: unclean.file, digests: [B] }]);
  });
});
