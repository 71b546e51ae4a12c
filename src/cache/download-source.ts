// The contract between a blob download (downloads.ts) and where its bytes come from: the
// upstream (upstream/blob-source.ts) or the replica that owns the digest (cluster/peer-source.ts).

import type { Readable } from 'node:stream';

/** An upstream's answer to a ranged GET, unjudged: the download decides whether to trust it. */
export interface RangeAnswer {
  status: number;
  body: Readable;
  range: { start: number; end: number; total: number } | undefined;
  etag: string | undefined;
}

/** Where the bytes come from: the upstream body from `offset` on. */
export interface DownloadSource {
  /**
   * Open the body at `offset` (0 = the whole blob). Resolves with the stream and the
   * blob's total size when the upstream said it; rejects with a RegistryError when the
   * upstream refuses (404, 429, …) or another error when it cannot be reached. `signal`
   * aborts the request (the download was cancelled) and its body.
   */
  open(offset: number, signal?: AbortSignal): Promise<{ body: Readable; totalSize: number | undefined; etag?: string | undefined; acceptsRanges?: boolean }>;
  /** GET bytes [start, end] (inclusive), for segmented downloads. */
  openRange?(start: number, end: number, signal?: AbortSignal): Promise<RangeAnswer>;
  /**
   * Segments for a big blob from this source: a fixed count (1 = one stream), or 'auto' (one
   * stream, more Range connections only while the measured rate says they pay).
   */
  segments?: number | 'auto';
  /** Paces consumption when the upstream has a bandwidth cap. */
  throttle?(bytes: number): Promise<void>;
  /**
   * The most bytes the blob may have (its manifest descriptor's size, or the configured cap):
   * a body without Content-Length is cut off past it, a larger Content-Length refused.
   */
  maxSize?: number;
}
