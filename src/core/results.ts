// What the core answers, shared by the server's handlers, the CLI and the core's parts.

import type { Readable } from 'node:stream';
import { RegistryError } from '../oci/errors.js';

/**
 * How a request was answered, for the access log and metrics. `negative`: an upstream 404
 * remembered for a short while (core/negative-cache.ts), answered without asking again.
 */
export type CacheOutcome = 'hit' | 'miss' | 'coalesced' | 'revalidated' | 'stale' | 'negative';

/** The OCI error the upstream gave (a 404), answered again from memory: the same status and body. */
export class NegativeAnswer extends RegistryError {
  readonly outcome: CacheOutcome = 'negative';

  constructor(original: RegistryError) {
    super(original.code, original.message, { status: original.status, detail: original.detail, headers: original.headers });
  }
}

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
  /**
   * For a blob still downloading: settles when it is committed to the store (or failed).
   * A reader's stream ends when the digest checks out, a moment before the commit.
   */
  stored?: Promise<void>;
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
