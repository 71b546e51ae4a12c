// The referrers protocol's pure parts (src/oci/referrers.ts), the Link parser they share with
// tags/list, and the index's referrer rows (migration 3, repository scope, eviction, forget).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheIndex } from '../../src/cache/index.js';
import { nextLinkTarget } from '../../src/http/headers.js';
import { parseManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/media-types.js';
import {
  cosignTagsOf, descriptorsOfIndex, MAX_REFERRERS, mergeReferrers, referrerFactsOf, referrersIndex, referrersPage, referrersTagOf, REFERRERS_PAGE_SIZE, type ReferrerDescriptor,
} from '../../src/oci/referrers.js';

const hex = (c: string) => c.repeat(64);
const d = (c: string, artifactType?: string): ReferrerDescriptor => ({ mediaType: MediaType.OciManifest, digest: `sha256:${hex(c)}`, size: 100, ...(artifactType ? { artifactType } : {}) });

describe('tag names hung off a digest', () => {
  it('the referrers tag schema and cosign tags', () => {
    expect(referrersTagOf(`sha256:${hex('a')}`)).toBe(`sha256-${hex('a')}`);
    expect(referrersTagOf(`sha512:${'b'.repeat(128)}`)).toBe(`sha512-${'b'.repeat(128)}`);
    expect(cosignTagsOf(`sha256:${hex('a')}`)).toEqual(['.sig', '.att', '.sbom'].map((s) => `sha256-${hex('a')}${s}`));
    expect(() => referrersTagOf('sha256:abc')).toThrow(/digest/);
  });
});

describe('what a manifest says as a referrer', () => {
  const subject = { mediaType: MediaType.OciManifest, digest: `sha256:${hex('5')}`, size: 10 };
  const manifest = (extra: object) =>
    parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: { mediaType: 'application/vnd.example.config', digest: `sha256:${hex('c')}`, size: 2 }, layers: [], ...extra })));

  it('its subject, artifactType and annotations', () => {
    expect(referrerFactsOf(manifest({ subject, artifactType: 'application/spdx+json', annotations: { a: '1', n: 2 } }))).toEqual({
      subject: subject.digest, artifactType: 'application/spdx+json', annotations: { a: '1' },
    });
  });

  it("an image manifest without artifactType is listed with its config's media type; an index without one, without", () => {
    expect(referrerFactsOf(manifest({ subject }))?.artifactType).toBe('application/vnd.example.config');
    const index = parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [], subject })));
    expect(referrerFactsOf(index)).toEqual({ subject: subject.digest, artifactType: undefined, annotations: undefined });
  });

  it('no subject, or a subject with a bad digest: not a referrer', () => {
    expect(referrerFactsOf(manifest({}))).toBeUndefined();
    expect(referrerFactsOf(manifest({ subject: { ...subject, digest: 'sha256:nope' } }))).toBeUndefined();
  });
});

describe('reading an index of referrers', () => {
  it('keeps usable descriptors with their artifactType and string annotations, drops the rest', () => {
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          { ...d('1', 'application/x'), annotations: { k: 'v', bad: 1 }, platform: { os: 'linux' } },
          { mediaType: MediaType.OciManifest, digest: 'sha256:short', size: 1 },
          { mediaType: MediaType.OciManifest, digest: `sha256:${hex('2')}`, size: -1 },
          { digest: `sha256:${hex('3')}`, size: 1 },
          'nonsense',
          d('4'),
        ],
      }),
    );
    expect(descriptorsOfIndex(body)).toEqual([{ ...d('1', 'application/x'), annotations: { k: 'v' } }, d('4')]);
  });

  it('refuses what is not an image index', () => {
    expect(() => descriptorsOfIndex(Buffer.from('not json'))).toThrow(/JSON/);
    expect(() => descriptorsOfIndex(Buffer.from('{"schemaVersion":2}'))).toThrow(/index/);
  });

  it('keeps at most MAX_REFERRERS', () => {
    const many = Array.from({ length: MAX_REFERRERS + 5 }, (_, i) => ({ mediaType: 'm', digest: `sha256:${i.toString(16).padStart(64, '0')}`, size: 1 }));
    expect(descriptorsOfIndex(Buffer.from(JSON.stringify({ manifests: many })))).toHaveLength(MAX_REFERRERS);
  });
});

describe('combining, filtering and paging', () => {
  it('one descriptor per digest, the first source winning, in digest order', () => {
    const fromUpstream = [d('b', 'application/sig'), d('a', 'application/sbom')];
    const held = [{ ...d('b'), annotations: { held: 'yes' } }, d('c')];
    expect(mergeReferrers(fromUpstream, held)).toEqual([d('a', 'application/sbom'), d('b', 'application/sig'), d('c')]);
  });

  it('filters by artifactType, saying so even when nothing matches', () => {
    const list = mergeReferrers([d('a', 'application/sig'), d('b', 'application/sbom'), d('c')]);
    expect(referrersPage(list, { artifactTypes: [], n: undefined, last: undefined })).toEqual({ manifests: list, filtered: false, next: undefined });
    expect(referrersPage(list, { artifactTypes: ['application/sbom'], n: undefined, last: undefined })).toMatchObject({ manifests: [d('b', 'application/sbom')], filtered: true });
    expect(referrersPage(list, { artifactTypes: ['application/none'], n: undefined, last: undefined })).toMatchObject({ manifests: [], filtered: true, next: undefined });
  });

  it('pages by n after last, every descriptor exactly once, and caps n at the page size', () => {
    const list = mergeReferrers('0123456789abcdef'.split('').map((c) => d(c)));
    const seen: string[] = [];
    let last: string | undefined;
    for (;;) {
      const page = referrersPage(list, { artifactTypes: [], n: 5, last });
      seen.push(...page.manifests.map((m) => m.digest));
      if (!page.next) break;
      expect(page.next.get('n')).toBe('5');
      last = page.next.get('last')!;
    }
    expect(seen).toEqual(list.map((m) => m.digest));
    expect(referrersPage(list, { artifactTypes: [], n: 0, last: undefined })).toMatchObject({ manifests: [], next: undefined });
    const long = Array.from({ length: REFERRERS_PAGE_SIZE + 1 }, (_, i) => ({ mediaType: 'm', digest: `sha256:${i.toString(16).padStart(64, '0')}`, size: 1 }));
    const capped = referrersPage(long, { artifactTypes: [], n: 5000, last: undefined });
    expect(capped.manifests).toHaveLength(REFERRERS_PAGE_SIZE);
    expect(capped.next?.get('n')).toBe(String(REFERRERS_PAGE_SIZE));
  });

  it('answers as an OCI image index', () => {
    expect(JSON.parse(referrersIndex([d('a')]))).toEqual({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [d('a')] });
  });
});

describe('the next page of a Link header', () => {
  it('finds rel="next" among several links, and nothing else', () => {
    expect(nextLinkTarget('</v2/a/referrers/x?page=2>; rel="next"')).toBe('/v2/a/referrers/x?page=2');
    expect(nextLinkTarget('<https://r.example/prev>; rel="prev", <https://r.example/v2/a/tags/list?n=1&last=b>; rel=next')).toBe('https://r.example/v2/a/tags/list?n=1&last=b');
    expect(nextLinkTarget('</v2/x>; rel="prev"')).toBeUndefined();
    expect(nextLinkTarget(undefined)).toBeUndefined();
  });
});

describe("the index's referrer rows", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  const open = () => {
    const dir = mkdtempSync(join(tmpdir(), 'referrers-index-'));
    dirs.push(dir);
    return { dir, index: new CacheIndex(join(dir, 'index.db')) };
  };
  const image = `sha256:${hex('1')}`;
  const signature = `sha256:${hex('2')}`;
  const payload = `sha256:${hex('3')}`;
  const repo = { upstream: 'docker.io', repo: 'team/app' };

  it('records a stored referrer, lists it only in a repository linked to it, and forgets it with its manifest', () => {
    const { index } = open();
    index.putManifest({ digest: image, mediaType: MediaType.OciManifest, size: 10, children: [] }, repo, 1);
    index.putManifest({ digest: signature, mediaType: MediaType.OciManifest, size: 20, children: [{ digest: payload, size: undefined }], referrer: { subject: image, artifactType: 'application/sig', annotations: { a: 'b' } } }, repo, 1);
    expect(index.referrersOf('docker.io', 'team/app', image, 10)).toEqual([{ digest: signature, mediaType: MediaType.OciManifest, size: 20, artifactType: 'application/sig', annotations: { a: 'b' } }]);
    expect(index.referrersOf('docker.io', 'team/other', image, 10)).toEqual([]);
    expect(index.referrersOf('docker.io', 'team/app', signature, 10)).toEqual([]);
    index.forget(signature);
    expect(index.referrersOf('docker.io', 'team/app', image, 10)).toEqual([]);
    index.close();
  });

  it('keeps the referrers of a pinned image (and what they reference) from eviction', () => {
    const { index } = open();
    index.putManifest({ digest: image, mediaType: MediaType.OciManifest, size: 10, children: [] }, repo, 1);
    index.putManifest({ digest: signature, mediaType: MediaType.OciManifest, size: 20, children: [{ digest: payload, size: undefined }], referrer: { subject: image, artifactType: undefined, annotations: undefined } }, repo, 1);
    index.putTag({ ...repo, tag: 'v1', accept: 'all', digest: image, mediaType: MediaType.OciManifest, fetchedAt: 1, checkedAt: 1, expiresAt: 2 });
    expect(index.protectedDigests(100).has(signature)).toBe(false);
    index.pin('docker.io', 'team/app', 'v1');
    const kept = index.protectedDigests(100);
    expect([image, signature, payload].every((x) => kept.has(x))).toBe(true);
    index.close();
  });

  it('migrates an index from before referrers (schema 2), keeping what it holds', () => {
    const { dir, index } = open();
    index.putManifest({ digest: image, mediaType: MediaType.OciManifest, size: 10, children: [] }, repo, 1);
    index.close();
    const db = new Database(join(dir, 'index.db'));
    db.exec('DROP TABLE referrers; DROP TABLE referrer_lists; ALTER TABLE refs DROP COLUMN size; DROP TABLE saved_daily;');
    db.pragma('user_version = 2');
    db.close();
    const reopened = new CacheIndex(join(dir, 'index.db'));
    expect(reopened.db.pragma('user_version', { simple: true })).toBe(5);
    expect(reopened.getManifest(image)?.size).toBe(10);
    reopened.putReferrerList('docker.io', 'team/app', image, { descriptors: '[]', checkedAt: 1, expiresAt: 2 });
    expect(reopened.getReferrerList('docker.io', 'team/app', image)).toEqual({ descriptors: '[]', checkedAt: 1, expiresAt: 2 });
    reopened.close();
  });
});
