// The mirror's Prometheus metrics, on a registry of its own (no global default registry,
// so several mirrors in one test process do not collide).

import { Counter, Gauge, Histogram, Registry, type Aggregator } from 'prom-client';

export class MirrorMetrics {
  readonly registry = new Registry();
  private readonly requestCounters = new Map<string, { inc(): void }>();
  private readonly savingCounters = new Map<string, { bytes: { inc(n: number): void }; pulls: { inc(n: number): void } }>();

  /**
   * Gauges read at scrape time from the mirror's own state (cache size and objects, each
   * upstream's breaker), so the hot path never updates them.
   */
  observe(source: {
    cacheBytes(): number;
    cacheObjects(): number;
    breakers(): { upstream: string; state: 'closed' | 'open' | 'half-open' }[];
    downloadSlots(): { active: number; queued: number };
  }): void {
    const registers = [this.registry];
    // Workers (`workers: N`) share one cache: its size is not summed over them (prom-client's
    // AggregatorRegistry sums by default, right for counters and for per-process gauges).
    new Gauge({ name: 'mirror_cache_bytes', help: 'Bytes of verified content in the cache', registers, aggregator: 'max', collect() { this.set(source.cacheBytes()); } });
    new Gauge({ name: 'mirror_cache_objects', help: 'Blobs and manifests in the cache', registers, aggregator: 'max', collect() { this.set(source.cacheObjects()); } });
    new Gauge({ name: 'mirror_downloads_active', help: 'Blob downloads holding a slot of downloads.maxConcurrent', registers, collect() { this.set(source.downloadSlots().active); } });
    new Gauge({ name: 'mirror_downloads_queued', help: 'New blob downloads waiting for a slot', registers, collect() { this.set(source.downloadSlots().queued); } });
    new Gauge({
      name: 'mirror_upstream_up',
      help: 'Circuit breaker per upstream: 1 closed (up), 0.5 probing, 0 open (marked down)',
      labelNames: ['upstream'] as const,
      registers,
      aggregator: 'min',
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

  /** What an answer saved the upstream (per request, so the labelled children are cached too). */
  countSaving(upstream: string, reason: string, bytes: number, pulls: number): void {
    const key = `${upstream} ${reason}`;
    let child = this.savingCounters.get(key);
    if (!child) {
      child = { bytes: this.savedBytes.labels(upstream, reason), pulls: this.savedPulls.labels(upstream, reason) };
      this.savingCounters.set(key, child);
    }
    if (bytes > 0) child.bytes.inc(bytes);
    if (pulls > 0) child.pulls.inc(pulls);
  }

  readonly requests = this.counter('mirror_http_requests_total', 'Requests answered, by route, status and cache outcome', ['route', 'status', 'outcome']);
  readonly bytesServed = this.counter('mirror_bytes_served_total', 'Body bytes sent to clients, by where they came from (cache or upstream download)', ['source']);
  readonly upstreamRequests = this.counter('mirror_upstream_requests_total', 'Requests sent to upstream registries, by upstream, kind and status', ['upstream', 'kind', 'status']);
  readonly upstreamLatency = new Histogram({
    name: 'mirror_upstream_request_seconds',
    help: 'Time until an upstream answered with headers',
    labelNames: ['upstream', 'kind'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly downloadSegments = new Histogram({
    name: 'mirror_download_segments',
    help: 'Upstream connections a committed blob download used at most at once (1 = one stream; more = segmented)',
    buckets: [1, 2, 4, 8, 16, 32],
    registers: [this.registry],
  });
  readonly staleServed = this.counter('mirror_stale_served_total', 'Tag manifests served past their TTL because the upstream could not revalidate them', ['upstream', 'reason']);
  readonly downloadsInFlight = this.gauge('mirror_downloads_in_flight', 'Blob downloads from upstreams in progress');
  readonly downloadsRefused = this.counter('mirror_downloads_refused_total', 'New blob downloads refused with 429: the queue for a download slot was full or the wait too long');
  readonly downloadsAbandoned = this.counter('mirror_downloads_abandoned_total', 'Blob downloads cancelled because no client read them any more');
  readonly prefetchStarted = this.counter('mirror_prefetch_started_total', 'Blob downloads started by layer prefetch (an image manifest fetched from the upstream), by upstream', ['upstream']);
  readonly prefetchSkipped = this.counter(
    'mirror_prefetch_skipped_total',
    'Blobs of a fetched image manifest not prefetched, by upstream and reason (cached, downloading, too-big, unknown-size, not-distributable, no-room, queue-full, failed)',
    ['upstream', 'reason'],
  );
  readonly prefetchBytes = this.counter('mirror_prefetch_bytes_total', 'Blob bytes committed by prefetch downloads, by upstream', ['upstream']);
  readonly prefetchUnclaimedBytes = this.gauge(
    'mirror_prefetch_unclaimed_bytes',
    'Bytes of prefetched blobs no client has asked for yet (since the start): downloaded for nobody so far, by upstream',
    ['upstream'],
  );
  readonly digestMismatches = this.counter('mirror_digest_mismatches_total', 'Upstream content refused because it did not match its digest', ['upstream']);
  readonly evictions = this.counter('mirror_evictions_total', 'Objects evicted from the cache (least recently used first)');
  readonly evictedBytes = this.counter('mirror_evicted_bytes_total', 'Bytes evicted from the cache');
  readonly evictionLeaseHeld = this.gauge('mirror_eviction_lease_held', 'Shared bucket: 1 while this replica holds the eviction lease (it evicts for all replicas)', [], 'max');
  readonly evictionSkipped = this.counter('mirror_eviction_skipped_total', 'Shared bucket: eviction checks left to the replica holding the eviction lease');
  readonly rateLimitRemaining = this.gauge(
    'mirror_upstream_ratelimit_remaining',
    'The last ratelimit-remaining an upstream reported, per credential (its name, or anonymous), while its window lasts',
    ['upstream', 'credential'],
    'min',
  );
  readonly savedBytes = this.counter('mirror_saved_bytes_total', 'Blob bytes served without downloading them from the upstream (from the cache, or joining another client\'s download), by upstream and reason', ['upstream', 'reason']);
  readonly savedPulls = this.counter('mirror_saved_pulls_total', 'Image pulls (their first manifest GET) answered without a manifest GET upstream, by upstream and reason', ['upstream', 'reason']);
  readonly eventsSent = this.counter('mirror_events_sent_total', 'Pull events delivered, by sink (file, webhook)', ['sink']);
  readonly eventsDropped = this.counter('mirror_events_dropped_total', 'Pull events given up on, by sink and reason (queue-full, rejected, shutdown)', ['sink', 'reason']);
  readonly eventsFailed = this.counter('mirror_events_failed_total', 'Failed deliveries of pull events (a webhook POST or a file write that did not succeed; retried)', ['sink']);
  readonly eventsQueued = this.gauge('mirror_events_queued', 'Pull events waiting for delivery, by sink', ['sink']);

  private counter<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter<L>({ name, help, labelNames, registers: [this.registry] });
  }

  private gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[] = [], aggregator: Aggregator = 'sum'): Gauge<L> {
    return new Gauge<L>({ name, help, labelNames, registers: [this.registry], aggregator });
  }
}
