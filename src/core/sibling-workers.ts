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
