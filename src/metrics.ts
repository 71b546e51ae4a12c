// The mirror's Prometheus metrics, on a registry of its own (no global default registry,
// so several mirrors in one test process do not collide).

import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export class MirrorMetrics {
  readonly registry = new Registry();
  private readonly requestCounters = new Map<string, { inc(): void }>();

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
  readonly downloadResumes = new Counter({
    name: 'mirror_download_resumes_total',
    help: 'Blob downloads resumed with a Range request after the upstream connection dropped',
    registers: [this.registry],
  });
  readonly digestMismatches = new Counter({
    name: 'mirror_digest_mismatches_total',
    help: 'Upstream content refused because it did not match its digest',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly rateLimitRemaining = new Gauge({
    name: 'mirror_upstream_ratelimit_remaining',
    help: 'The last ratelimit-remaining an upstream reported',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
}
