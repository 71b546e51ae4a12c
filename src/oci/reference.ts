// Repository names, tags and digests, validated exactly as the distribution spec says.
// https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests

import { RegistryError } from './errors.js';

const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const MAX_NAME_LENGTH = 255;

/** Digest algorithms we can verify, with the exact encoded length each requires. */
export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** `algorithm:hex` */
  value: string;
}

export function isValidRepositoryName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function looksLikeDigest(reference: string): boolean {
  return reference.includes(':');
}

export function parseDigest(value: string): Digest {
  if (!DIGEST_RE.test(value)) {
    throw new RegistryError('DIGEST_INVALID', 'invalid digest', { detail: { digest: value } });
  }
  const colon = value.indexOf(':');
  const algorithm = value.slice(0, colon);
  const hex = value.slice(colon + 1);
  if (!(algorithm in DIGEST_ALGORITHMS)) {
    throw new RegistryError('DIGEST_INVALID', `unsupported digest algorithm ${algorithm}`, { detail: { digest: value } });
  }
  const length = DIGEST_ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) {
    throw new RegistryError('DIGEST_INVALID', `invalid ${algorithm} digest`, { detail: { digest: value } });
  }
  return { algorithm: algorithm as DigestAlgorithm, hex, value };
}

/** `name` or a NAME_INVALID error; `as` says how the name came about (e.g. after `library/`). */
export function validateRepositoryName(name: string, as?: string): string {
  if (!isValidRepositoryName(name)) {
    const message = name.length > MAX_NAME_LENGTH ? `repository name longer than ${MAX_NAME_LENGTH} characters` : 'invalid repository name';
    throw new RegistryError('NAME_INVALID', as ? `${message} (${as})` : message, { detail: { name, length: name.length } });
  }
  return name;
}

export type ManifestReference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

/** A manifest reference from a URL path: a tag or a digest. */
export function parseManifestReference(reference: string): ManifestReference {
  if (looksLikeDigest(reference)) return { kind: 'digest', digest: parseDigest(reference) };
  if (!isValidTag(reference)) {
    throw new RegistryError('MANIFEST_INVALID', 'invalid tag', { detail: { tag: reference } });
  }
  return { kind: 'tag', tag: reference };
}

/**
 * An image reference as users write it: `alpine`, `alpine:3.19`,
 * `docker.io/library/alpine:3.19`, `ghcr.io/org/app@sha256:…`, `localhost:5000/x:1`.
 * The registry part is present only when the first component looks like a host.
 */
export interface ImageReference {
  registry: string | undefined;
  repository: string;
  tag: string | undefined;
  digest: string | undefined;
}

export function parseImageReference(input: string): ImageReference {
  let rest = input.trim();
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = parseDigest(rest.slice(at + 1)).value;
    rest = rest.slice(0, at);
  }
  let registry: string | undefined;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw new RegistryError('MANIFEST_INVALID', `invalid tag in ${input}`, { detail: { reference: input } });
  }
  validateRepositoryName(rest);
  if (!tag && !digest) tag = 'latest';
  return { registry, repository: rest, tag, digest };
}

/**
 * A glob over repository names (or tags) as a RegExp: `*` within one path component, `**`
 * across components, `?` one character other than `/`; everything else literal.
 */
export function globToRegExp(glob: string): RegExp {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        out += '.*';
        i++;
      } else out += '[^/]*';
    } else if (c === '?') out += '[^/]';
    else out += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}
