// The index and the store disagreeing, or the index lost (issue 13, item 5): a damaged index
// file is set aside and the index rebuilt from the store; at start-up the index is reconciled
// with what the last run committed (its journal), not by walking the whole cache.
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha256, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage, OCI_MANIFEST } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { blobFile } from '../fixtures/storage.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: FakeUpstream;

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
});
afterAll(async () => {
  await upstream?.stop();
});

/** Pull an image (tag, config, layer) through a mirror and wait until its blobs are indexed. */
async function pullImage(mirror: TestMirror, repo: string, seed: string) {
  const image = addTinyImage(upstream, repo, 'v1', seed);
  const manifest = JSON.parse(image.bytes.toString('utf8')) as { config: { digest: string } };
  expect((await get(`${mirror.url}/v2/${repo}/manifests/v1`)).status).toBe(200);
  for (const digest of [image.layer, manifest.config.digest]) {
    const blob = await get(`${mirror.url}/v2/${repo}/blobs/${digest}`);
    expect(sha256(blob.body)).toBe(digest);
  }
  await waitFor(() => mirror.mirror.index.getBlob(image.layer) !== undefined && mirror.mirror.index.getBlob(manifest.config.digest) !== undefined, 10_000, 'the blobs to be indexed');
  return { ...image, config: manifest.config.digest };
}

describe('a damaged index file', () => {
  const damage: [string, (file: string) => void][] = [
    ['not a database at all', (file) => writeFileSync(file, 'this is not an SQLite database\n'.repeat(200))],
    [
      'an SQLite file with its schema page overwritten',
      (file) => {
        const fd = openSync(file, 'r+');
        writeSync(fd, Buffer.alloc(3000, 0xa5), 0, 3000, 100);
        closeSync(fd);
      },
    ],
  ];

  it.each(damage)('%s: is set aside, and the index is rebuilt from the store (cached blobs served without the upstream)', async (_what, spoil) => {
    const storage = mkdtempSync(join(tmpdir(), 'mirror-damaged-'));
    try {
      const first = await startMirror({ upstreamUrl: upstream.url, storage });
      const image = await pullImage(first, 'team/app', `damaged ${_what}`);
      await first.stop();
      const indexFile = join(storage, 'index.db');
      spoil(indexFile);
      const damagedBytes = readFileSync(indexFile);

      upstream.reset();
      const second = await startMirror({ upstreamUrl: upstream.url, storage });
      try {
        const setAside = readdirSync(storage).filter((name) => name.startsWith('index.db.damaged-'));
        expect(setAside).toHaveLength(1);
        expect(readFileSync(join(storage, setAside[0]!)).equals(damagedBytes)).toBe(true);
        const error = second.logs.find((l) => l.level === 50 && /index.*damaged/.test(l.msg));
        expect(error, JSON.stringify(second.logs.slice(0, 5))).toBeDefined();
        expect(JSON.stringify(error)).toContain(setAside[0]);
        expect(JSON.stringify(error)).toMatch(/tags .*refetched/);
        await waitFor(() => second.logs.some((l) => /index rebuilt/.test(l.msg)), 10_000, 'the rebuild to finish');

        // Content comes back from the store: blobs as blobs, the manifest as a manifest.
        expect(second.mirror.index.getBlob(image.layer)?.size).toBe(Buffer.from(`layer damaged ${_what}`).length);
        expect(second.mirror.index.getManifest(image.digest)?.mediaType).toBe(OCI_MANIFEST);
        expect(second.mirror.index.getBlob(image.digest)).toBeUndefined();
        const layer = await get(`${second.url}/v2/team/app/blobs/${image.layer}`);
        expect(layer.status).toBe(200);
        expect(sha256(layer.body)).toBe(image.layer);
        const byDigest = await get(`${second.url}/v2/team/app/manifests/${image.digest}`, { headers: { accept: OCI_MANIFEST } });
        expect(byDigest.status).toBe(200);
        expect(sha256(byDigest.body)).toBe(image.digest);
        expect(upstream.count({ method: 'GET', kind: 'blob' })).toBe(0);
        expect(upstream.count({ method: 'GET', kind: 'manifest' })).toBe(0);
        // Tags are not in the content: the tag is fetched again.
        expect((await get(`${second.url}/v2/team/app/manifests/v1`)).status).toBe(200);
        expect(upstream.count({ method: 'GET', kind: 'manifest', authorized: true })).toBe(1);
      } finally {
        await second.stop();
      }
      // The next start finds a sound index: nothing set aside again, no rebuild.
      const third = await startMirror({ upstreamUrl: upstream.url, storage });
      try {
        expect(readdirSync(storage).filter((name) => name.startsWith('index.db.damaged-'))).toHaveLength(1);
        expect(third.logs.some((l) => /index rebuilt|damaged/.test(l.msg))).toBe(false);
        expect(third.mirror.index.getBlob(image.layer)).toBeDefined();
      } finally {
        await third.stop();
      }
      expect(existsSync(join(storage, 'index.db'))).toBe(true);
    } finally {
      rmSync(storage, { recursive: true, force: true });
    }
  });
});

describe('reconciling the index with the store', () => {
  it('a blob committed while the index refused its row is indexed once the index recovers, without a restart', async () => {
    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      const bytes = pseudoRandomBytes(256 * 1024, 'refused-then-recovered');
      const digest = upstream.addBlob(bytes);
      const usageBefore = mirror.mirror.evictor.usageBytes;
      mirror.mirror.index.db.pragma('query_only = ON');
      const pulled = await get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      expect(sha256(pulled.body)).toBe(digest);
      await waitFor(() => mirror.logs.some((l) => l.msg === 'could not record a committed blob in the index'), 10_000, 'the commit to be refused its row');
      expect(existsSync(blobFile(mirror.storage, digest))).toBe(true);
      expect(mirror.mirror.index.getBlob(digest)).toBeUndefined();
      mirror.mirror.index.db.pragma('query_only = OFF');
      // The periodic settle writes the row it could not write at commit time.
      await waitFor(() => mirror.mirror.index.getBlob(digest) !== undefined, 15_000, 'the row to be written');
      expect(mirror.mirror.index.getBlob(digest)!.size).toBe(bytes.length);
      expect(mirror.mirror.evictor.usageBytes).toBe(usageBefore + bytes.length);
    } finally {
      mirror.mirror.index.db.pragma('query_only = OFF');
      await mirror.stop();
    }
  });

  it('at start-up, what the last run committed but could not index is adopted, and rows whose files are gone are dropped: only the journalled digests are looked at', async () => {
    const storage = mkdtempSync(join(tmpdir(), 'mirror-reconcile-'));
    try {
      const first = await startMirror({ upstreamUrl: upstream.url, storage });
      const image = await pullImage(first, 'team/reconcile', 'reconcile');
      const bytes = pseudoRandomBytes(300 * 1024, 'committed-never-indexed');
      const digest = upstream.addBlob(bytes);
      // What the periodic settle found in the index is off the journal.
      await first.mirror.settleJournal();
      expect(readFileSync(readdirSync(join(storage, 'journal')).map((f) => join(storage, 'journal', f))[0]!, 'utf8')).toBe('');
      first.mirror.index.db.pragma('query_only = ON');
      expect(sha256((await get(`${first.url}/v2/team/app/blobs/${digest}`)).body)).toBe(digest);
      await waitFor(() => existsSync(blobFile(storage, digest)), 10_000, 'the blob to be committed');
      // The index never takes the row before this run ends.
      await first.stop();
      expect(first.mirror.index.db.open).toBe(false);
      expect(readdirSync(join(storage, 'journal'))).toHaveLength(1);

      // Meanwhile a file vanishes behind the mirror's back; a crashed run had been committing it.
      rmSync(blobFile(storage, image.config));
      writeFileSync(join(storage, 'journal', `${process.pid}-crashed-0000`), `${image.config}\n`);

      const second = await startMirror({ upstreamUrl: upstream.url, storage });
      try {
        expect(second.mirror.index.getBlob(digest)?.size).toBe(bytes.length);
        expect(second.mirror.index.getBlob(image.config)).toBeUndefined();
        expect(second.mirror.index.getBlob(image.layer)).toBeDefined();
        // Eviction counts the adopted blob (and no longer the vanished one).
        expect(second.mirror.evictor.usageBytes).toBe(second.mirror.index.usage().bytes);
        expect(second.mirror.index.usage().blobs).toBe(2);
        const reconciled = second.logs.find((l) => l.msg.startsWith('reconciled the index'));
        expect(reconciled).toMatchObject({ journals: 2, digests: 2, adopted: 1, dropped: 1 });
        // The journals of the gone runs are done with.
        expect(readdirSync(join(storage, 'journal'))).toHaveLength(1);
      } finally {
        await second.stop();
      }
      // A clean end leaves no journal: the next start has nothing to reconcile.
      expect(readdirSync(join(storage, 'journal'))).toHaveLength(0);
    } finally {
      rmSync(storage, { recursive: true, force: true });
    }
  });

  it('a blob file deleted behind the mirror’s back is fetched again on the next pull, and its row dropped when it cannot be', async () => {
    const mirror = await startMirror({ upstreamUrl: upstream.url });
    try {
      const bytes = pseudoRandomBytes(200 * 1024, 'deleted-behind-the-back');
      const digest = upstream.addBlob(bytes);
      expect(sha256((await get(`${mirror.url}/v2/team/app/blobs/${digest}`)).body)).toBe(digest);
      await waitFor(() => mirror.mirror.index.getBlob(digest) !== undefined, 10_000, 'the blob to be indexed');
      rmSync(blobFile(mirror.storage, digest));
      upstream.reset();
      const again = await get(`${mirror.url}/v2/team/app/blobs/${digest}`);
      expect(again.status).toBe(200);
      expect(sha256(again.body)).toBe(digest);
      expect(upstream.count({ method: 'GET', kind: 'blob', authorized: true })).toBe(1);
      await waitFor(() => existsSync(blobFile(mirror.storage, digest)), 10_000, 'the blob to be stored again');
      expect(mirror.mirror.index.getBlob(digest)?.size).toBe(bytes.length);

      // Gone from disk and, this time, from the upstream too: the row does not outlive the file.
      rmSync(blobFile(mirror.storage, digest));
      upstream.fault = (r) => (r.kind === 'blob' && r.path.endsWith(digest) ? { status: 404 } : undefined);
      expect((await get(`${mirror.url}/v2/team/app/blobs/${digest}`)).status).toBe(404);
      await waitFor(() => mirror.mirror.index.getBlob(digest) === undefined, 15_000, 'the row to be dropped');
    } finally {
      upstream.fault = undefined;
      await mirror.stop();
    }
  });
});
