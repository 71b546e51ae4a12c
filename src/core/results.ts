// What the core answers, shared by the server's handlers, the CLI and the core's parts.

import type { Readable } from 'node:stream';

/** How a request was answered, for the access log and metrics. */
export type CacheOutcome = 'hit' | 'miss' | 'coalesced' | 'revalidated' | 'stale';

export interface ManifestResult {
  digest: string;
  mediaType: string;
  bytes: Buffer;
  outcome: CacheOutcome;
  /** Set when served stale: the Warning header's text. */
  warning?: string;
}

export interface BlobResult {
  digest: string;
  /** Total size; undefined only when an upstream streams without a length. */
  size: number | undefined;
  outcome: CacheOutcome;
  /** Where the client may fetch the bytes directly (a presigned object-store URL). */
  redirect?: string | undefined;
  /** Bytes [start, end] inclusive (end undefined = to the end); absent for a HEAD. */
  open?: (start: number, end: number | undefined) => Readable;
}

export interface TagList {
  name: string;
  tags: string[];
  /** The query (without ns) of the next page when more may follow, for the Link header that points back at the mirror. */
  next: URLSearchParams | undefined;
  outcome: CacheOutcome;
}

/** The Warning header of an answer served stale because `upstream` could not be asked (`checkedAt`: when it last answered). */
export function staleWarning(upstream: string, reason: string, checkedAt: number | undefined, now: number): string {
  const age = checkedAt === undefined ? '' : `; last checked ${Math.max(0, Math.round((now - checkedAt) / 1000))}s ago`;
  return `110 registry-mirror "Response is stale: upstream ${upstream} unavailable (${reason.replace(/"/g, "'")})${age}"`;
}
