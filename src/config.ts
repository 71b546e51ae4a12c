// mirror.config.yaml, then MIRROR_* environment variables, then command-line flags,
// validated once into one typed, frozen Config. Every problem is reported at once,
// each with the path of the bad key.

import { existsSync, readFileSync } from 'node:fs';
import { isIP, isIPv4 } from 'node:net';
import { availableParallelism } from 'node:os';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { parseDuration, parseSize } from './units.js';

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a duration (e.g. 30s, 10m, 1h, 0)` });
    return z.NEVER;
  }
  return ms;
});

/** 'auto' (adaptive) or a fixed count of parallel Range segments per big blob (1 = one stream). */
const segmentsSchema = z.union([z.literal('auto'), z.number().int().min(1).max(32)]);

const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a size (e.g. 50GiB, 512MB, 0)` });
    return z.NEVER;
  }
  return bytes;
});

const hostPort = z.string().transform((value, ctx) => {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim()) ?? /^()()(\d{1,5})$/.exec(value.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not HOST:PORT (e.g. 0.0.0.0:5000, 127.0.0.1:5000, :5000)` });
    return z.NEVER;
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
});

const httpUrl = z.string().transform((value, ctx) => {
  try {
    const url = new URL(value);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
    return url.origin + url.pathname.replace(/\/+$/, '');
  } catch {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not an http(s) URL` });
    return z.NEVER;
  }
});

/** A string that must match `pattern`, else `what` says why (with the value, so the rule is recognisable). */
const matching = (pattern: RegExp, what: string) =>
  z.string().superRefine((value, ctx) => {
    if (!pattern.test(value)) ctx.addIssue({ code: 'custom', message: `"${value}" is ${what}` });
  });
/** A glob over repository names: lowercase name characters and `/`, with `*`, `**`, `?`. */
const repositoryGlob = matching(/^[a-z0-9._/*?-]+$/, 'not a repository glob (lowercase letters, digits, . _ - /, with * within a path component, ** across, ? one character)');
/** A glob over tags: tag characters with `*` and `?` (a tag has no `/`). */
const tagGlob = matching(/^[A-Za-z0-9._*?-]+$/, 'not a tag glob (letters, digits, . _ -, with * and ?)');
const tagRegex = z.string().min(1).superRefine((value, ctx) => {
  try {
    new RegExp(value);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a regular expression: ${(err as Error).message}` });
  }
});

/**
 * One tag TTL rule: tags of repositories matching `repository` (default: every one) whose name
 * matches `tag` (a glob) or `tagRegex` (default: every tag) are trusted for `ttl`.
 */
const ttlRuleSchema = z
  .strictObject({
    repository: repositoryGlob.optional(),
    tag: tagGlob.optional(),
    tagRegex: tagRegex.optional(),
    ttl: duration.optional(),
  })
  .superRefine((r, ctx) => {
    if (r.ttl === undefined) ctx.addIssue({ code: 'custom', path: ['ttl'], message: 'required: how long the matching tags are trusted (e.g. 5m, 1d; 0 = revalidate every time)' });
    if (r.tag !== undefined && r.tagRegex !== undefined) ctx.addIssue({ code: 'custom', message: 'a rule matches tags by tag (a glob) or by tagRegex, not both' });
  });
/** An IP address or a CIDR block (10.0.0.0/8, fd00::/8). */
const addressOrCidr = z.string().refine((value) => {
  const [address, prefix, extra] = value.trim().split('/');
  const family = isIP(address ?? '');
  if (family === 0 || extra !== undefined) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}, { message: 'not an IP address or CIDR block (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)' });

/**
 * Layer prefetch (core/prefetch.ts): `true`/`false`, or the details. Per upstream, unset
 * fields inherit the top-level setting.
 */
const prefetchSettings = z.strictObject({
  enabled: z.boolean().optional(),
  /** Prefetch downloads from one upstream at once (the rest wait in the queue). */
  concurrency: z.number().int().min(1).max(64).optional(),
  /** Blobs waiting for a prefetch slot, per upstream; past it they are not prefetched. */
  maxQueued: z.number().int().min(0).max(10_000).optional(),
});
const prefetchSchema = z.union([z.boolean().transform((enabled): z.output<typeof prefetchSettings> => ({ enabled })), prefetchSettings]);

const upstreamSchema = z.strictObject({
  /** Base URL of the registry API (the host clients name may differ: docker.io → registry-1.docker.io). */
  url: httpUrl,
  /** Credentials for the upstream (raise Docker Hub's pull limit). Use ${ENV} references. */
  username: z.string().optional(),
  password: z.string().optional(),
  /**
   * Several credentials (instead of username/password): Docker Hub counts pulls per account,
   * and the mirror pulls with the one that has most left. `name` labels it in metrics and on
   * the status page (default: the username); the password never appears anywhere.
   */
  credentials: z
    .array(z.strictObject({ name: z.string().min(1).max(64).optional(), username: z.string().min(1), password: z.string().min(1) }))
    .optional(),
  /** How long a tag is trusted before it is revalidated with a HEAD. 0 = every request. */
  ttl: duration.optional(),
  /** Tag TTLs by repository and tag, first match wins; tried before the top-level ttlRules, then ttl applies. */
  ttlRules: z.array(ttlRuleSchema).prefault([]),
  /** How long an upstream 404 for a manifest is remembered (default: the top-level negativeTtl; 0 = off). */
  negativeTtl: duration.optional(),
  /** Glob patterns of repositories that may be pulled through this upstream. */
  repositories: z.array(z.string().min(1)).prefault(['**']),
  /** Another first path component that routes to this upstream (`/v2/<alias>/repo/...`). */
  alias: z.string().regex(/^[a-z0-9][a-z0-9.-]*$/).optional(),
  /** Docker Hub: one-component names are official images under `library/`. */
  libraryPrefix: z.boolean().optional(),
  /** Also accept Docker schema1 manifests (deprecated; off by default). */
  allowSchema1: z.boolean().prefault(false),
  /** Parallel Range segments for big blobs from this upstream (default: downloads.segments; 'auto', or a fixed count, 1 = one stream). */
  segments: segmentsSchema.optional(),
  /** An HTTP(S) proxy for this upstream (default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment). */
  proxy: httpUrl.optional(),
  /**
   * The url is another registry-mirror (a regional tier): add `?ns=<this upstream's name>` to
   * every request so that it routes to the same registry, as containerd does with mirrors.
   */
  sendNamespace: z.boolean().prefault(false),
  /** At most this many connections to each of this upstream's hosts (0 = unbounded). */
  maxConnections: z.number().int().min(0).prefault(0),
  /** At most this many bytes per second downloaded from this upstream, all downloads together (0 = unbounded). */
  maxBytesPerSecond: size.prefault(0),
  /** Layer prefetch for this upstream (default: the top-level prefetch). */
  prefetch: prefetchSchema.optional(),
});

const MIN_CLUSTER_SECRET_LENGTH = 16;

/** 127.0.0.0/8, ::1 and localhost: only this machine can connect. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return isIPv4(v4) && v4.startsWith('127.');
}

/** `auto` (one per CPU available to the process) or a count; CLI and env give it as text. */
const workerCount = z.union([
  z.literal('auto'),
  z.coerce.number().int().min(1).max(256),
]);

const configSchema = z.strictObject({
  listen: hostPort.prefault('0.0.0.0:5000'),
  /** Processes serving the socket: auto = availableParallelism(), 1 = a single process (no primary). */
  workers: workerCount.prefault('auto'),
  tls: z
    .strictObject({ cert: z.string().min(1), key: z.string().min(1) })
    .optional(),
  /** Authentication of the mirror's own clients (off when absent). */
  auth: z
    .strictObject({
      /** An htpasswd file with bcrypt entries (htpasswd -B). Reloaded on SIGHUP. */
      htpasswd: z.string().min(1),
      realm: z.string().prefault('registry-mirror'),
    })
    .optional(),
  storage: z
    .strictObject({
      path: z.string().min(1).prefault('./data'),
      /** Where verified content lives: this disk, or S3-compatible object storage shared by replicas. */
      driver: z.enum(['filesystem', 's3']).prefault('filesystem'),
      s3: z
        .strictObject({
          bucket: z.string().min(1),
          /** Key prefix inside the bucket, e.g. "mirror/". */
          prefix: z.string().prefault(''),
          /** For Ceph RGW, MinIO…; absent for AWS. */
          endpoint: httpUrl.optional(),
          region: z.string().prefault('us-east-1'),
          accessKeyId: z.string().optional(),
          secretAccessKey: z.string().optional(),
          forcePathStyle: z.boolean().prefault(true),
          /** Answer blob GETs with a 307 to a presigned URL valid this long (0 = stream through the replica). */
          redirect: duration.prefault(0),
          /** This replica's name in the bucket's _mirror/ objects (default: made once, kept in <storage.path>/replica-id). */
          replicaId: z.string().regex(/^[A-Za-z0-9._-]{1,100}$/, 'letters, digits, ".", "_" and "-" (at most 100)').optional(),
          /** How often each replica publishes what it needs kept and the eviction lease is renewed (it lasts 3 heartbeats). */
          heartbeat: duration.prefault('1m'),
          /** Content any replica used this recently is never evicted from the bucket. */
          recentUse: duration.prefault('10m'),
          /** A replica silent this long is forgotten: its pins are no longer kept. */
          replicaExpiry: duration.prefault('7d'),
        })
        .optional(),
      /** 0 = unbounded. */
      maxSize: size.prefault(0),
      /**
       * Disk space downloads leave free (each reserves its size before it starts; one that does
       * not fit passes through uncached). Default: 1% of the disk, at most 64 MiB.
       */
      minFree: size.optional(),
      /** Eviction starts past this fraction of maxSize… */
      highWatermark: z.number().gt(0).max(1).prefault(0.9),
      /** …and removes least recently used content until usage is under this one. */
      lowWatermark: z.number().gt(0).max(1).prefault(0.8),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).prefault('info'),
      /** One line per request with the cache outcome. */
      access: z.boolean().prefault(true),
    })
    .prefault({}),
  /**
   * Replicas that cooperate: the owner of a digest (on a consistent-hash ring of `peers`)
   * downloads it from the upstream once; the others read it from the owner.
   */
  cluster: z
    .strictObject({
      /** This replica's URL as the other replicas reach it (must be one of peers). */
      self: httpUrl,
      peers: z.array(httpUrl).min(1),
      /**
       * Shared secret with which replicas sign their requests to each other (HMAC-SHA256 of
       * method, path and time). Required when client auth is on or listen is not loopback.
       */
      secret: z.string().min(MIN_CLUSTER_SECRET_LENGTH, `must be at least ${MIN_CLUSTER_SECRET_LENGTH} characters`).optional(),
    })
    .optional(),
  /** Never contact an upstream; serve only what is cached. */
  offline: z.boolean().prefault(false),
  /** Answer GET /v2/_catalog with the repositories the mirror holds (behind client auth when on); false = 404 UNSUPPORTED. */
  catalog: z.boolean().prefault(true),
  /** Tag TTL for upstreams that do not set their own. */
  ttl: duration.prefault('10m'),
  /** Tag TTL rules for every upstream, tried after an upstream's own rules. */
  ttlRules: z.array(ttlRuleSchema).prefault([]),
  /** How long an upstream 404 for a manifest is remembered, per upstream, repository and reference (0 = off). */
  negativeTtl: duration.prefault('30s'),
  /**
   * An image manifest fetched from the upstream starts the downloads of its config and layers
   * the cache lacks, in the background, so a client's later layer requests join them.
   */
  prefetch: prefetchSchema.prefault(true),
  /** The upstream for requests that name none (no ?ns=, no host prefix). */
  defaultUpstream: z.string().prefault('docker.io'),
  upstreams: z
    .record(z.string().regex(/^[a-z0-9][a-z0-9.-]*(:\d+)?$/, 'an upstream is named by its registry host, e.g. docker.io or ghcr.io'), upstreamSchema)
    .prefault({ 'docker.io': { url: 'https://registry-1.docker.io' } }),
  timeouts: z
    .strictObject({
      connect: duration.prefault('10s'),
      /** Until the upstream's response headers arrive. */
      headers: duration.prefault('30s'),
      /** Longest silence inside a response body. */
      bodyIdle: duration.prefault('60s'),
    })
    .prefault({}),
  retries: z
    .strictObject({
      /** Extra attempts for an idempotent upstream request that failed. */
      attempts: z.number().int().min(0).max(10).prefault(2),
      baseDelay: duration.prefault('200ms'),
      maxDelay: duration.prefault('5s'),
    })
    .prefault({}),
  breaker: z
    .strictObject({
      /**
       * Consecutive failed requests after which an upstream is marked down (0 = never). Counted:
       * connection errors, time-outs, 5xx for /v2/, and 5xx for repositories once they span 3
       * different repositories (one repository's 5xx is that request's failure, not the upstream's).
       */
      failures: z.number().int().min(0).prefault(5),
      /** How long it stays down before one probe request tests it again. */
      cooldown: duration.prefault('30s'),
    })
    .prefault({}),
  clientMisses: z
    .strictObject({
      /**
       * Each client address (IPv6: its /64) may make this many requests a minute that the cache
       * cannot answer (a token bucket of that size); past it, its cold requests get 429 while
       * cache hits and other clients are served (0 = no limit). Behind a load balancer every
       * client has its address: raise this or set 0 there.
       */
      perMinute: z.number().int().min(0).prefault(100),
    })
    .prefault({}),
  revalidation: z
    .strictObject({
      /** Upper bound on tag revalidations per upstream per second (0 = unbounded); past it, stale tags are served. */
      perSecond: z.number().min(0).prefault(50),
      burst: z.number().int().min(1).prefault(100),
      /** When an upstream reports fewer pulls left than this (ratelimit-remaining), tags are not revalidated. */
      rateLimitReserve: z.number().int().min(0).prefault(10),
    })
    .prefault({}),
  downloads: z
    .strictObject({
      /** How many times one blob download resumes after a dropped connection. */
      resumeAttempts: z.number().int().min(0).max(20).prefault(5),
      /** Longest a download may take once no client is waiting for it. */
      writeTimeout: duration.prefault('30m'),
      /**
       * Blobs at least this big may be fetched as parallel Range segments (default: 8MiB with
       * auto, which splits only downloads measured to be slow; 32MiB with a fixed count)…
       */
      segmentThreshold: size.optional(),
      /**
       * …'auto': start with one stream and add Range connections (up to maxSegments) only while
       * the measured rate says the rest would take long and each addition raises the total rate;
       * a number: always that many (1 = always one stream).
       */
      segments: segmentsSchema.prefault('auto'),
      /** With segments: auto, at most this many connections for one download. */
      maxSegments: z.number().int().min(1).max(32).prefault(8),
      /**
       * At most this many blob downloads run at once (0 = unbounded); more new ones wait in a
       * queue. Joining a running download is never limited. A peer replica's request is not
       * counted again (the replica that forwarded it already holds a slot).
       */
      maxConcurrent: z.number().int().min(0).prefault(64),
      /** At most this many new downloads wait for a slot; past it they are refused (429 TOOMANYREQUESTS, Retry-After). */
      maxQueued: z.number().int().min(0).prefault(256),
      /** The longest a new download waits for a slot before it is refused the same way. */
      queueTimeout: duration.prefault('30s'),
      /**
       * A download no client is reading any more is cancelled after this long (0 = never early),
       * unless it is more than half done or has less than 8 MiB to go: then it finishes, within writeTimeout.
       */
      abandonAfter: duration.prefault('15s'),
      /** The most bytes a blob may have when no stored manifest's descriptor gives its size. */
      maxBlobSize: size.prefault('64GiB'),
    })
    .prefault({}),
  /**
   * Load balancers or proxies in front of the mirror (addresses or CIDRs): for requests from
   * them, the client's address is taken from X-Forwarded-For (events, the per-client budget).
   */
  trustedProxies: z.array(addressOrCidr).prefault([]),
  /** One event per image pull (who pulled what, when), to a JSON-lines file and/or a webhook. */
  events: z
    .strictObject({
      /** Append events to this file, one JSON object a line (reopened on SIGHUP, for log rotation). */
      file: z.string().min(1).optional(),
      webhook: z
        .strictObject({
          /** Where events are POSTed (the query string is kept). */
          url: z.string().refine((value) => {
            try {
              return ['http:', 'https:'].includes(new URL(value).protocol);
            } catch {
              return false;
            }
          }, { message: 'not an http(s) URL' }),
          /** Extra request headers (an Authorization token: use ${ENV}). */
          headers: z.record(z.string(), z.string()).prefault({}),
          /** Events per POST (a JSON array). */
          batchSize: z.number().int().min(1).max(10_000).prefault(100),
          /** Events held in memory while the webhook is slow or down; past it the oldest are dropped (counted). */
          queueSize: z.number().int().min(1).max(1_000_000).prefault(10_000),
          /** Longest an event waits for a batch to fill. */
          flushInterval: duration.prefault('1s'),
          /** Per POST. */
          timeout: duration.prefault('10s'),
          /** Retries after a failed POST wait this long, doubling up to maxBackoff. */
          backoff: duration.prefault('1s'),
          maxBackoff: duration.prefault('1m'),
        })
        .optional(),
    })
    .prefault({}),
});

type ParsedConfig = z.output<typeof configSchema>;

/** A tag TTL rule (upstream/ttl-rules.ts matches them). */
export interface TtlRuleConfig {
  /** Glob over the repository as the upstream names it (`library/alpine` on Docker Hub); undefined = every one. */
  repository: string | undefined;
  /** Glob over the tag; undefined (and no tagRegex) = every tag. */
  tag: string | undefined;
  /** Regular expression source, tested against the tag. */
  tagRegex: string | undefined;
  ttlMs: number;
}

/** One account at an upstream; `name` (not secret) labels it in metrics and on the status page. */
export interface UpstreamCredential {
  name: string;
  username: string;
  password: string;
}

/** The label of requests sent without credentials. */
export const ANONYMOUS_CREDENTIAL = 'anonymous';

export interface UpstreamConfig {
  name: string;
  url: string;
  /** In order of preference when their pulls left are equal; empty = anonymous. */
  credentials: UpstreamCredential[];
  /** The tag TTL when no rule matches. */
  ttlMs: number;
  /** This upstream's rules, then the top-level ones: the first match wins. */
  ttlRules: TtlRuleConfig[];
  /** How long an upstream 404 for a manifest is remembered; 0 = not at all. */
  negativeTtlMs: number;
  repositories: string[];
  alias: string | undefined;
  libraryPrefix: boolean;
  allowSchema1: boolean;
  segments: number | 'auto';
  sendNamespace: boolean;
  proxy: string | undefined;
  maxConnections: number;
  maxBytesPerSecond: number;
  prefetch: PrefetchConfig;
}

/** Layer prefetch for one upstream (core/prefetch.ts). */
export interface PrefetchConfig {
  enabled: boolean;
  /** Prefetch downloads from this upstream at once. */
  concurrency: number;
  /** Blobs waiting for one of those; past it they are not prefetched. */
  maxQueued: number;
}

const PREFETCH_DEFAULTS: PrefetchConfig = { enabled: true, concurrency: 8, maxQueued: 256 };

export interface S3StoreOptions {
  bucket: string;
  prefix: string;
  endpoint: string | undefined;
  region: string;
  accessKeyId: string | undefined;
  secretAccessKey: string | undefined;
  forcePathStyle: boolean;
  /** Presigned URL lifetime for blob redirects, ms; 0 = stream through the replica. */
  redirectTtlMs: number;
}

/** Eviction of a bucket shared by replicas (cache/shared-eviction.ts). */
export interface SharedBucketOptions {
  replicaId: string | undefined;
  heartbeatMs: number;
  recentUseMs: number;
  replicaExpiryMs: number;
}

export interface WebhookConfig {
  url: string;
  headers: Record<string, string>;
  batchSize: number;
  queueSize: number;
  flushIntervalMs: number;
  timeoutMs: number;
  backoffMs: number;
  maxBackoffMs: number;
}

export interface Config {
  listen: { host: string; port: number };
  /** Worker processes `serve` runs (`auto` resolved to the CPUs available). */
  workers: number;
  tls: { cert: string; key: string } | undefined;
  auth: { htpasswd: string; realm: string } | undefined;
  cluster: { self: string; peers: string[]; secret: string | undefined } | undefined;
  storage: {
    path: string;
    driver: 'filesystem' | 's3';
    s3: S3StoreOptions | undefined;
    /** With the s3 driver. */
    shared: SharedBucketOptions | undefined;
    maxSize: number;
    /** Bytes downloads leave free on the disk; undefined = 1% of it, at most 64 MiB. */
    minFree: number | undefined;
    highWatermark: number;
    lowWatermark: number;
  };
  log: ParsedConfig['log'];
  offline: boolean;
  catalog: boolean;
  defaultUpstream: string;
  upstreams: UpstreamConfig[];
  timeouts: { connectMs: number; headersMs: number; bodyIdleMs: number };
  retries: { attempts: number; baseDelayMs: number; maxDelayMs: number };
  breaker: { failures: number; cooldownMs: number };
  clientMisses: { perMinute: number };
  revalidation: { perSecond: number; burst: number; rateLimitReserve: number };
  downloads: {
    resumeAttempts: number;
    writeTimeoutMs: number;
    /** undefined: the default for the mode (see downloads.ts). */
    segmentThreshold: number | undefined;
    maxSegments: number;
    maxConcurrent: number;
    maxQueued: number;
    queueTimeoutMs: number;
    abandonAfterMs: number;
    maxBlobSize: number;
  };
  trustedProxies: string[];
  events: { file: string | undefined; webhook: WebhookConfig | undefined };
}

export class ConfigError extends Error {
  constructor(readonly problems: string[], source: string) {
    super(`invalid configuration (${source}):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Flags (and their MIRROR_* twins) that override the file. */
export interface ConfigOverrides {
  listen?: string;
  port?: string | number;
  storage?: string;
  upstream?: string;
  ttl?: string;
  logLevel?: string;
  offline?: boolean;
  workers?: string;
}

export const ENV_OVERRIDES: Record<keyof ConfigOverrides, string> = {
  listen: 'MIRROR_LISTEN',
  port: 'MIRROR_PORT',
  storage: 'MIRROR_STORAGE',
  upstream: 'MIRROR_UPSTREAM',
  ttl: 'MIRROR_TTL',
  logLevel: 'MIRROR_LOG_LEVEL',
  offline: 'MIRROR_OFFLINE',
  workers: 'MIRROR_WORKERS',
};

/** Replace ${NAME} (and ${NAME:-default}) in every string of the document. */
function substituteEnv(value: unknown, env: NodeJS.ProcessEnv, path: string, problems: string[]): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_, name: string, fallback: string | undefined) => {
      const found = env[name];
      if (found !== undefined) return found;
      if (fallback !== undefined) return fallback;
      problems.push(`${path || '(root)'}: environment variable ${name} is not set`);
      return '';
    });
  }
  // Paths written as the schema's issues are (`credentials.1.password`), so that one key's problems read alike.
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, `${path}.${i}`, problems));
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, substituteEnv(v, env, path ? `${path}.${k}` : k, problems)]),
    );
  }
  return value;
}

function asRecord(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

export interface LoadOptions {
  /** Path given with --config / MIRROR_CONFIG. Without it, ./mirror.config.yaml is used when present. */
  file?: string | undefined;
  overrides?: ConfigOverrides;
  env?: NodeJS.ProcessEnv;
}

export function loadConfig(options: LoadOptions = {}): Config {
  const env = options.env ?? process.env;
  const file = options.file ?? env.MIRROR_CONFIG ?? (existsSync('mirror.config.yaml') ? 'mirror.config.yaml' : undefined);
  let raw: unknown = {};
  const source = file ?? 'defaults';
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError([`cannot read ${file}: ${(err as Error).message}`], source);
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
      throw new ConfigError([`YAML syntax error${where}: ${(err as Error).message.split('\n')[0]}`], source);
    }
  }
  return buildConfig(raw, { env, overrides: options.overrides ?? {}, source });
}

/** Validate a parsed document plus overrides. Exposed for tests. */
export function buildConfig(
  document: unknown,
  { env = {}, overrides = {}, source = 'config' }: { env?: NodeJS.ProcessEnv; overrides?: ConfigOverrides; source?: string },
): Config {
  const problems: string[] = [];
  if (document !== null && document !== undefined && (typeof document !== 'object' || Array.isArray(document))) {
    throw new ConfigError(['(root): expected a mapping of settings'], source);
  }
  const doc = asRecord(substituteEnv(document ?? {}, env, '', problems));

  // Environment first, flags last: a flag beats MIRROR_*, which beats the file.
  const fromEnv: ConfigOverrides = {};
  for (const [key, name] of Object.entries(ENV_OVERRIDES) as [keyof ConfigOverrides, string][]) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    if (key === 'offline') fromEnv.offline = /^(1|true|yes|on)$/i.test(value);
    else (fromEnv as Record<string, string>)[key] = value;
  }
  const merged: ConfigOverrides = { ...fromEnv };
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) (merged as Record<string, unknown>)[k] = v;

  if (merged.listen !== undefined) doc.listen = merged.listen;
  if (merged.workers !== undefined) doc.workers = merged.workers;
  if (merged.port !== undefined) {
    const current = typeof doc.listen === 'string' ? doc.listen : '0.0.0.0:5000';
    const host = current.includes(':') ? current.slice(0, current.lastIndexOf(':')) : '0.0.0.0';
    doc.listen = `${host}:${merged.port}`;
  }
  if (merged.storage !== undefined) doc.storage = { ...asRecord(doc.storage), path: merged.storage };
  if (merged.logLevel !== undefined) doc.log = { ...asRecord(doc.log), level: merged.logLevel };
  if (merged.offline !== undefined) doc.offline = merged.offline;
  if (merged.ttl !== undefined) {
    doc.ttl = merged.ttl;
    // --ttl is the operator's word for every upstream.
    if (doc.upstreams && typeof doc.upstreams === 'object') {
      for (const u of Object.values(asRecord(doc.upstreams))) if (u && typeof u === 'object') delete (u as Record<string, unknown>).ttl;
    }
  }
  if (merged.upstream !== undefined) {
    const upstreams = { ...asRecord(doc.upstreams ?? { 'docker.io': {} }) };
    const name = typeof doc.defaultUpstream === 'string' ? doc.defaultUpstream : 'docker.io';
    upstreams[name] = { ...asRecord(upstreams[name]), url: merged.upstream };
    doc.upstreams = upstreams;
  }

  const result = configSchema.safeParse(doc);
  if (!result.success) {
    // A key whose variable is missing is already reported: not also as empty.
    const unset = new Set(problems.map((p) => p.slice(0, p.indexOf(': environment variable'))));
    for (const issue of result.error.issues) {
      const path = issue.path.map(String).join('.') || '(root)';
      if (unset.has(path)) continue;
      const message =
        issue.code === 'unrecognized_keys' ? `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}` : issue.message;
      problems.push(`${path}: ${message}`);
    }
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems, source);
  const parsed = result.data;

  const upstreams: UpstreamConfig[] = Object.entries(parsed.upstreams).map(([name, u]) => ({
    name,
    url: u.url,
    credentials:
      u.credentials?.map((c) => ({ name: c.name ?? c.username, username: c.username, password: c.password })) ??
      (u.username && u.password ? [{ name: u.username, username: u.username, password: u.password }] : []),
    ttlMs: u.ttl ?? parsed.ttl,
    ttlRules: [...u.ttlRules, ...parsed.ttlRules].map(ttlRuleConfig),
    negativeTtlMs: u.negativeTtl ?? parsed.negativeTtl,
    repositories: u.repositories,
    alias: u.alias,
    libraryPrefix: u.libraryPrefix ?? name === 'docker.io',
    allowSchema1: u.allowSchema1,
    segments: u.segments ?? parsed.downloads.segments,
    sendNamespace: u.sendNamespace,
    proxy: u.proxy,
    maxConnections: u.maxConnections,
    maxBytesPerSecond: u.maxBytesPerSecond,
    prefetch: {
      enabled: u.prefetch?.enabled ?? parsed.prefetch.enabled ?? PREFETCH_DEFAULTS.enabled,
      concurrency: u.prefetch?.concurrency ?? parsed.prefetch.concurrency ?? PREFETCH_DEFAULTS.concurrency,
      maxQueued: u.prefetch?.maxQueued ?? parsed.prefetch.maxQueued ?? PREFETCH_DEFAULTS.maxQueued,
    },
  }));
  const more: string[] = [];
  if (!upstreams.some((u) => u.name === parsed.defaultUpstream)) {
    more.push(`defaultUpstream: "${parsed.defaultUpstream}" is not one of upstreams (${upstreams.map((u) => u.name).join(', ') || 'none'})`);
  }
  for (const [name, u] of Object.entries(parsed.upstreams)) {
    if (u.username && !u.password) more.push(`upstreams.${name}.password: required when username is set`);
    if ((u.username || u.password) && u.credentials) more.push(`upstreams.${name}: username/password and credentials are two forms of one setting: use one (credentials for several)`);
  }
  for (const u of upstreams) {
    const seen = new Set<string>([ANONYMOUS_CREDENTIAL]);
    u.credentials.forEach((c, i) => {
      if (seen.has(c.name)) more.push(`upstreams.${u.name}.credentials.${i}.name: "${c.name}" ${c.name === ANONYMOUS_CREDENTIAL ? 'names requests without credentials' : 'is used twice'}: give each credential a name of its own`);
      seen.add(c.name);
    });
  }
  if (parsed.cluster && !parsed.cluster.peers.includes(parsed.cluster.self)) more.push('cluster.self: must be one of cluster.peers');
  if (parsed.cluster && parsed.cluster.secret === undefined) {
    // Without a secret, anyone who can reach the mirror could pose as a replica.
    const why = [parsed.auth && 'client auth (auth.htpasswd) is on', !isLoopbackHost(parsed.listen.host) && `listen (${parsed.listen.host}) is not a loopback address`].filter(Boolean);
    if (why.length > 0) more.push(`cluster.secret: required when ${why.join(' and ')}: replicas sign their requests to each other with it (at least ${MIN_CLUSTER_SECRET_LENGTH} characters, the same on every replica)`);
  }
  if (parsed.storage.driver === 's3' && !parsed.storage.s3) more.push('storage.s3: required when storage.driver is s3 (bucket, endpoint, credentials)');
  const s3 = parsed.storage.s3;
  if (s3 && s3.heartbeat <= 0) more.push('storage.s3.heartbeat: must be above 0');
  if (s3 && s3.recentUse < 2 * s3.heartbeat) {
    more.push('storage.s3.recentUse: must be at least two heartbeats (a replica\'s uses reach the evicting replica up to a heartbeat late)');
  }
  if (s3 && s3.replicaExpiry < 3 * s3.heartbeat) more.push('storage.s3.replicaExpiry: must be at least three heartbeats');
  const webhook = parsed.events.webhook;
  if (webhook && webhook.batchSize > webhook.queueSize) more.push('events.webhook.batchSize: must not be above events.webhook.queueSize');
  if (webhook && webhook.backoff > webhook.maxBackoff) more.push('events.webhook.backoff: must not be above events.webhook.maxBackoff');
  if (parsed.storage.lowWatermark >= parsed.storage.highWatermark) {
    more.push('storage.lowWatermark: must be below storage.highWatermark');
  }
  if (more.length > 0) throw new ConfigError(more, source);

  const config: Config = {
    listen: parsed.listen,
    workers: parsed.workers === 'auto' ? availableParallelism() : parsed.workers,
    tls: parsed.tls,
    auth: parsed.auth,
    cluster: parsed.cluster && { self: parsed.cluster.self, peers: parsed.cluster.peers, secret: parsed.cluster.secret },
    storage: {
      path: parsed.storage.path,
      driver: parsed.storage.driver,
      s3: parsed.storage.s3 && {
        bucket: parsed.storage.s3.bucket,
        prefix: parsed.storage.s3.prefix,
        endpoint: parsed.storage.s3.endpoint,
        region: parsed.storage.s3.region,
        accessKeyId: parsed.storage.s3.accessKeyId,
        secretAccessKey: parsed.storage.s3.secretAccessKey,
        forcePathStyle: parsed.storage.s3.forcePathStyle,
        redirectTtlMs: parsed.storage.s3.redirect,
      },
      shared: parsed.storage.s3 && {
        replicaId: parsed.storage.s3.replicaId,
        heartbeatMs: parsed.storage.s3.heartbeat,
        recentUseMs: parsed.storage.s3.recentUse,
        replicaExpiryMs: parsed.storage.s3.replicaExpiry,
      },
      maxSize: parsed.storage.maxSize,
      minFree: parsed.storage.minFree,
      highWatermark: parsed.storage.highWatermark,
      lowWatermark: parsed.storage.lowWatermark,
    },
    log: parsed.log,
    offline: parsed.offline,
    catalog: parsed.catalog,
    defaultUpstream: parsed.defaultUpstream,
    upstreams,
    timeouts: { connectMs: parsed.timeouts.connect, headersMs: parsed.timeouts.headers, bodyIdleMs: parsed.timeouts.bodyIdle },
    retries: { attempts: parsed.retries.attempts, baseDelayMs: parsed.retries.baseDelay, maxDelayMs: parsed.retries.maxDelay },
    breaker: { failures: parsed.breaker.failures, cooldownMs: parsed.breaker.cooldown },
    clientMisses: { perMinute: parsed.clientMisses.perMinute },
    revalidation: parsed.revalidation,
    downloads: {
      resumeAttempts: parsed.downloads.resumeAttempts,
      writeTimeoutMs: parsed.downloads.writeTimeout,
      segmentThreshold: parsed.downloads.segmentThreshold,
      maxSegments: parsed.downloads.maxSegments,
      maxConcurrent: parsed.downloads.maxConcurrent,
      maxQueued: parsed.downloads.maxQueued,
      queueTimeoutMs: parsed.downloads.queueTimeout,
      abandonAfterMs: parsed.downloads.abandonAfter,
      maxBlobSize: parsed.downloads.maxBlobSize,
    },
    trustedProxies: parsed.trustedProxies.map((p) => p.trim()),
    events: {
      file: parsed.events.file,
      webhook: webhook && {
        url: webhook.url, headers: webhook.headers, batchSize: webhook.batchSize, queueSize: webhook.queueSize,
        flushIntervalMs: webhook.flushInterval, timeoutMs: webhook.timeout, backoffMs: webhook.backoff, maxBackoffMs: webhook.maxBackoff,
      },
    },
  };
  return deepFreeze(config);
}

function ttlRuleConfig(rule: z.output<typeof ttlRuleSchema>): TtlRuleConfig {
  return { repository: rule.repository, tag: rule.tag, tagRegex: rule.tagRegex, ttlMs: rule.ttl! };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
