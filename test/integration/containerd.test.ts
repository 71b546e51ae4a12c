// containerd (issue 5): the hosts.toml that `mirror client-config containerd` prints, used
// as it is by Debian's containerd through `ctr images pull --hosts-dir`.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../fixtures/containerd-ctr.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { runCli } from '../fixtures/mirror-process.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';

let upstream: RealUpstream;
let content: SeededContent;
let mirror: TestMirror;
let containerd: Containerd;
const hostsDir = mkdtempSync(join(tmpdir(), 'hosts-'));

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
  // The product default: real clients pull with layer prefetch on.
  mirror = await startMirror({ upstreamUrl: upstream.url, document: { prefetch: true } });
  containerd = await startContainerd();
});
afterAll(async () => {
  await containerd?.stop();
  await mirror?.stop();
  await upstream?.stop();
  rmSync(hostsDir, { recursive: true, force: true });
});

describe('containerd with the printed hosts.toml', () => {
  it('pulls a multi-arch image through the mirror, every request carrying ?ns=docker.io', async () => {
    const printed = await runCli(['client-config', 'containerd', '--url', mirror.url, '--upstream', upstream.url, '-o', hostsDir]);
    expect(printed.code, printed.stderr).toBe(0);
    expect(readFileSync(join(hostsDir, 'docker.io', 'hosts.toml'), 'utf8')).toContain(`[host."${mirror.url}"]`);

    await containerd.pull('docker.io/library/alpine:3.19', hostsDir, 'linux/amd64');
    const listed = await containerd.ctr(['images', 'ls']);
    expect(listed.stdout).toContain(content.alpine.digest);

    const lines = mirror.accessLog().filter((l) => String(l.path).startsWith('/v2/library/alpine/'));
    expect(lines.length).toBeGreaterThan(3);
    for (const l of lines) expect(l.ns).toBe('docker.io');
    expect(lines.every((l) => l.status === 200)).toBe(true);
    // containerd resolves the tag with a HEAD, trusting Docker-Content-Digest and Content-Length.
    expect(lines.some((l) => l.method === 'HEAD' && String(l.path).endsWith('/manifests/3.19'))).toBe(true);
    // Only the chosen platform's layers were fetched.
    for (const layer of content.alpine.content.images[1]!.layers) expect(lines.some((l) => String(l.path).includes(layer.digest))).toBe(false);
  });
});
