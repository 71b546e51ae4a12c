// The filesystem store's commit is durable: the temp file's data is synced before the rename
// (the caller's contract, and write() for manifests), and the directory that received the
// new name is synced after it, so that a power loss cannot undo a commit the index recorded.
// fs calls are observed through a partial mock of node:fs/promises.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

const events: { op: string; path: string }[] = [];

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...real,
    rename: async (from: string, to: string) => {
      await real.rename(from, to);
      events.push({ op: 'rename', path: to });
    },
    open: async (path: string, ...rest: Parameters<typeof real.open> extends [unknown, ...infer R] ? R : never) => {
      const handle = await real.open(path, ...rest);
      const sync = handle.sync.bind(handle);
      const datasync = handle.datasync.bind(handle);
      handle.sync = async () => {
        await sync();
        events.push({ op: 'fsync', path: String(path) });
      };
      handle.datasync = async () => {
        await datasync();
        events.push({ op: 'fsync', path: String(path) });
      };
      return handle;
    },
  };
});

const { FileBlobStore } = await import('../../src/cache/file-store.js');
const { ScratchSpace } = await import('../../src/cache/scratch.js');
const { parseDigest } = await import('../../src/oci/reference.js');
const { sha256 } = await import('../fixtures/fake-upstream.js');

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'mirror-filestore-'));
  events.length = 0;
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('committing into the filesystem store', () => {
  it('syncs the file before the rename and the receiving directories after it', async () => {
    const scratch = new ScratchSpace(root);
    await scratch.init();
    const store = new FileBlobStore(root, scratch);
    await store.init();
    const bytes = Buffer.from('{"schemaVersion":2}');
    const digest = parseDigest(sha256(bytes));
    await store.write(digest, bytes);
    const target = store.pathOf(digest);
    const temp = events.find((e) => e.op === 'fsync')!.path;
    expect(dirname(temp)).toBe(scratch.dir);
    const order = events.map((e) => `${e.op} ${e.path}`);
    const renamed = order.indexOf(`rename ${target}`);
    expect(order.indexOf(`fsync ${temp}`)).toBeLessThan(renamed);
    // The new name's directory, and (first blob under a new prefix) the directories created for it.
    expect(order.indexOf(`fsync ${dirname(target)}`)).toBeGreaterThan(renamed);
    expect(order.indexOf(`fsync ${dirname(dirname(target))}`)).toBeGreaterThan(renamed);

    // A second blob under the same prefix directory: only that directory needs syncing.
    events.length = 0;
    let otherBytes = Buffer.from('x0');
    for (let i = 1; sha256(otherBytes).slice(7, 9) !== digest.hex.slice(0, 2); i++) otherBytes = Buffer.from(`x${i}`);
    const other = parseDigest(sha256(otherBytes));
    await store.write(other, otherBytes);
    const after = events.map((e) => `${e.op} ${e.path}`);
    expect(after.indexOf(`fsync ${dirname(store.pathOf(other))}`)).toBeGreaterThan(after.indexOf(`rename ${store.pathOf(other)}`));
    expect(after).not.toContain(`fsync ${dirname(dirname(store.pathOf(other)))}`);
  });
});
