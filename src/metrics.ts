// The mirror's Prometheus metrics, on a registry of its own (no global default registry,
// so several mirrors in one test process do not collide).

import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export class MirrorMetrics {
  readonly registry = new Registry();
  private readonly requestCounters = new Map<string, { inc(): void }>();

  /**
   * Gauges read at scrape time from the mirror's own state (cache size and objects, each
   * upstream's breaker), so the hot path never updates them.
   */
  observe(source: {
    cacheBytes(): number;
    cacheObjects(): number;
    breakers(): { upstream: string; state: 'closed' | 'open' | 'half-open' }[];
  }): void {
    new Gauge({
      name: 'mirror_cache_bytes',
      help: 'Bytes of verified content in the cache',
      registers: [this.registry],
      collect() {
        this.set(source.cacheBytes());
      },
    });
    new Gauge({
      name: 'mirror_cache_objects',
      help: 'Blobs and manifests in the cache',
      registers: [this.registry],
      collect() {
        this.set(source.cacheObjects());
      },
    });
    new Gauge({
      name: 'mirror_upstream_up',
      help: 'Circuit breaker per upstream: 1 closed (up), 0.5 probing, 0 open (marked down)',
      labelNames: ['upstream'] as const,
      registers: [this.registry],
      collect() {
        for (const b of source.breakers()) this.set({ upstream: b.upstream }, b.state === 'closed' ? 1 : b.state === 'half-open' ? 0.5 : 0);
      },
    });
  }

  /** Per request: a cached labelled child, so the hot path does not hash labels. */
  countRequest(route: string, status: number, outcome: string): void {
    const key = `${route} ${status} ${outcome}`;
    let child = this.requestCounters.get(key);
    if (!child) {
      child = this.requests.labels(route, String(status), outcome);
      this.requestCounters.set(key, child);
    }
    child.inc();
  }

  readonly requests = new Counter({
    name: 'mirror_http_requests_total',
    help: 'Requests answered, by route, status and cache outcome',
    labelNames: ['route', 'status', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly bytesServed = new Counter({
    name: 'mirror_bytes_served_total',
    help: 'Body bytes sent to clients, by where they came from (cache or upstream download)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly upstreamRequests = new Counter({
    name: 'mirror_upstream_requests_total',
    help: 'Requests sent to upstream registries, by upstream, kind and status',
    labelNames: ['upstream', 'kind', 'status'] as const,
    registers: [this.registry],
  });
  readonly upstreamLatency = new Histogram({
    name: 'mirror_upstream_request_seconds',
    help: 'Time until an upstream answered with headers',
    labelNames: ['upstream', 'kind'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly staleServed = new Counter({
    name: 'mirror_stale_served_total',
    help: 'Tag manifests served past their TTL because the upstream could not revalidate them',
    labelNames: ['upstream', 'reason'] as const,
    registers: [this.registry],
  });
  readonly downloadsInFlight = new Gauge({
    name: 'mirror_downloads_in_flight',
    help: 'Blob downloads from upstreams in progress',
    registers: [this.registry],
  });
  readonly digestMismatches = new Counter({
    name: 'mirror_digest_mismatches_total',
    help: 'Upstream content refused because it did not match its digest',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly evictions = new Counter({
    name: 'mirror_evictions_total',
    help: 'Objects evicted from the cache (least recently used first)',
    registers: [this.registry],
  });
  readonly evictedBytes = new Counter({
    name: 'mirror_evicted_bytes_total',
    help: 'Bytes evicted from the cache',
    registers: [this.registry],
  });
  readonly rateLimitRemaining = new Gauge({
    name: 'mirror_upstream_ratelimit_remaining',
    help: 'The last ratelimit-remaining an upstream reported',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
}
