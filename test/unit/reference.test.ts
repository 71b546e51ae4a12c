import { describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/oci/errors.js';
import { isValidRepositoryName, parseDigest, parseImageReference, parseManifestReference } from '../../src/oci/reference.js';

const HEX = 'a'.repeat(64);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof RegistryError ? err.code : 'not-a-registry-error';
  }
  return undefined;
}

describe('repository names', () => {
  it.each(['alpine', 'library/alpine', 'a/b/c', 'my-org/my_app', 'a.b/c__d', 'x-----y', 'ghcr.io/org/app'])('accepts %s', (name) => {
    expect(isValidRepositoryName(name)).toBe(true);
  });
  it.each(['', 'Alpine', '/alpine', 'alpine/', 'a//b', '-a', 'a_', 'a___b', 'a b', '../etc', `${'a'.repeat(256)}`])('refuses %j', (name) => {
    expect(isValidRepositoryName(name)).toBe(false);
  });
  it('allows exactly 255 characters', () => {
    expect(isValidRepositoryName('a'.repeat(255))).toBe(true);
  });
});

describe('digests', () => {
  it('parses sha256 and sha512', () => {
    expect(parseDigest(`sha256:${HEX}`)).toEqual({ algorithm: 'sha256', hex: HEX, value: `sha256:${HEX}` });
    expect(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm).toBe('sha512');
  });
  it.each([`sha256:${'a'.repeat(63)}`, `sha256:${'A'.repeat(64)}`, `md5:${HEX}`, 'sha256:', ':abc', `sha256:${'g'.repeat(64)}`])(
    'refuses %s with DIGEST_INVALID',
    (value) => {
      expect(codeOf(() => parseDigest(value))).toBe('DIGEST_INVALID');
    },
  );
});

describe('manifest references', () => {
  it('tells tags from digests', () => {
    expect(parseManifestReference('3.19')).toEqual({ kind: 'tag', tag: '3.19' });
    expect(parseManifestReference(`sha256:${HEX}`).kind).toBe('digest');
  });
  it('refuses bad tags and digests with 400-class codes', () => {
    expect(codeOf(() => parseManifestReference('.hidden'))).toBe('MANIFEST_INVALID');
    expect(codeOf(() => parseManifestReference('a'.repeat(129)))).toBe('MANIFEST_INVALID');
    expect(codeOf(() => parseManifestReference('sha256:zzz'))).toBe('DIGEST_INVALID');
  });
});

describe('image references as users write them', () => {
  it('fills in latest and leaves the registry out when there is none', () => {
    expect(parseImageReference('alpine')).toEqual({ registry: undefined, repository: 'alpine', tag: 'latest', digest: undefined });
  });
  it('reads registry, repository, tag and digest', () => {
    expect(parseImageReference('docker.io/library/alpine:3.19')).toMatchObject({ registry: 'docker.io', repository: 'library/alpine', tag: '3.19' });
    expect(parseImageReference(`ghcr.io/org/app@sha256:${HEX}`)).toMatchObject({ registry: 'ghcr.io', repository: 'org/app', digest: `sha256:${HEX}`, tag: undefined });
    expect(parseImageReference('localhost:5000/x:1')).toMatchObject({ registry: 'localhost:5000', repository: 'x', tag: '1' });
  });
});
