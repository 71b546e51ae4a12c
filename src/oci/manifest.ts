// What a manifest or index points at: used to record which repository may serve which
// content (links), for gc references, and for pre-warming a chosen platform.

import { RegistryError } from './errors.js';
import { INDEX_MEDIA_TYPES, isManifestMediaType, MediaType } from './media-types.js';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
}

export interface ParsedManifest {
  mediaType: string;
  isIndex: boolean;
  /** Platform manifests of an index. */
  manifests: Descriptor[];
  /** Config blob of an image manifest. */
  config: Descriptor | undefined;
  layers: Descriptor[];
  /** OCI 1.1: the manifest this one refers to (a signature's, an SBOM's image). */
  subject: Descriptor | undefined;
  /** OCI 1.1: what kind of artifact this is, when the manifest says. */
  artifactType: string | undefined;
  /** The manifest's own annotations (string values only). */
  annotations: Record<string, string> | undefined;
}

/** Manifests above this size are refused (distribution's own limit is 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

function descriptor(value: unknown): Descriptor | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.digest !== 'string') return undefined;
  const d: Descriptor = {
    mediaType: typeof v.mediaType === 'string' ? v.mediaType : '',
    digest: v.digest,
    size: typeof v.size === 'number' ? v.size : -1,
  };
  const p = v.platform as Record<string, unknown> | undefined;
  if (p && typeof p.os === 'string' && typeof p.architecture === 'string') {
    d.platform = { os: p.os, architecture: p.architecture };
    if (typeof p.variant === 'string') d.platform.variant = p.variant;
  }
  return d;
}

/**
 * Parse manifest bytes. `contentType` (the upstream's Content-Type) wins over the
 * document's own mediaType field, which is optional in OCI manifests.
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): ParsedManifest {
  let doc: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    doc = parsed as Record<string, unknown>;
  } catch (err) {
    throw new RegistryError('MANIFEST_INVALID', 'manifest is not a JSON object', { cause: err });
  }
  const declared = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  const fromHeader = contentType?.split(';')[0]?.trim().toLowerCase();
  let mediaType =
    fromHeader && isManifestMediaType(fromHeader) ? fromHeader : declared && isManifestMediaType(declared) ? declared : undefined;
  if (!mediaType) {
    // OCI manifests may omit mediaType: infer from shape.
    if (Array.isArray(doc.manifests)) mediaType = MediaType.OciIndex;
    else if (doc.config !== undefined) mediaType = MediaType.OciManifest;
    else if (doc.schemaVersion === 1) mediaType = MediaType.DockerManifestV1Signed;
    else throw new RegistryError('MANIFEST_INVALID', 'unknown manifest media type', { detail: { mediaType: declared ?? fromHeader } });
  }
  const isIndex = INDEX_MEDIA_TYPES.has(mediaType);
  const manifests = isIndex && Array.isArray(doc.manifests) ? doc.manifests.map(descriptor).filter((d): d is Descriptor => !!d) : [];
  const config = isIndex ? undefined : descriptor(doc.config);
  let layers: Descriptor[] = [];
  if (Array.isArray(doc.layers)) layers = doc.layers.map(descriptor).filter((d): d is Descriptor => !!d);
  else if (Array.isArray(doc.fsLayers)) {
    // schema1: blobSum entries
    layers = doc.fsLayers
      .map((l) => (l && typeof l === 'object' && typeof (l as { blobSum?: unknown }).blobSum === 'string'
        ? { mediaType: '', digest: (l as { blobSum: string }).blobSum, size: -1 }
        : undefined))
      .filter((d): d is Descriptor => !!d);
  }
  const subject = descriptor(doc.subject);
  const artifactType = typeof doc.artifactType === 'string' ? doc.artifactType : undefined;
  return { mediaType, isIndex, manifests, config, layers, subject, artifactType, annotations: stringMap(doc.annotations) };
}

/** An annotations object, keeping only string values; undefined when absent or empty. */
export function stringMap(value: unknown): Record<string, string> | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) if (typeof v === 'string') out[k] = v;
  return Object.keys(out).length > 0 ? out : undefined;
}

/** Every descriptor a manifest references directly, with the size it declares (undefined when none). */
export function childDescriptors(m: ParsedManifest): { digest: string; size: number | undefined }[] {
  const out = new Map<string, number | undefined>();
  for (const d of [...m.manifests, ...(m.config ? [m.config] : []), ...m.layers]) {
    const size = Number.isSafeInteger(d.size) && d.size >= 0 ? d.size : undefined;
    const seen = out.get(d.digest);
    out.set(d.digest, seen === undefined || size === undefined ? (size ?? seen) : Math.max(seen, size));
  }
  return [...out].map(([digest, size]) => ({ digest, size }));
}

/** Every digest a manifest references directly. */
export function childDigests(m: ParsedManifest): string[] {
  const out = new Set<string>();
  for (const d of m.manifests) out.add(d.digest);
  if (m.config) out.add(m.config.digest);
  for (const d of m.layers) out.add(d.digest);
  return [...out];
}

export function platformMatches(p: Platform | undefined, want: Platform): boolean {
  if (!p) return false;
  return p.os === want.os && p.architecture === want.architecture && (!want.variant || p.variant === want.variant);
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

export function parsePlatform(text: string): Platform {
  const [os, architecture, variant] = text.split('/');
  if (!os || !architecture) throw new Error(`invalid platform "${text}": expected os/arch[/variant]`);
  return variant ? { os, architecture, variant } : { os, architecture };
}
