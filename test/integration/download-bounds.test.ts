// Bounded memory and work for blob downloads (issue 13, items 4 and 6), against a counting,
import { readFileSync } from 'node:fs';
// fault-injecting upstream on loopback.
import http from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/reference.js';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
const mirrors: TestMirror[] = [];
let serial = 0;

async function mirrorWith(document: Record<string, unknown> = {}): Promise<TestMirror> {
  const m = await startMirror({ upstreamUrl: upstream.url, document: { retries: { attempts: 1, baseDelay: '10ms', maxDelay: '50ms' }, ...document } });
  mirrors.push(m);
  return m;
}

/** A fresh blob nobody has asked for yet. */
function coldBlob(size: number): { digest: string; bytes: Buffer; path: string } {
  const bytes = pseudoRandomBytes(size, `bounds-${++serial}-${Date.now()}`);
  const digest = upstream.addBlob(bytes);
  return { digest, bytes, path: `/v2/team/app/blobs/${digest}` };
}

/** A client that reads the response headers, then nothing until told to. */
function pausedClient(url: string): { headers: Promise<http.IncomingMessage>; readAll(): Promise<Buffer> } {
  let response!: http.IncomingMessage;
  const headers = new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.pause();
      response = res;
      resolve(res);
    });
    req.on('error', reject);
  });
  return {
    headers,
    readAll: async () => {
      const chunks: Buffer[] = [];
      for await (const c of response as AsyncIterable<Buffer>) chunks.push(c);
      return Buffer.concat(chunks);
    },
  };
}

/** Bytes this process has read with read(2) and friends, files and sockets alike (Linux). */
function bytesRead(): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))![1]);
}

/**
 * How many bytes the process read after `baseline`, once reading stopped (under 64 KiB a
 * sample) for `quietSamples` samples in a row; fails as soon as it passes `bound`. With every client paused, what is
 * read for them and not yet taken by them sits in memory.
 */
async function bytesReadUntilQuiet(baseline: number, bound: number, quietSamples = 20): Promise<number> {
  let last = bytesRead() - baseline;
  for (let quiet = 0; quiet < quietSamples; ) {
    await new Promise((r) => setTimeout(r, 50));
    const read = bytesRead() - baseline;
    if (read > bound) throw new Error(`${Math.round(read / MiB)} MiB read for paused clients, past the bound of ${Math.round(bound / MiB)} MiB`);
    // Reading /proc/self/io (and the test runner's own chatter) is a few bytes: not reading for clients.
    quiet = read - last > 64 * 1024 ? 0 : quiet + 1;
    last = read;
  }
  return last;
}

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
});

afterAll(async () => {
  for (const m of mirrors) await m.stop().catch(() => undefined);
  await upstream?.stop();
});

afterEach(() => {
  upstream.fault = undefined;
  upstream.reset();
});

describe('clients that join a download while it commits', () => {
  // Held before the temp file leaves (S3: the upload), or after it is in the store (a request
  // that found the store without it a moment earlier: its stat is made to miss meanwhile).
  it.each(['before', 'after'] as const)('read it with backpressure: eight paused clients on a 32 MiB blob whose commit is held open (%s the move into the store) hold no copy of it in memory', async (when) => {
    const m = await mirrorWith();
    const blob = coldBlob(32 * MiB);
    const url = `${m.url}${blob.path}`;
    // Hold the commit open, as an S3 multipart upload of a big blob does for a while.
    let released = false;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = () => ((released = true), r())));
    const store = m.mirror.store;
    if (when === 'after') {
      const stat = store.stat.bind(store);
      store.stat = async (digest) => (released ? stat(digest) : undefined);
    }
    const commit = store.commit.bind(store);
    store.commit = async (tempPath, digest) => {
      if (when === 'before') await held;
      await commit(tempPath, digest);
      if (when === 'after') await held;
    };
    // The first client gets every byte once they are verified, before the commit.
    const first = await get(url);
    expect(sha256(first.body)).toBe(blob.digest);
    const download = () => m.mirror.downloads.get(parseDigest(blob.digest));
    await waitFor(() => download()?.state === 'committing', 10_000, 'the download to be committing');

    // Count the bodies the server opens (it does so once it knows the blob, during the commit).
    let opened = 0;
    const getBlob = m.mirror.getBlob.bind(m.mirror);
    m.mirror.getBlob = async (...args: Parameters<typeof getBlob>) => {
      const result = await getBlob(...args);
      const open = result.open;
      return open ? { ...result, open: (start: number, end: number | undefined) => (opened++, open(start, end)) } : result;
    };
    try {
      const baseline = bytesRead();
      const clients = Array.from({ length: 8 }, () => pausedClient(url));
      await waitFor(() => opened === 8, 10_000, 'eight bodies opened during the commit');
      expect(download()?.state).toBe('committing');
      release();
      await waitFor(() => download() === undefined, 10_000, 'the commit to finish');
      for (const c of clients) expect((await c.headers).statusCode).toBe(200);
      // Without backpressure the whole blob is read for every client: 8 × 32 MiB.
      expect(await bytesReadUntilQuiet(baseline, 96 * MiB)).toBeLessThan(96 * MiB);
      // And each of them then gets the right bytes.
      for (const c of clients) expect(sha256(await c.readAll())).toBe(blob.digest);
    } finally {
      release();
    }
  });
});
