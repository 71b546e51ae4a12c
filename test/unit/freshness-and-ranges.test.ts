import { describe, expect, it } from 'vitest';
import { expiryFrom, tagFreshness } from '../../src/cache/freshness.js';
import { ManualClock } from '../../src/clock.js';
import { parseRange } from '../../src/http/range.js';
import { matchApiPath } from '../../src/server/api-paths.js';
import { negotiateAccept, MANIFEST_MEDIA_TYPES, MediaType } from '../../src/oci/media-types.js';
import { parseManifest, childDigests } from '../../src/oci/manifest.js';
import { parseDuration, parseSize } from '../../src/units.js';

describe('tag freshness', () => {
  it('is fresh inside the TTL and stale from its end', () => {
    const clock = new ManualClock();
    const checkedAt = clock.now();
    const tag = { checkedAt, expiresAt: expiryFrom(checkedAt, 600_000) };
    expect(tagFreshness(tag, clock.now(), false)).toBe('fresh');
    clock.advance(599_999);
    expect(tagFreshness(tag, clock.now(), false)).toBe('fresh');
    clock.advance(1);
    expect(tagFreshness(tag, clock.now(), false)).toBe('stale');
  });
  it('a TTL of 0 means every request revalidates', () => {
    const now = 5_000;
    expect(tagFreshness({ checkedAt: now, expiresAt: expiryFrom(now, 0) }, now, false)).toBe('stale');
  });
  it('offline mode serves tags whatever their age', () => {
    expect(tagFreshness({ checkedAt: 0, expiresAt: 1 }, 10 ** 12, true)).toBe('fresh');
  });
});

describe('Range', () => {
  it.each([
    ['bytes=0-9', { start: 0, end: 9 }],
    ['bytes=10-', { start: 10, end: 99 }],
    ['bytes=-10', { start: 90, end: 99 }],
    ['bytes=90-1000', { start: 90, end: 99 }],
    ['bytes=-1000', { start: 0, end: 99 }],
  ])('%s of 100 bytes', (header, expected) => {
    expect(parseRange(header, 100)).toEqual(expected);
  });
  it('is unsatisfiable past the end', () => {
    expect(parseRange('bytes=100-', 100)).toBe('unsatisfiable');
    expect(parseRange('bytes=-0', 100)).toBe('unsatisfiable');
  });
  it('ignores what it may ignore', () => {
    expect(parseRange(undefined, 100)).toBeUndefined();
    expect(parseRange('bytes=0-1,5-6', 100)).toBeUndefined();
    expect(parseRange('items=0-1', 100)).toBeUndefined();
    expect(parseRange('bytes=9-3', 100)).toBeUndefined();
  });
});

describe('API routes', () => {
  it('splits names with slashes from references', () => {
    expect(matchApiPath('/v2/')).toEqual({ kind: 'base' });
    expect(matchApiPath('/v2/library/alpine/manifests/3.19')).toEqual({ kind: 'manifest', name: 'library/alpine', reference: '3.19' });
    expect(matchApiPath('/v2/a/b/c/blobs/sha256%3Aabc')).toEqual({ kind: 'blob', name: 'a/b/c', digest: 'sha256:abc' });
    expect(matchApiPath('/v2/x/blobs/uploads/')).toEqual({ kind: 'upload', name: 'x' });
    expect(matchApiPath('/v2/x/blobs/uploads/123')).toEqual({ kind: 'upload', name: 'x' });
    expect(matchApiPath('/v2/x/tags/list')).toEqual({ kind: 'tags', name: 'x' });
    expect(matchApiPath('/v3/x').kind).toBe('unknown');
  });
});

describe('Accept negotiation', () => {
  it('keys everything-accepting clients together', () => {
    expect(negotiateAccept(undefined, false).key).toBe('all');
    expect(negotiateAccept(MANIFEST_MEDIA_TYPES.join(', '), false)).toEqual({ key: 'all', types: [...MANIFEST_MEDIA_TYPES] });
    expect(negotiateAccept('*/*', false).key).toBe('all');
  });
  it('keys a narrower client separately and asks upstream for what it takes', () => {
    const n = negotiateAccept(`${MediaType.DockerManifest}; q=0.9, ${MediaType.DockerManifestList}`, false);
    expect(n.types.sort()).toEqual([MediaType.DockerManifestList, MediaType.DockerManifest].sort());
    expect(n.key).not.toBe('all');
  });
});

describe('manifest parsing', () => {
  it('finds an index\'s platform manifests and an image\'s config and layers', () => {
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: [{ mediaType: MediaType.OciManifest, digest: 'sha256:aa', size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }],
    }));
    const parsed = parseManifest(index);
    expect(parsed.isIndex).toBe(true);
    expect(parsed.manifests[0]!.platform).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    const image = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { digest: 'sha256:c', size: 2 }, layers: [{ digest: 'sha256:l', size: 3 }] }));
    const img = parseManifest(image, `${MediaType.DockerManifest}; charset=utf-8`);
    expect(img.mediaType).toBe(MediaType.DockerManifest);
    expect(childDigests(img)).toEqual(['sha256:c', 'sha256:l']);
  });
  it('refuses what is not a manifest', () => {
    expect(() => parseManifest(Buffer.from('not json'))).toThrow(/JSON/);
    expect(() => parseManifest(Buffer.from('[]'))).toThrow();
    expect(() => parseManifest(Buffer.from('{"hello":1}'))).toThrow(/media type/);
  });
});

describe('durations and sizes', () => {
  it.each([['10m', 600_000], ['30s', 30_000], ['1h30m', 5_400_000], ['500ms', 500], ['0', 0], [15, 15_000]] as const)('%s', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });
  it('refuses nonsense', () => {
    expect(parseDuration('5x')).toBeUndefined();
    expect(parseDuration('m')).toBeUndefined();
    expect(parseDuration('')).toBeUndefined();
    expect(parseSize('50GiB')).toBe(50 * 1024 ** 3);
    expect(parseSize('512MB')).toBe(512e6);
    expect(parseSize('lots')).toBeUndefined();
  });
});
