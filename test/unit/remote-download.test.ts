// A download another worker runs, read from this worker on that worker's news (core/remote-download.ts).
// The news arrives over the primary and can lag the owner: the temp file it names may already
// have left. That must make the reader wait for the outcome, never fail the client's request.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { RemoteDownload } from '../../src/core/remote-download.js';
import { parseDigest } from '../../src/oci/reference.js';

const dir = mkdtempSync(join(tmpdir(), 'remote-download-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const digest = parseDigest(`sha256:${'ab'.repeat(32)}`);
const remote = () => new RemoteDownload(digest, 'docker.io\u0000library/app', { idle: () => undefined, orphaned: () => undefined });

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('RemoteDownload', () => {
  it("reads the owner's temp file as the news reports bytes, the last one only once verified", async () => {
    const path = join(dir, 'growing');
    writeFileSync(path, 'hello world');
    const d = remote();
    d.apply({ state: 'running', path, totalSize: 11, written: 5, verified: false });
    const reader = d.createReader(0, undefined)!;
    expect(reader).toBeDefined();
    const body = readAll(reader);
    d.apply({ state: 'running', path, totalSize: 11, written: 11, verified: false });
    let ended = false;
    void body.then(() => (ended = true));
    await new Promise((r) => setTimeout(r, 30));
    expect(ended).toBe(false);
    d.apply({ state: 'committing', path, totalSize: 11, written: 11, verified: true });
    expect((await body).toString()).toBe('hello world');
  });

  it('a temp file that has left under news still saying "running" (the owner committed or failed since) gives no reader, not an error', () => {
    const d = remote();
    d.apply({ state: 'running', path: join(dir, 'already-renamed-into-the-store'), totalSize: 11, written: 3, verified: false });
    expect(d.createReader(0, undefined)).toBeUndefined();
  });

  it('no temp file known yet (a takeover starting over) gives no reader; a finished or failed download is not read at all', () => {
    const d = remote();
    d.apply({ state: 'running', totalSize: 11, written: 0, verified: false });
    expect(d.createReader(0, undefined)).toBeUndefined();
    d.apply({ state: 'failed', written: 0, verified: false, error: { message: 'digest mismatch' } });
    expect(() => d.createReader(0, undefined)).toThrow(/not running/);
    void d.finished.catch(() => undefined);
  });

  it('an error other than a missing file still fails (it is not a lagging-news race)', () => {
    const d = remote();
    // A path through a plain file cannot be opened (ENOTDIR).
    const file = join(dir, 'plain');
    writeFileSync(file, 'x');
    d.apply({ state: 'running', path: join(file, 'below'), totalSize: 11, written: 3, verified: false });
    expect(() => d.createReader(0, undefined)).toThrow(/ENOTDIR/);
  });
});
