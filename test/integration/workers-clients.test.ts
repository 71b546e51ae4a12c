// dockerd and containerd pull through a mirror of two workers (issue 16): their requests
// are spread over both processes (one pull's manifests on one, its blobs on the other),
// which must answer as one mirror. Docker Hub is unreachable here, so a pull that succeeds
// went through the mirror.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../fixtures/containerd-ctr.js';
import { startDockerd, type Dockerd } from '../fixtures/dockerd-client.js';
import { runCli, startMirrorProcess, type MirrorProcess } from '../fixtures/mirror-process.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: RealUpstream;
let content: SeededContent;
let mirror: MirrorProcess;
const work = mkdtempSync(join(tmpdir(), 'workers-clients-'));

/** The access lines of the mirror's workers: which worker answered what. */
function accessLines(): { worker: number; method: string; path: string; status: number; ns?: string }[] {
  return mirror
    .output()
    .split('\n')
    .filter((l) => l.includes('"msg":"request"'))
    .map((l) => JSON.parse(l) as { worker: number; method: string; path: string; status: number; ns?: string });
}

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
  mirror = await startMirrorProcess(['--workers', '2', '--storage', join(work, 'cache'), '--upstream', upstream.url, '--log-level', 'info']);
}, 60_000);

afterAll(async () => {
  await mirror?.kill('SIGTERM');
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('real clients against two workers', () => {
  let dockerd: Dockerd | undefined;
  let containerd: Containerd | undefined;
  afterAll(async () => {
    await dockerd?.stop();
    await containerd?.stop();
  });

  it('docker pull through registry-mirrors', async () => {
    dockerd = await startDockerd({ registryMirrors: [mirror.url] });
    await dockerd.pull('alpine:3.19');
    const r = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', 'alpine:3.19']);
    expect(JSON.parse(r.stdout)).toEqual([`alpine@${content.alpine.digest}`]);
  }, 180_000);

  it('containerd pull with the printed hosts.toml (every request ?ns=docker.io)', async () => {
    const hostsDir = join(work, 'hosts');
    const printed = await runCli(['client-config', 'containerd', '--url', mirror.url, '--upstream', upstream.url, '-o', hostsDir]);
    expect(printed.code, printed.stderr).toBe(0);
    containerd = await startContainerd();
    await containerd.pull('docker.io/library/debian:bookworm', hostsDir, 'linux/amd64');
    expect((await containerd.ctr(['images', 'ls'])).stdout).toContain(content.debian.digest);
    const debianLines = () => accessLines().filter((l) => l.path.startsWith('/v2/library/debian/'));
    // Access lines reach stdout within a second (buffered logging).
    await waitFor(() => debianLines().length > 3, 5000, 'the access lines of the pull');
    const debian = debianLines();
    expect(debian.every((l) => l.status === 200 && l.ns === 'docker.io')).toBe(true);
  }, 180_000);

  it('both workers answered the clients', async () => {
    const workers = () => new Set(accessLines().filter((l) => l.path.startsWith('/v2/library/')).map((l) => l.worker));
    await waitFor(() => workers().size === 2, 5000, 'both workers\' access lines');
    expect(workers()).toEqual(new Set([1, 2]));
  });
});
