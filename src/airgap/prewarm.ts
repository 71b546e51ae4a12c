// `mirror prewarm`: fill the cache through the same core a client's pull uses, minus the socket;
// with referrers (the default), each image's supply chain too (airgap/referrers.ts).

import type { Mirror } from '../mirror.js';
import type { Platform } from '../oci/manifest.js';
import { parseDigest } from '../oci/reference.js';
import { collectSupplyChain, referrerCount, subjectsOf, type SupplyChain } from './referrers.js';
import { resolveImage } from './resolve.js';

export interface PrewarmProgress {
  /** An image's total became known. */
  onStart(image: string, totalBytes: number): void;
  onBytes(image: string, bytes: number): void;
  onDone(image: string, result: PrewarmResult): void;
}

export interface PrewarmResult {
  image: string;
  canonical: string;
  ok: boolean;
  error?: string;
  blobs: number;
  bytes: number;
  /** Bytes that had to come from the upstream. */
  fetchedBytes: number;
  ms: number;
  /** Referrers (signatures, SBOMs, attestations) and cosign signatures carried with the image. */
  referrers: number;
  /** Referrers the upstream lists but does not have: left out. */
  dangling: string[];
  /** The supply chain fetched with the image (with referrers), for export. */
  chain?: SupplyChain | undefined;
}

export interface PrewarmOptions {
  platforms: Platform[] | undefined;
  pin: boolean;
  /** Also fetch every referrer of the image, recursively, and cosign's legacy tags. */
  referrers: boolean;
}

export async function prewarmOne(mirror: Mirror, input: string, options: PrewarmOptions, progress?: PrewarmProgress): Promise<PrewarmResult> {
  const started = performance.now();
  let blobs = 0;
  let bytes = 0;
  let fetchedBytes = 0;
  let canonical = input;
  let chain: SupplyChain | undefined;
  const report = (ok: boolean, error?: string): PrewarmResult => ({
    image: input, canonical, ok, ...(error === undefined ? {} : { error }), blobs, bytes, fetchedBytes, ms: performance.now() - started,
    referrers: chain ? referrerCount(chain) : 0, dangling: chain?.dangling ?? [], chain,
  });
  try {
    const resolved = await resolveImage(mirror, input, options.platforms);
    canonical = resolved.canonical;
    const unique = new Map<string, number>();
    for (const image of resolved.images) for (const b of image.blobs) unique.set(b.digest, b.size);
    if (options.referrers) {
      chain = await collectSupplyChain(mirror, resolved.route, subjectsOf(resolved));
      for (const [digest, size] of chain.blobs) unique.set(digest, size);
    }
    const total = [...unique.values()].reduce((a, b) => a + Math.max(0, b), 0);
    progress?.onStart(input, total);
    for (const [digest] of unique) {
      const blob = await mirror.getBlob(resolved.route, parseDigest(digest));
      blobs++;
      if (blob.outcome === 'hit' || !blob.open) {
        bytes += blob.size ?? 0;
        progress?.onBytes(input, blob.size ?? 0);
        continue;
      }
      // Drain the download: the stream ends once the digest is verified; the commit follows.
      for await (const chunk of blob.open(0, undefined) as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        fetchedBytes += chunk.length;
        progress?.onBytes(input, chunk.length);
      }
      // Export reads the store right after: wait for the blob to be there.
      await blob.stored;
    }
    if (options.pin) {
      const { upstream, repository } = resolved.route;
      if (resolved.tag) mirror.index.pin(upstream.name, repository, resolved.tag);
      // cosign's tags and the upstream's sha256-<hex> indexes are tags too: kept like the image.
      for (const t of chain?.tags ?? []) if (!t.synthesized) mirror.index.pin(upstream.name, repository, t.tag);
    }
    const result = report(true);
    progress?.onDone(input, result);
    return result;
  } catch (err) {
    const result = report(false, (err as Error).message);
    progress?.onDone(input, result);
    return result;
  }
}

export async function prewarm(
  mirror: Mirror,
  images: string[],
  options: PrewarmOptions & { concurrency: number },
  progress?: PrewarmProgress,
): Promise<PrewarmResult[]> {
  const results: PrewarmResult[] = new Array(images.length);
  let next = 0;
  const worker = async () => {
    while (next < images.length) {
      const i = next++;
      results[i] = await prewarmOne(mirror, images[i]!, options, progress);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency, images.length)) }, worker));
  return results;
}
