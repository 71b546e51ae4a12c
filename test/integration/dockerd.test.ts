// dockerd, the way most users meet the mirror: `registry-mirrors` in daemon.json, then
// `docker pull alpine:3.19` → /v2/library/alpine/... at the mirror. dockerd falls back to
// Docker Hub when its mirror fails; here Docker Hub is unreachable, so a pull that succeeds
// went through the mirror — and the mirror's access log shows it.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PullEvent } from '../../src/server/pull-events.js';
import { startDockerd, type Dockerd } from '../fixtures/dockerd-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: RealUpstream;
let content: SeededContent;
let mirror: TestMirror;
let dockerd: Dockerd;
const work = mkdtempSync(join(tmpdir(), 'dockerd-test-'));
const eventsFile = join(work, 'pull-events.jsonl');
const pullEvents = () => (existsSync(eventsFile) ? readFileSync(eventsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as PullEvent) : []);

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
  // The product default: real clients pull with layer prefetch on.
  mirror = await startMirror({ upstreamUrl: upstream.url, document: { prefetch: true, events: { file: eventsFile } } });
  dockerd = await startDockerd({ registryMirrors: [mirror.url] });
});

afterAll(async () => {
  await dockerd?.stop();
  await mirror?.stop();
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function repoDigests(ref: string): Promise<string[]> {
  const r = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', ref]);
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as string[];
}

describe('docker pull through registry-mirrors', () => {
  it('pulls an official-style multi-arch image (alpine:3.19 → /v2/library/alpine/…)', async () => {
    await dockerd.pull('alpine:3.19');
    expect(await repoDigests('alpine:3.19')).toEqual([`alpine@${content.alpine.digest}`]);
    const paths = mirror.accessLog().map((l) => `${l.method} ${l.path} ${l.status}`);
    // dockerd resolves the tag with a HEAD, then fetches the index and its platform manifest by digest.
    expect(paths).toContain('HEAD /v2/library/alpine/manifests/3.19 200');
    expect(paths).toContain(`GET /v2/library/alpine/manifests/${content.alpine.digest} 200`);
    const amd64 = content.alpine.content.images[0]!;
    for (const layer of amd64.layers) expect(paths).toContain(`GET /v2/library/alpine/blobs/${layer.digest} 200`);
    // The other platform's layers were never asked for.
    for (const layer of content.alpine.content.images[1]!.layers) expect(paths.join('\n')).not.toContain(layer.digest);
    // One pull event: the index's GET, with the tag its HEAD resolved (the platform manifest's GET is part of the same pull).
    await waitFor(() => pullEvents().length >= 1, 10_000, 'the pull event');
    expect(pullEvents()).toEqual([
      expect.objectContaining({
        upstream: 'docker.io', repository: 'library/alpine', tag: '3.19', digest: content.alpine.digest, kind: 'index', status: 200, client: '127.0.0.1', user: null,
      }),
    ]);
  });

  it('pulls a Docker schema2 image and a Docker manifest list', async () => {
    await dockerd.pull('busybox:1.36');
    expect(await repoDigests('busybox:1.36')).toEqual([`busybox@${content.busybox.digest}`]);
    await dockerd.pull('debian:bookworm');
    expect(await repoDigests('debian:bookworm')).toEqual([`debian@${content.debian.digest}`]);
  });

  it('a second pull after removing the image is served from the cache: zero upstream blob requests', async () => {
    expect((await dockerd.docker(['rmi', 'busybox:1.36'])).code).toBe(0);
    upstream.resetCounts();
    await dockerd.pull('busybox:1.36');
    expect(upstream.count({ kind: 'blob' })).toBe(0);
    expect(upstream.count({ kind: 'manifest' })).toBe(0);
  });
});
