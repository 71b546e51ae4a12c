// The other worker processes of the same mirror (`workers: N`, src/workers/): what the core
// asks of them so that N processes sharing one cache behave as one mirror. Only misses,
// revalidations and bookkeeping use it, never a warm hit. A single process (`workers: 1`,
// the CLI, the in-process test mirror) has no siblings: the parts get `undefined` and behave
// exactly as they did before workers existed.

/** What one worker tells the others (relayed by the primary, in the order it was sent). */
export type SiblingEvent =
  /** A tag row changed in the index (moved, extended or deleted): drop the in-memory copy. */
  | { kind: 'tag'; key: string }
  /** An upstream 404 to answer again for `ttlMs` without asking. */
  | { kind: 'negative'; key: string; error: { code: string; message: string; status: number; detail?: unknown }; ttlMs: number }
  /** The upstream has `key` after all. */
  | { kind: 'negative-forget'; key: string }
  /** Content committed to the cache by another worker (eviction's running total). */
  | { kind: 'added'; bytes: number }
  /** A client spent a miss of its budget (clientMisses) at another worker. */
  | { kind: 'miss'; key: string }
  /** Content evicted by another worker: drop in-memory copies. */
  | { kind: 'evicted'; digest: string };

/** A failure as it crosses a process boundary (a RegistryError keeps its code and status). */
export interface SharedError {
  code?: string;
  message: string;
  status?: number;
  detail?: unknown;
  headers?: Record<string, string>;
  /** The owner had no disk room for the blob (it passes it through to its own client). */
  noRoom?: boolean;
}

/**
 * What the worker downloading a blob tells the workers following it: enough for their
 * clients to read its temp file as it grows (core/remote-download.ts), as its own do.
 * `orphaned`: the owner died (from the primary); a follower claims the download anew.
 */
export interface DownloadNews {
  state: 'running' | 'committing' | 'done' | 'failed' | 'orphaned';
  /** The temp file (undefined until the owner created it). */
  path?: string;
  totalSize?: number;
  /** Contiguous bytes written and hashed. */
  written: number;
  verified: boolean;
  error?: SharedError;
}

/** The answer to a claim of a digest's download: do it, or follow the worker that does. */
export type DownloadClaim =
  | { role: 'own' }
  /** `repository`: the upstream and repository the owner downloads it for (the access check). */
  | { role: 'follow'; owner: number; repository: string; news: DownloadNews | undefined };

export interface SiblingWorkers {
  /** This worker's id (the `X-Mirror-Worker` header, the `worker` field of log lines). */
  readonly id: number;
  /**
   * Leadership of a flight across workers: 'lead' when no worker runs it (do the work, then
   * `release`), 'followed' once the worker that led it released it (re-read the index).
   */
  lead(key: string): Promise<'lead' | 'followed'>;
  release(key: string): void;
  /** A token from a bucket shared by every worker (the revalidation budget per upstream). */
  takeToken(bucket: string): Promise<boolean>;
  /** Run `work` unless another worker holds `lease` (eviction, one worker at a time); undefined when skipped. */
  exclusive<T>(lease: string, work: () => Promise<T>): Promise<T | undefined>;
  /**
   * One upstream download per digest across workers: the first to claim a digest owns its
   * download until it reports it done or failed (or dies); the others follow its news.
   */
  claimDownload(digest: string, repository: string): Promise<DownloadClaim>;
  /** The owner's news of its download (relayed to its followers; done and failed end the claim). */
  reportDownload(digest: string, news: DownloadNews): void;
  /** This worker no longer follows `digest` (none of its clients reads it any more). */
  unfollowDownload(digest: string): void;
  /** News of the downloads this worker follows. */
  onDownloadNews(listener: (digest: string, news: DownloadNews) => void): void;
  /** How many other workers follow a download this worker owns (they count as its readers). */
  onFollowers(listener: (digest: string, followers: number) => void): void;
  /** Tell every other worker. */
  publish(event: SiblingEvent): void;
  /** Hear what the other workers publish. */
  subscribe(listener: (event: SiblingEvent) => void): void;
  /** `/metrics` for the whole mirror: every worker's registry, aggregated by the primary. */
  clusterMetrics(): Promise<{ contentType: string; text: string }>;
  /** `/readyz` for the whole mirror: why some worker cannot serve (or is not running), or undefined. */
  clusterReadiness(): Promise<string | undefined>;
  /** How this worker answers the primary's readiness question. */
  answerReadiness(local: () => Promise<string | undefined>): void;
}
