// UpstreamSelector: which upstream, and which repository there, a client's name means
// (issue 5's routing rules; issue 13: names are validated after canonicalisation).
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config.js';
import { RegistryError } from '../../src/oci/errors.js';
import { UpstreamRegistry } from '../../src/upstream/registry.js';
import { UpstreamSelector } from '../../src/upstream/selector.js';

function selector(): UpstreamSelector {
  const config = buildConfig({
    storage: { path: '/nonexistent' },
    upstreams: {
      'docker.io': { url: 'https://registry-1.docker.io' },
      'ghcr.io': { url: 'https://ghcr.io', alias: 'gh', repositories: ['org/**', 'public/*'] },
      'quay.io': { url: 'https://quay.io' },
    },
  }, {});
  const registries = config.upstreams.map((u) => new UpstreamRegistry(u));
  return new UpstreamSelector(registries, registries.find((u) => u.name === 'docker.io')!);
}

function refusal(fn: () => unknown): { code: string; status: number } | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof RegistryError) return { code: err.code, status: err.status };
    throw err;
  }
  return undefined;
}

describe('UpstreamSelector', () => {
  it('routes by ?ns= (case-insensitive) and remembers the namespace', () => {
    const s = selector();
    expect(s.select('org/app', 'ghcr.io')).toMatchObject({ repository: 'org/app', namespace: 'ghcr.io', upstream: { name: 'ghcr.io' } });
    expect(s.select('org/app', 'GHCR.io').upstream.name).toBe('ghcr.io');
    // Docker Hub's other names.
    expect(s.select('library/alpine', 'registry-1.docker.io').upstream.name).toBe('docker.io');
    expect(s.select('library/alpine', 'index.docker.io').upstream.name).toBe('docker.io');
  });

  it('routes by a host or alias as the first path component, and strips it', () => {
    const s = selector();
    expect(s.select('ghcr.io/org/tool', null)).toMatchObject({ repository: 'org/tool', namespace: undefined, upstream: { name: 'ghcr.io' } });
    expect(s.select('gh/org/tool', null)).toMatchObject({ repository: 'org/tool', upstream: { name: 'ghcr.io' } });
    expect(s.select('quay.io/coreos/etcd', null)).toMatchObject({ repository: 'coreos/etcd', upstream: { name: 'quay.io' } });
    expect(s.select('docker.io/library/busybox', null)).toMatchObject({ repository: 'library/busybox', upstream: { name: 'docker.io' } });
  });

  it('sends other names to the default upstream, with library/ for one-component Docker Hub names', () => {
    const s = selector();
    expect(s.select('team/app', null)).toMatchObject({ repository: 'team/app', upstream: { name: 'docker.io' } });
    expect(s.select('alpine', null)).toMatchObject({ repository: 'library/alpine', upstream: { name: 'docker.io' } });
    expect(s.select('docker.io/redis', null).repository).toBe('library/redis');
    // Only Docker Hub has the library/ rule.
    expect(s.select('etcd', 'quay.io').repository).toBe('etcd');
  });

  it('remembers routes per name and namespace, never one for the other', () => {
    const s = selector();
    expect(s.select('org/app', 'ghcr.io').upstream.name).toBe('ghcr.io');
    expect(s.select('org/app', null).upstream.name).toBe('docker.io');
    expect(s.select('org/app', 'quay.io').upstream.name).toBe('quay.io');
    expect(s.select('org/app', 'ghcr.io').upstream.name).toBe('ghcr.io');
    // An empty ns= names no registry: the default upstream.
    expect(s.select('org/app', '').upstream.name).toBe('docker.io');
    // A refusal is not remembered as a route.
    expect(refusal(() => s.select('public/a/b', 'ghcr.io'))).toEqual({ code: 'DENIED', status: 403 });
    expect(refusal(() => s.select('public/a/b', 'ghcr.io'))).toEqual({ code: 'DENIED', status: 403 });
  });

  it('refuses registries it does not mirror', () => {
    const s = selector();
    expect(refusal(() => s.select('library/alpine', 'evil.example.com'))).toEqual({ code: 'NAME_UNKNOWN', status: 404 });
    expect(refusal(() => s.select('evil.example.com/x', null))).toEqual({ code: 'NAME_UNKNOWN', status: 404 });
    expect(refusal(() => s.select('localhost:5000/x', null))).toEqual({ code: 'NAME_UNKNOWN', status: 404 });
    expect(refusal(() => s.select('localhost/x', null))).toEqual({ code: 'NAME_UNKNOWN', status: 404 });
  });

  it('refuses repositories outside an upstream\'s allow-list', () => {
    const s = selector();
    expect(s.select('org/a/b/c', 'ghcr.io').repository).toBe('org/a/b/c');
    expect(s.select('public/tool', 'ghcr.io').repository).toBe('public/tool');
    expect(refusal(() => s.select('public/a/b', 'ghcr.io'))).toEqual({ code: 'DENIED', status: 403 });
    expect(refusal(() => s.select('gh/private/x', null))).toEqual({ code: 'DENIED', status: 403 });
  });

  it('refuses invalid names', () => {
    const s = selector();
    for (const name of ['Alpine', 'a//b', 'a_', '-x', 'team/App']) expect(refusal(() => s.select(name, null))).toEqual({ code: 'NAME_INVALID', status: 400 });
  });

  it('applies the 255-character rule to the name the upstream sees (after library/)', () => {
    const s = selector();
    // 255 characters as given, 263 once library/ is added.
    expect(refusal(() => s.select('a'.repeat(255), null))).toEqual({ code: 'NAME_INVALID', status: 400 });
    expect(refusal(() => s.select('a'.repeat(248), null))).toEqual({ code: 'NAME_INVALID', status: 400 });
    expect(refusal(() => s.select(`docker.io/${'a'.repeat(250)}`, null))).toEqual({ code: 'NAME_INVALID', status: 400 });
    // 247 + library/ = 255: fine.
    expect(s.select('a'.repeat(247), null).repository).toBe(`library/${'a'.repeat(247)}`);
    // Without the prefix rule a 255-character name is fine; the host prefix does not count.
    expect(s.select('a'.repeat(255), 'quay.io').repository).toHaveLength(255);
    expect(s.select(`quay.io/${'b'.repeat(255)}`, null).repository).toHaveLength(255);
    // Two components: no library/, the limit is the given name's.
    expect(s.select(`team/${'c'.repeat(250)}`, null).repository).toHaveLength(255);
    expect(refusal(() => s.select(`team/${'c'.repeat(251)}`, null))).toEqual({ code: 'NAME_INVALID', status: 400 });
  });
});

describe('the route cache (issue 13)', () => {
  it('keeps a route in use while a client walks through thousands of other names (LRU, not cleared wholesale)', () => {
    const s = selector();
    const hot = s.select('library/alpine', null);
    for (let i = 0; i < 25_000; i++) {
      s.select(`walker/name-${i}`, null);
      if (i % 1000 === 0) s.select('library/alpine', null);
    }
    // The very same object: it was never dropped and worked out again.
    expect(s.select('library/alpine', null)).toBe(hot);
    expect(s['routes'].size).toBeLessThanOrEqual(10_000);
  });
});
