// `mirror prewarm`: fill the cache through the same core a client's pull uses, minus the socket.

import type { Mirror } from '../mirror.js';
import type { Platform } from '../oci/manifest.js';
import { parseDigest } from '../oci/reference.js';
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
}

export async function prewarmOne(mirror: Mirror, input: string, options: { platforms: Platform[] | undefined; pin: boolean }, progress?: PrewarmProgress): Promise<PrewarmResult> {
  const started = performance.now();
  let blobs = 0;
  let bytes = 0;
  let fetchedBytes = 0;
  let canonical = input;
  try {
    const resolved = await resolveImage(mirror, input, options.platforms);
    canonical = resolved.canonical;
    const unique = new Map<string, number>();
    for (const image of resolved.images) for (const b of image.blobs) unique.set(b.digest, b.size);
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
    if (options.pin && resolved.tag) mirror.index.pin(resolved.route.upstream.name, resolved.route.repository, resolved.tag);
    const result: PrewarmResult = { image: input, canonical, ok: true, blobs, bytes, fetchedBytes, ms: performance.now() - started };
    progress?.onDone(input, result);
    return result;
  } catch (err) {
    const result: PrewarmResult = { image: input, canonical, ok: false, error: (err as Error).message, blobs, bytes, fetchedBytes, ms: performance.now() - started };
    progress?.onDone(input, result);
    return result;
  }
}

export async function prewarm(
  mirror: Mirror,
  images: string[],
  options: { platforms: Platform[] | undefined; pin: boolean; concurrency: number },
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
