// The OCI 1.1 referrers protocol, pure: what a referrer's descriptor says, the tag names the
// referrers tag schema and cosign hang off a digest, combining lists from several sources,
// and the filtered, paged image index the referrers API answers.
// https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-referrers

import type { ParsedManifest } from './manifest.js';
import { stringMap } from './manifest.js';
import { MediaType } from './media-types.js';
import { parseDigest, type Digest } from './reference.js';

/** One referrer, as the referrers API lists it. */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** The longest page the mirror answers (a client's `n` above it is lowered to it). */
export const REFERRERS_PAGE_SIZE = 1000;
/** At most this many referrers of one subject are kept: a list is bounded like any other input. */
export const MAX_REFERRERS = 10_000;

/** The suffixes of cosign's legacy tags beside `sha256-<hex>`: signatures, attestations, SBOMs. */
export const COSIGN_TAG_SUFFIXES = ['.sig', '.att', '.sbom'] as const;

/** `sha256:<hex>` → `sha256-<hex>`: the tag the referrers tag schema keeps a subject's index under. */
export function referrersTagOf(subject: Digest | string): string {
  const digest = typeof subject === 'string' ? parseDigest(subject) : subject;
  return `${digest.algorithm}-${digest.hex}`;
}

/** Is `tag` a referrers tag schema name (`sha256-<hex>`, nothing after it)? */
export function isReferrersTag(tag: string): boolean {
  return /^(sha256-[a-f0-9]{64}|sha512-[a-f0-9]{128})$/.test(tag);
}

/** cosign's legacy tags for a subject: `sha256-<hex>.sig`, `.att`, `.sbom`. */
export function cosignTagsOf(subject: Digest | string): string[] {
  const base = referrersTagOf(subject);
  return COSIGN_TAG_SUFFIXES.map((suffix) => `${base}${suffix}`);
}

/** What a manifest records as a referrer: its subject, and the artifactType and annotations its descriptor carries. */
export interface ReferrerFacts {
  subject: string;
  artifactType: string | undefined;
  annotations: Record<string, string> | undefined;
}

/**
 * The referrer facts of a parsed manifest, or undefined when it has no (valid) subject. As
 * the spec says: an image manifest without `artifactType` is listed with its config's media
 * type; an index without one is listed without.
 */
export function referrerFactsOf(parsed: ParsedManifest): ReferrerFacts | undefined {
  if (!parsed.subject || !isDigest(parsed.subject.digest)) return undefined;
  const artifactType = parsed.artifactType || (parsed.isIndex ? undefined : parsed.config?.mediaType || undefined);
  return { subject: parsed.subject.digest, artifactType, annotations: parsed.annotations };
}

function isDigest(value: string): boolean {
  try {
    parseDigest(value);
    return true;
  } catch {
    return false;
  }
}

/** One entry of an index as a referrer descriptor, or undefined when it is not a usable descriptor. */
export function referrerDescriptor(value: unknown): ReferrerDescriptor | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.mediaType !== 'string' || v.mediaType === '' || typeof v.digest !== 'string' || !isDigest(v.digest)) return undefined;
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) return undefined;
  const d: ReferrerDescriptor = { mediaType: v.mediaType, digest: v.digest, size: v.size };
  if (typeof v.artifactType === 'string' && v.artifactType !== '') d.artifactType = v.artifactType;
  const annotations = stringMap(v.annotations);
  if (annotations) d.annotations = annotations;
  return d;
}

/**
 * The descriptors of an image index's `manifests` (an upstream's referrers answer, or the
 * index under a `sha256-<hex>` tag), unusable entries left out, at most MAX_REFERRERS.
 * Throws when the bytes are not an image index at all.
 */
export function descriptorsOfIndex(bytes: Uint8Array): ReferrerDescriptor[] {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    throw new Error('not JSON');
  }
  if (!doc || typeof doc !== 'object' || !Array.isArray((doc as { manifests?: unknown }).manifests)) throw new Error('not an image index');
  const out: ReferrerDescriptor[] = [];
  for (const entry of (doc as { manifests: unknown[] }).manifests) {
    const d = referrerDescriptor(entry);
    if (d) out.push(d);
    if (out.length >= MAX_REFERRERS) break;
  }
  return out;
}

/** The lists combined: one descriptor per digest (the earliest list's wins), in digest order, at most MAX_REFERRERS. */
export function mergeReferrers(...lists: ReferrerDescriptor[][]): ReferrerDescriptor[] {
  const byDigest = new Map<string, ReferrerDescriptor>();
  for (const list of lists) for (const d of list) if (!byDigest.has(d.digest)) byDigest.set(d.digest, d);
  const merged = [...byDigest.values()].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
  return merged.length > MAX_REFERRERS ? merged.slice(0, MAX_REFERRERS) : merged;
}

/** What a client asked of a referrers list. */
export interface ReferrersQuery {
  /** Keep only these artifact types (none: no filter). */
  artifactTypes: string[];
  /** Page size (capped at REFERRERS_PAGE_SIZE). */
  n: number | undefined;
  /** Continue after this digest (the mirror's own page cursor). */
  last: string | undefined;
}

export interface ReferrersPage {
  manifests: ReferrerDescriptor[];
  /** A filter was applied: the answer says `OCI-Filters-Applied: artifactType`. */
  filtered: boolean;
  /** The query (n, last) of the next page, when there is one. */
  next: URLSearchParams | undefined;
}

/** Filter and page a list in digest order (as mergeReferrers leaves it). */
export function referrersPage(list: ReferrerDescriptor[], query: ReferrersQuery): ReferrersPage {
  const filtered = query.artifactTypes.length > 0;
  let chosen = filtered ? list.filter((d) => d.artifactType !== undefined && query.artifactTypes.includes(d.artifactType)) : list;
  const last = query.last;
  if (last !== undefined) chosen = chosen.filter((d) => d.digest > last);
  const size = Math.min(query.n ?? REFERRERS_PAGE_SIZE, REFERRERS_PAGE_SIZE);
  if (chosen.length <= size) return { manifests: chosen, filtered, next: undefined };
  if (size === 0) return { manifests: [], filtered, next: undefined };
  const manifests = chosen.slice(0, size);
  return { manifests, filtered, next: new URLSearchParams({ n: String(size), last: manifests.at(-1)!.digest }) };
}

/** The image index a referrers answer is (also what the tag schema keeps under `sha256-<hex>`). */
export function referrersIndex(manifests: ReferrerDescriptor[]): string {
  return JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests });
}
