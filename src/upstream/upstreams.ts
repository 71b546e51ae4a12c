// The configured upstream registries as the core uses them: one HTTP client (connection
// pool, token cache, circuit breaker) per upstream, its bandwidth cap, and every request
// metered (count by status, latency, the last ratelimit-remaining per credential).

import type { Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { MirrorMetrics } from '../metrics.js';
import { TokenCache } from './auth.js';
import { createUpstreamAgent, describeNetworkError, UpstreamClient, type UpstreamRequest, type UpstreamResponse } from './client.js';
import { ByteRateLimiter } from './rate-limiter.js';
import type { UpstreamRegistry } from './registry.js';
import type { Route } from './selector.js';
import type { UpstreamCallKind } from './status-errors.js';
import { TokenStore } from './token-store.js';

export class Upstreams {
  private readonly clients = new Map<string, UpstreamClient>();
  private readonly agents: Dispatcher[] = [];
  /** Per upstream: the bandwidth cap shared by all its downloads. */
  private readonly bandwidth = new Map<string, ByteRateLimiter>();

  constructor(
    registries: readonly UpstreamRegistry[],
    config: Pick<Config, 'timeouts' | 'retries' | 'breaker'>,
    private readonly deps: { clock: Clock; logger: Logger; metrics: MirrorMetrics },
  ) {
    const tokens = new TokenStore(new TokenCache(deps.clock), deps.clock, (key, err) => {
      // The key names upstream, credential, service and scope; never a secret.
      deps.logger.warn({ token: key.split('\u0000').join(' '), err: describeNetworkError(err) }, 'background token renewal failed; the next request fetches one');
    });
    for (const u of registries) {
      const dispatcher = createUpstreamAgent(config.timeouts, { proxy: u.proxy, maxConnections: u.maxConnections });
      this.agents.push(dispatcher);
      if (u.maxBytesPerSecond > 0) this.bandwidth.set(u.name, new ByteRateLimiter(u.maxBytesPerSecond));
      this.clients.set(
        u.name,
        new UpstreamClient(u, { dispatcher, tokens, clock: deps.clock, logger: deps.logger, retries: config.retries, breaker: config.breaker }),
      );
    }
  }

  /** The client of a configured upstream, by name. */
  clientFor(name: string): UpstreamClient | undefined {
    return this.clients.get(name);
  }

  all(): UpstreamClient[] {
    return [...this.clients.values()];
  }

  /** The bandwidth cap of an upstream's downloads, when it has one. */
  bandwidthOf(name: string): ByteRateLimiter | undefined {
    return this.bandwidth.get(name);
  }

  /** Send a GET or HEAD for `route`'s repository, metered. */
  async request(route: Route, kind: UpstreamCallKind, req: Omit<UpstreamRequest, 'repository'>): Promise<UpstreamResponse> {
    const started = performance.now();
    const name = route.upstream.name;
    const client = this.clients.get(name);
    if (!client) throw new Error(`no client for upstream ${name}`);
    const { metrics } = this.deps;
    try {
      const response = await client.request({ ...req, repository: route.repository });
      metrics.upstreamRequests.inc({ upstream: name, kind, status: String(response.status) });
      metrics.upstreamLatency.observe({ upstream: name, kind }, (performance.now() - started) / 1000);
      for (const q of client.rateLimits()) {
        if (q.remaining !== undefined) metrics.rateLimitRemaining.set({ upstream: name, credential: q.credential }, q.remaining);
        else metrics.rateLimitRemaining.remove({ upstream: name, credential: q.credential });
      }
      return response;
    } catch (err) {
      metrics.upstreamRequests.inc({ upstream: name, kind, status: req.signal?.aborted ? 'cancelled' : 'error' });
      throw err;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.close().catch(() => undefined)));
  }
}
