// HTTP to one upstream registry on undici: challenge-driven auth (the challenge learned
// once, tokens per credential and scope), redirects (Docker Hub sends blobs to a CDN:
// followed, and the upstream's Authorization never goes to another origin), bounded retries
// with back-off and jitter honouring Retry-After, connect/header/body-idle time-outs, and
// the upstream's rate-limit headers (per credential: the one with most pulls left is used).

import { setTimeout as sleep } from 'node:timers/promises';
import type { Readable } from 'node:stream';
import { Agent, EnvHttpProxyAgent, ProxyAgent, request, type Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { ANONYMOUS_CREDENTIAL, type UpstreamCredential } from '../config.js';
import { headerValue } from '../http/headers.js';
import { RegistryError } from '../oci/errors.js';
import { basicAuthorization, parseTokenResponse, parseWwwAuthenticate, TokenCache, type Challenge } from './auth.js';
import { CircuitBreaker } from './breaker.js';
import { ChallengeGate } from './challenge-gate.js';
import { CredentialPool, type CredentialQuota, type RateLimit } from './credentials.js';
import type { UpstreamRegistry } from './registry.js';
import type { TokenStore } from './token-store.js';

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path below the registry's base URL, e.g. `/v2/library/alpine/manifests/3.19`. */
  path: string;
  /** The repository whose pull scope the request needs; none for `/v2/`. */
  repository?: string;
  headers?: Record<string, string>;
  /** Aborts the request, its retries and its body (a cancelled download). */
  signal?: AbortSignal;
}

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable & { dump(opts?: { limit: number }): Promise<void>; text(): Promise<string> };
}

export interface UpstreamClientOptions {
  dispatcher: Dispatcher;
  tokens: TokenStore;
  clock: Clock;
  logger: Logger;
  retries: { attempts: number; baseDelayMs: number; maxDelayMs: number };
  breaker: { failures: number; cooldownMs: number };
}

const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504]);
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const USER_AGENT = 'registry-mirror/0.1 (+pull-through cache)';

/**
 * The connection pool for one upstream: direct, through its configured proxy, or through
 * the environment's HTTPS_PROXY/HTTP_PROXY (honouring NO_PROXY) when it names one.
 */
export function createUpstreamAgent(
  timeouts: { connectMs: number; headersMs: number; bodyIdleMs: number },
  options: { proxy?: string | undefined; maxConnections?: number; env?: NodeJS.ProcessEnv } = {},
): Dispatcher {
  const common = {
    connect: { timeout: timeouts.connectMs },
    headersTimeout: timeouts.headersMs,
    bodyTimeout: timeouts.bodyIdleMs,
    keepAliveTimeout: 30_000,
    ...(options.maxConnections ? { connections: options.maxConnections } : {}),
  };
  if (options.proxy) return new ProxyAgent({ uri: options.proxy, ...common });
  const env = options.env ?? process.env;
  if (env.HTTPS_PROXY || env.https_proxy || env.HTTP_PROXY || env.http_proxy) return new EnvHttpProxyAgent(common);
  return new Agent(common);
}

/** Seconds or an HTTP date → ms to wait; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | undefined, now: number): number | undefined {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
}

/** An error from undici or the network, in words for the client's error detail. */
export function describeNetworkError(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { code?: string; message?: string; cause?: { code?: string; message?: string } };
    const code = e.code ?? e.cause?.code;
    const message = e.cause?.message ?? e.message ?? String(err);
    return code ? `${code}: ${message}` : message;
  }
  return String(err);
}

/** What a request sent as Authorization: the header, and the bearer token in it. */
interface SentAuthorization {
  header: string;
  token: string | undefined;
}

export class UpstreamClient {
  readonly breaker: CircuitBreaker;
  private readonly challenges = new ChallengeGate();
  private readonly credentials: CredentialPool;
  private readonly origin: string;

  constructor(
    readonly registry: UpstreamRegistry,
    private readonly options: UpstreamClientOptions,
  ) {
    this.origin = new URL(registry.url).origin;
    this.breaker = new CircuitBreaker(options.breaker.failures, options.breaker.cooldownMs, options.clock);
    this.credentials = new CredentialPool(registry.credentials, options.clock);
  }

  /** The pulls left for the credential the next request would use (undefined: not reported). */
  get rateLimit(): RateLimit | undefined {
    return this.credentials.current();
  }

  /** Each credential's pulls left (by name, never the secret), then the anonymous ones'. */
  rateLimits(): CredentialQuota[] {
    return this.credentials.quotas();
  }

  /**
   * Send a GET or HEAD, retrying network errors and 429/5xx within the configured bounds.
   * Resolves with whatever final response the upstream gave (including 4xx/5xx after the
   * retries): the caller decides what a status means. Rejects with a RegistryError
   * (UNAVAILABLE) when the upstream could not be reached at all.
   */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const permit = this.breaker.acquire();
    if (!permit.allowed) {
      const seconds = Math.ceil(this.breaker.retryInMs() / 1000);
      throw new RegistryError('UNAVAILABLE', `upstream ${this.registry.name} is marked down after repeated failures; next try in ${seconds}s`, {
        status: 503,
        detail: { upstream: this.registry.name, breaker: this.breaker.state },
        headers: { 'retry-after': String(Math.max(1, seconds)) },
      });
    }
    let response: UpstreamResponse;
    try {
      response = await this.requestWithRetries(req);
    } catch (err) {
      // Our own cancellation says nothing about the upstream's health.
      if (req.signal?.aborted || (err instanceof RegistryError && err.code !== 'UNAVAILABLE')) this.breaker.release(permit.probe);
      else this.breaker.failure(permit.probe);
      throw req.signal?.aborted ? (req.signal.reason as Error) : err;
    }
    // A 5xx for a repository is first that request's failure (a client can provoke one on
    // purpose); only a 5xx for `/v2/` is the upstream's own at once (breaker.ts).
    if (response.status >= 500) this.breaker.failure(permit.probe, req.repository);
    else if (response.status === 429) this.breaker.release(permit.probe);
    else this.breaker.success(permit.probe);
    return response;
  }

  private async requestWithRetries(req: UpstreamRequest): Promise<UpstreamResponse> {
    const { attempts, baseDelayMs, maxDelayMs } = this.options.retries;
    // Total waiting across retries is bounded too, not only the count.
    const budgetMs = maxDelayMs * 2;
    let waited = 0;
    for (let attempt = 0; ; attempt++) {
      let response: UpstreamResponse | undefined;
      let failure: unknown;
      try {
        response = await this.send(req);
      } catch (err) {
        if (err instanceof RegistryError || req.signal?.aborted) throw err;
        failure = err;
      }
      const retryable = failure !== undefined || (response !== undefined && RETRYABLE_STATUS.has(response.status));
      if (!retryable || attempt >= attempts) {
        if (response) return response;
        throw this.unreachable(failure);
      }
      const backoff = Math.min(maxDelayMs, baseDelayMs * 2 ** attempt) * (0.5 + Math.random() / 2);
      const retryAfter = response ? parseRetryAfter(headerValue(response.headers, 'retry-after'), this.options.clock.now()) : undefined;
      const delay = retryAfter ?? backoff;
      if (waited + delay > budgetMs) {
        // A long Retry-After (Docker Hub's pull limit) is not worth waiting for here.
        if (response) return response;
        throw this.unreachable(failure);
      }
      if (response) await response.body.dump().catch(() => undefined);
      this.options.logger.debug(
        { upstream: this.registry.name, path: req.path, attempt: attempt + 1, delayMs: Math.round(delay), status: response?.status, err: failure ? describeNetworkError(failure) : undefined },
        'retrying upstream request',
      );
      waited += delay;
      await sleep(delay, undefined, { signal: req.signal });
    }
  }

  private unreachable(err: unknown): RegistryError {
    return new RegistryError('UNAVAILABLE', `upstream ${this.registry.name} is unreachable: ${describeNetworkError(err)}`, {
      status: 502,
      detail: { upstream: this.registry.name, cause: describeNetworkError(err) },
      cause: err,
    });
  }

  /**
   * One attempt, with the credential that has most pulls left. A pull refused because that
   * credential turned out spent (429, now reported at 0) goes once more with the next one.
   */
  private async send(req: UpstreamRequest): Promise<UpstreamResponse> {
    const countsPull = req.method === 'GET' && req.path.includes('/manifests/');
    for (let tries = 0; ; tries++) {
      const credential = this.credentials.pick(countsPull);
      let response: UpstreamResponse;
      try {
        response = await this.sendAs(req, credential);
      } finally {
        if (countsPull) this.credentials.settle(credential);
      }
      const switchable = response.status === 429 && credential && this.credentials.spent(credential) && tries < this.registry.credentials.length;
      if (!switchable) return response;
      await response.body.dump().catch(() => undefined);
    }
  }

  /** Authorise (after the first request's challenge), send, answer one 401 by re-negotiating, follow redirects. */
  private async sendAs(req: UpstreamRequest, credential: UpstreamCredential | undefined): Promise<UpstreamResponse> {
    const scope = req.repository ? `repository:${req.repository}:pull` : undefined;
    const url = new URL(this.registry.url + req.path);
    // An upper-tier mirror routes by ns, like a containerd mirror request.
    if (this.registry.sendNamespace && req.path.startsWith('/v2/') && req.path !== '/v2/') url.searchParams.set('ns', this.registry.name);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...req.headers };
    const { signal } = req;
    const turn = await this.challenges.turn();
    let sent: SentAuthorization | undefined;
    let response: UpstreamResponse;
    try {
      sent = turn.challenge && (await this.authorization(turn.challenge, scope, credential, undefined));
      response = await this.dispatch(url, req.method, headers, sent?.header, credential, signal);
      if (response.status === 401) {
        const challenges = parseWwwAuthenticate(headerValue(response.headers, 'www-authenticate'));
        this.challenges.learn(challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic'));
      } else if (!sent) this.challenges.learn(undefined);
    } finally {
      // The requests waiting for the first challenge go now, while this one gets its token.
      if (turn.probe) this.challenges.release();
    }
    if (response.status === 401) {
      await response.body.dump().catch(() => undefined);
      // The token may have expired mid-pull, or the challenge is new: negotiate once more.
      const challenge = this.challenges.current;
      const retry = challenge && (await this.authorization(challenge, scope ?? challenge.params.scope, credential, sent?.token));
      if (retry) sent = retry;
      // Without one, re-send to hand the caller a fresh 401 with a readable body.
      response = await this.dispatch(url, req.method, headers, retry?.header, credential, signal);
    }
    return this.followRedirects(url, req.method, headers, sent?.header, response, credential, signal);
  }

  private async followRedirects(
    start: URL,
    method: 'GET' | 'HEAD',
    headers: Record<string, string>,
    authorization: string | undefined,
    first: UpstreamResponse,
    credential: UpstreamCredential | undefined,
    signal: AbortSignal | undefined,
  ): Promise<UpstreamResponse> {
    let response = first;
    let url = start;
    for (let hops = 0; REDIRECT_STATUS.has(response.status); hops++) {
      const location = headerValue(response.headers, 'location');
      if (!location || hops >= MAX_REDIRECTS) return response;
      await response.body.dump().catch(() => undefined);
      url = new URL(location, url);
      // Never hand the upstream's credentials to another origin (Docker Hub's CDN).
      const auth = url.origin === this.origin ? authorization : undefined;
      response = await this.dispatch(url, method, headers, auth, credential, signal);
    }
    return response;
  }

  private async dispatch(
    url: URL,
    method: 'GET' | 'HEAD',
    headers: Record<string, string>,
    authorization: string | undefined,
    credential: UpstreamCredential | undefined,
    signal: AbortSignal | undefined,
  ): Promise<UpstreamResponse> {
    const all = authorization ? { ...headers, authorization } : headers;
    const res = await request(url, { method, headers: all, dispatcher: this.options.dispatcher, signal });
    // Sent without Authorization (a probe, a CDN), an answer's count is the anonymous one.
    this.credentials.record(authorization ? credential : undefined, res.headers);
    return { status: res.statusCode, headers: res.headers, body: res.body as unknown as UpstreamResponse['body'] };
  }

  /**
   * The Authorization for a scope and credential, from what the challenge asked for; a
   * bearer token the upstream just refused (`rejected`) is replaced.
   */
  private async authorization(
    challenge: Challenge,
    scope: string | undefined,
    credential: UpstreamCredential | undefined,
    rejected: string | undefined,
  ): Promise<SentAuthorization | undefined> {
    if (challenge.scheme === 'basic') return credential ? { header: basicAuthorization(credential), token: undefined } : undefined;
    if (challenge.scheme !== 'bearer' || !challenge.params.realm) return undefined;
    const realm = challenge.params.realm;
    const service = challenge.params.service ?? '';
    // Tokens are per credential: one fetched with A is never spent on B's pulls.
    const key = TokenCache.key(`${this.registry.name}\u0000${credential?.name ?? ANONYMOUS_CREDENTIAL}`, service, scope ?? '');
    const fetch = () => this.fetchToken(realm, service, scope, credential);
    const token = rejected ? await this.options.tokens.replace(key, rejected, fetch) : await this.options.tokens.token(key, fetch);
    return { header: `Bearer ${token}`, token };
  }

  private async fetchToken(realm: string, service: string, scope: string | undefined, credential: UpstreamCredential | undefined) {
    const url = new URL(realm);
    if (service) url.searchParams.set('service', service);
    if (scope) url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT };
    if (credential) headers.authorization = basicAuthorization(credential);
    let res;
    try {
      res = await request(url, { method: 'GET', headers, dispatcher: this.options.dispatcher });
    } catch (err) {
      throw new RegistryError('UNAVAILABLE', `token service of ${this.registry.name} is unreachable: ${describeNetworkError(err)}`, {
        status: 502,
        detail: { upstream: this.registry.name, realm: url.origin, cause: describeNetworkError(err) },
        cause: err,
      });
    }
    const text = await res.body.text();
    if (res.statusCode !== 200) {
      const code = res.statusCode === 429 ? 'TOOMANYREQUESTS' : res.statusCode === 401 || res.statusCode === 403 ? 'DENIED' : 'UNAVAILABLE';
      throw new RegistryError(code, `token service of ${this.registry.name} answered ${res.statusCode}`, {
        status: code === 'UNAVAILABLE' ? 502 : undefined,
        detail: { upstream: this.registry.name, status: res.statusCode, scope },
      });
    }
    try {
      return parseTokenResponse(JSON.parse(text), this.options.clock.now());
    } catch (err) {
      throw new RegistryError('UNAVAILABLE', `token service of ${this.registry.name} answered garbage: ${(err as Error).message}`, {
        status: 502,
        detail: { upstream: this.registry.name },
      });
    }
  }
}
