// podman (issue 5): the registries.conf that `mirror client-config podman` prints, used as it
// is. podman tries the mirror first and falls back to docker.io, which is unreachable here:
// a pull that succeeds came through the mirror, and the mirror's access log shows it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { runCli } from '../fixtures/mirror-process.js';
import { startPodman, type Podman } from '../fixtures/podman-cli.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';

let upstream: RealUpstream;
let content: SeededContent;
let mirror: TestMirror;
let podman: Podman;

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
  // The product default: real clients pull with layer prefetch on.
  mirror = await startMirror({ upstreamUrl: upstream.url, document: { prefetch: true } });
  const printed = await runCli(['client-config', 'podman', '--url', mirror.url, '--upstream', upstream.url]);
  expect(printed.code, printed.stderr).toBe(0);
  const conf = printed.stdout.replace(/^# .*\n/, '');
  podman = startPodman(`unqualified-search-registries = ["docker.io"]\n${conf}`);
});
afterAll(async () => {
  await podman?.stop();
  await mirror?.stop();
  await upstream?.stop();
});

describe('podman with the printed registries.conf', () => {
  it('pulls a schema2 image and a multi-arch image through the mirror', async () => {
    for (const s of [content.busybox, content.alpine]) {
      const r = await podman.podman(['pull', '--arch', 'amd64', `docker.io/${s.repository}:${s.tag}`]);
      expect(r.code, r.stderr).toBe(0);
      const inspect = await podman.podman(['image', 'inspect', '--format', '{{json .RepoDigests}}', `docker.io/${s.repository}:${s.tag}`]);
      expect(inspect.stdout).toContain(s.digest);
      const paths = mirror.accessLog().map((l) => `${l.method} ${l.path} ${l.status}`);
      expect(paths.some((p) => p.includes(`/v2/${s.repository}/manifests/`) && p.endsWith(' 200'))).toBe(true);
    }
  });
});
