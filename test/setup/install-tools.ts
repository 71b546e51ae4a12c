// Runs once before any test file: the Debian packages the integration tests drive are
// installed here when missing (a fresh CI machine has none of them), so that test files
// running in parallel never race on apt.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const TOOLS: { binary: string; pkg: string }[] = [
  { binary: '/usr/bin/docker-registry', pkg: 'docker-registry' },
  { binary: '/usr/bin/skopeo', pkg: 'skopeo' },
  { binary: '/usr/sbin/dockerd', pkg: 'docker.io' },
  { binary: '/usr/bin/containerd', pkg: 'containerd' },
  { binary: '/usr/bin/podman', pkg: 'podman' },
  // The load balancer of the replica tests, and a real S3 server (Ceph RADOS Gateway).
  { binary: '/usr/sbin/nginx', pkg: 'nginx-light' },
  { binary: '/usr/bin/ceph-mon', pkg: 'ceph-mon' },
  { binary: '/usr/bin/ceph-osd', pkg: 'ceph-osd' },
  { binary: '/usr/bin/radosgw', pkg: 'radosgw' },
  { binary: '/usr/bin/ceph', pkg: 'ceph-common' },
  { binary: '/usr/bin/openssl', pkg: 'openssl' },
  // The status page is checked in a real headless browser (driven by playwright-core).
  { binary: '/usr/bin/chromium', pkg: 'chromium' },
];

export default function setup(): void {
  const missing = TOOLS.filter((t) => !existsSync(t.binary)).map((t) => t.pkg);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`integration tests need these Debian packages: ${missing.join(' ')} (run as root so they can be installed)`);
  }
  process.stdout.write(`installing ${missing.join(' ')} with apt-get…\n`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
}
