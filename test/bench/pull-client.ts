// The bench's registry client, run in its own process (forked by run.ts) so that hashing
// hundreds of MiB never competes with the counting upstream front in the bench process.
// A pull is what docker does: GET the manifest by tag with the full Accept list, GET the
// config, GET the layers three at a time; every blob is streamed (never buffered whole),
// its sha256 and size verified. A 401 with a Bearer challenge (nginx passes the upstream's
// challenge through) gets an anonymous token from the realm, then one retry; the token is
// then sent up front on every later request to that registry and repository.
import { createHash } from 'node:crypto';
import { Agent, request, type Dispatcher } from 'undici';

export const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

export interface PullOptions {
  baseUrl: string;
  repository: string;
  reference: string;
  /** Layers fetched at once (docker: 3). */
  parallel?: number;
  timeoutMs?: number;
  /** Layers the client already has (by digest): it does not fetch them, as docker skips layers it has. */
  skipLayers?: string[];
}

export interface BlobTiming {
  digest: string;
  size: number;
  /** ms from the pull's start to this blob's request. */
  requestAtMs: number;
  /** ms from this blob's request to its response headers. */
  headersMs: number;
  /** ms from this blob's request to its first body byte. */
  firstByteMs: number;
  totalMs: number;
  /** The mirror's `X-Mirror-Worker` response header: which of its worker processes answered. */
  worker?: string;
}

export interface PullResult {
  ms: number;
  bytes: number;
  manifestDigest: string;
  blobs: BlobTiming[];
  authorization?: string;
}

const tokens = new Map<string, string>();

function tokenKey(baseUrl: string, repository: string): string {
  return `${new URL(baseUrl).origin} ${repository}`;
}

function parseChallenge(header: string): Record<string, string> | undefined {
  if (!/^Bearer\s/i.test(header)) return undefined;
  const params: Record<string, string> = {};
  for (const m of header.slice(7).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) params[m[1]!.toLowerCase()] = m[2]!;
  return params;
}

async function fetchToken(challenge: string, repository: string, signal?: AbortSignal): Promise<string> {
  const params = parseChallenge(challenge);
  if (!params?.realm) throw new Error(`unsupported challenge: ${challenge}`);
  const url = new URL(params.realm);
  if (params.service) url.searchParams.set('service', params.service);
  url.searchParams.append('scope', params.scope ?? `repository:${repository}:pull`);
  const res = await request(url, { signal });
  const body = (await res.body.json()) as { token?: string; access_token?: string };
  if (res.statusCode !== 200) throw new Error(`token endpoint answered ${res.statusCode}`);
  const token = body.token ?? body.access_token;
  if (!token) throw new Error('token endpoint answered without a token');
  return `Bearer ${token}`;
}

/** The Authorization header a registry wants for pulls of a repository (undefined when it asks for none). */
export async function authorizationFor(baseUrl: string, repository: string, reference: string): Promise<string | undefined> {
  const key = tokenKey(baseUrl, repository);
  const known = tokens.get(key);
  if (known) return known;
  const res = await request(`${baseUrl}/v2/${repository}/manifests/${reference}`, { method: 'HEAD', headers: { accept: MANIFEST_ACCEPT } });
  await res.body.dump();
  if (res.statusCode !== 401) return undefined;
  const auth = await fetchToken(String(res.headers['www-authenticate'] ?? ''), repository);
  tokens.set(key, auth);
  return auth;
}

async function get(
  dispatcher: Dispatcher,
  baseUrl: string,
  repository: string,
  path: string,
  headers: Record<string, string>,
  signal?: AbortSignal,
): Promise<Dispatcher.ResponseData> {
  const key = tokenKey(baseUrl, repository);
  const send = () => {
    const auth = tokens.get(key);
    return request(`${baseUrl}${path}`, { dispatcher, headers: auth ? { ...headers, authorization: auth } : headers, signal });
  };
  let res = await send();
  if (res.statusCode === 401) {
    const challenge = String(res.headers['www-authenticate'] ?? '');
    await res.body.dump();
    tokens.set(key, await fetchToken(challenge, repository, signal));
    res = await send();
  }
  return res;
}

interface Descriptor {
  digest: string;
  size: number;
  mediaType?: string;
}

/**
 * `beforeLayers` runs after the manifest and config, before the first layer request (the
 * concurrent test lines all clients up there, so that every one of them asks for the layer
 * while it is still downloading).
 */
export async function pull(options: PullOptions, beforeLayers?: () => Promise<void>): Promise<PullResult> {
  const { baseUrl, repository, reference } = options;
  const parallel = options.parallel ?? 3;
  const signal = AbortSignal.timeout(options.timeoutMs ?? 180_000);
  // One client = its own connections (20 concurrent pulls are 20 docker daemons).
  const dispatcher = new Agent({ connections: parallel + 1, headersTimeout: 600_000, bodyTimeout: 120_000 });
  const t0 = performance.now();
  try {
    const mres = await get(dispatcher, baseUrl, repository, `/v2/${repository}/manifests/${reference}`, { accept: MANIFEST_ACCEPT }, signal);
    const mbytes = Buffer.from(await mres.body.arrayBuffer());
    if (mres.statusCode !== 200) throw new Error(`manifest ${repository}:${reference} at ${baseUrl} answered ${mres.statusCode}: ${mbytes.toString().slice(0, 300)}`);
    const manifestDigest = `sha256:${createHash('sha256').update(mbytes).digest('hex')}`;
    if (reference.startsWith('sha256:') && reference !== manifestDigest) throw new Error(`manifest digest mismatch: ${manifestDigest}`);
    const manifest = JSON.parse(mbytes.toString()) as { config?: Descriptor; layers?: Descriptor[]; manifests?: unknown[] };
    if (!manifest.config || !manifest.layers) throw new Error(`${repository}:${reference} is not a single-platform image manifest`);

    const blobs: BlobTiming[] = [];
    let bytes = mbytes.length;
    const fetchBlob = async (d: Descriptor) => {
      const requestAt = performance.now();
      const res = await get(dispatcher, baseUrl, repository, `/v2/${repository}/blobs/${d.digest}`, {}, signal);
      const headersAt = performance.now();
      if (res.statusCode !== 200) {
        const text = await res.body.text();
        throw new Error(`blob ${d.digest} at ${baseUrl} answered ${res.statusCode}: ${text.slice(0, 300)}`);
      }
      const hash = createHash('sha256');
      let size = 0;
      let firstByteAt = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        if (size === 0) firstByteAt = performance.now();
        size += chunk.length;
        hash.update(chunk);
      }
      const digest = `sha256:${hash.digest('hex')}`;
      if (digest !== d.digest || size !== d.size) throw new Error(`blob ${d.digest} from ${baseUrl}: got ${size} bytes with ${digest}`);
      const done = performance.now();
      bytes += size;
      const worker = res.headers['x-mirror-worker'];
      blobs.push({
        digest: d.digest,
        size,
        requestAtMs: requestAt - t0,
        headersMs: headersAt - requestAt,
        firstByteMs: (firstByteAt || done) - requestAt,
        totalMs: done - requestAt,
        ...(worker !== undefined ? { worker: String(worker) } : {}),
      });
    };
    await fetchBlob(manifest.config);
    await beforeLayers?.();
    const have = new Set(options.skipLayers ?? []);
    const queue = manifest.layers.filter((l) => !have.has(l.digest));
    await Promise.all(
      Array.from({ length: Math.min(parallel, queue.length) }, async () => {
        for (let d = queue.shift(); d; d = queue.shift()) await fetchBlob(d);
      }),
    );
    return { ms: performance.now() - t0, bytes, manifestDigest, blobs, authorization: tokens.get(tokenKey(baseUrl, repository)) };
  } finally {
    await dispatcher.close().catch(() => undefined);
  }
}

// Forked by run.ts: answer { id, op, options } messages.
if (process.env.BENCH_PULL_CLIENT === '1' && process.send) {
  process.on('message', (msg: { id: number; op: 'pull' | 'pulls' | 'auth'; options: PullOptions; count?: number }) => {
    const work = async () => {
      if (msg.op === 'auth') return authorizationFor(msg.options.baseUrl, msg.options.repository, msg.options.reference);
      if (msg.op === 'pulls') {
        const count = msg.count ?? 1;
        let waiting = 0;
        let release!: () => void;
        const allReady = new Promise<void>((resolve) => (release = resolve));
        const barrier = () => {
          if (++waiting === count) release();
          return allReady;
        };
        return Promise.all(Array.from({ length: count }, () => pull(msg.options, barrier)));
      }
      return pull(msg.options);
    };
    work().then(
      (result) => process.send!({ id: msg.id, ok: true, result }),
      (err: unknown) => process.send!({ id: msg.id, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
