// The filesystem store's bounded read (issue 13): content bigger than the caller's limit is
// refused by its size, before any of it is read.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/file-store.js';
import { ScratchSpace } from '../../src/cache/scratch.js';
import { digestOf } from '../../src/oci/digest.js';
import { parseDigest } from '../../src/oci/reference.js';

const root = mkdtempSync(join(tmpdir(), 'file-store-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('FileBlobStore.read with a limit', () => {
  it('reads content up to the limit and refuses bigger content', async () => {
    const scratch = new ScratchSpace(root);
    await scratch.init();
    const store = new FileBlobStore(root, scratch);
    await store.init();
    const small = Buffer.from('{"schemaVersion":2}');
    const big = Buffer.alloc(5 * 1024 * 1024, 1);
    const smallDigest = parseDigest(digestOf(small, 'sha256'));
    const bigDigest = parseDigest(digestOf(big, 'sha256'));
    await store.write(smallDigest, small);
    await store.write(bigDigest, big);
    expect(await store.read(smallDigest, 4 * 1024 * 1024)).toEqual(small);
    const outcome = await store.read(bigDigest, 4 * 1024 * 1024).then(
      (bytes) => `handed out ${bytes?.length} bytes`,
      (err: Error) => err.message,
    );
    expect(outcome).toMatch(/larger than/);
    expect(await store.read(parseDigest(`sha256:${'0'.repeat(64)}`), 1024)).toBeUndefined();
  });
});
