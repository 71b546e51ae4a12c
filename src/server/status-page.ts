// GET / : a plain, fast HTML page for operators (no build toolchain): cache size against its
// cap, hit ratio, top repositories, recent pulls, and each upstream's health and remaining
// rate limit. GET /status.json gives the same data to scripts.

import type { Mirror } from '../mirror.js';
import { formatBytes } from '../units.js';

export interface RecentPull {
  at: number;
  upstream: string;
  repository: string;
  reference: string;
  outcome: string;
  status: number;
}

export interface StatusData {
  generatedAt: string;
  upstreams: {
    name: string;
    url: string;
    breaker: string;
    rateLimitRemaining: number | null;
    rateLimitLimit: number | null;
    /** Pulls left per credential (by name; `anonymous` last). */
    credentials: { name: string; remaining: number | null; limit: number | null }[];
    ttlSeconds: number;
  }[];
  cache: { bytes: number; maxSize: number; objects: number };
  requests: { total: number; hits: number; hitRatio: number | null };
  topRepositories: { repository: string; pulls: number; bytes: number }[];
  recentPulls: RecentPull[];
  offline: boolean;
  downloadsInFlight: number;
}

export function statusData(mirror: Mirror, recent: RecentPull[]): StatusData {
  mirror.flushIndex();
  const usage = mirror.index.usage();
  const counters = mirror.index.counters();
  const hits = (counters['requests.hit'] ?? 0) + (counters['requests.revalidated'] ?? 0) + (counters['requests.stale'] ?? 0);
  const total = hits + (counters['requests.miss'] ?? 0) + (counters['requests.coalesced'] ?? 0);
  return {
    generatedAt: new Date(mirror.clock.now()).toISOString(),
    upstreams: mirror.selector.upstreams.map((u) => {
      const client = mirror.upstreams.clientFor(u.name);
      return {
        name: u.name,
        url: u.url,
        breaker: client?.breaker.state ?? 'closed',
        rateLimitRemaining: client?.rateLimit?.remaining ?? null,
        rateLimitLimit: client?.rateLimit?.limit ?? null,
        credentials: (client?.rateLimits() ?? []).map((q) => ({ name: q.credential, remaining: q.remaining ?? null, limit: q.limit ?? null })),
        ttlSeconds: Math.round(u.ttlMs / 1000),
      };
    }),
    cache: { bytes: usage.bytes, maxSize: mirror.config.storage.maxSize, objects: usage.blobs + usage.manifests },
    requests: { total, hits, hitRatio: total > 0 ? hits / total : null },
    topRepositories: mirror.index.topRepositories(10).map((r) => ({ repository: `${r.upstream}/${r.repo}`, pulls: r.pulls, bytes: r.bytes })),
    recentPulls: [...recent].reverse(),
    offline: mirror.config.offline,
    downloadsInFlight: mirror.downloads.size,
  };
}

const escape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function renderStatusPage(d: StatusData): string {
  const pct = d.cache.maxSize > 0 ? Math.min(100, (100 * d.cache.bytes) / d.cache.maxSize) : 0;
  const ratio = d.requests.hitRatio === null ? '–' : `${(d.requests.hitRatio * 100).toFixed(1)}%`;
  const rows = (cells: string[][]) => cells.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>registry-mirror</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 1rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;min-width:14rem}
.big{font-size:1.6rem;font-weight:600}.bar{height:8px;background:#eee;border-radius:4px;overflow:hidden;margin-top:.5rem}
.bar>div{height:100%;background:#2a7}table{border-collapse:collapse;background:#fff;min-width:40rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}th{background:#f0f0f0}
.closed{color:#2a7}.open{color:#c33}.half-open{color:#c80}.muted{color:#888}
</style></head><body>
<h1>registry-mirror${d.offline ? ' <span class="open">(offline)</span>' : ''}</h1>
<div class="cards">
<div class="card" id="cache"><div>Cache</div><div class="big">${escape(formatBytes(d.cache.bytes))}</div>
<div class="muted">${d.cache.maxSize > 0 ? `of ${escape(formatBytes(d.cache.maxSize))} (${pct.toFixed(1)}%)` : 'no size cap'} · ${d.cache.objects} objects</div>
${d.cache.maxSize > 0 ? `<div class="bar"><div style="width:${pct.toFixed(1)}%"></div></div>` : ''}</div>
<div class="card" id="hits"><div>Hit ratio</div><div class="big">${ratio}</div><div class="muted">${d.requests.hits} of ${d.requests.total} requests from the cache</div></div>
<div class="card"><div>Downloads in flight</div><div class="big">${d.downloadsInFlight}</div></div>
</div>
<h2>Upstreams</h2>
<table id="upstreams"><tr><th>Upstream</th><th>URL</th><th>Health</th><th>Rate limit left</th><th>Tag TTL</th></tr>
${rows(d.upstreams.map((u) => [escape(u.name), escape(u.url), `<span class="${u.breaker}">${u.breaker === 'closed' ? 'up' : u.breaker === 'open' ? 'down' : 'probing'}</span>`, u.credentials.length > 1 ? u.credentials.map((c) => `${escape(c.name)}: ${c.remaining ?? '?'}`).join(' · ') : u.rateLimitRemaining === null ? '<span class="muted">unknown</span>' : `${u.rateLimitRemaining}${u.rateLimitLimit ? ` of ${u.rateLimitLimit}` : ''}`, `${u.ttlSeconds}s`]))}
</table>
<h2>Top repositories</h2>
<table id="top"><tr><th>Repository</th><th>Pulls</th><th>Served</th></tr>
${d.topRepositories.length ? rows(d.topRepositories.map((r) => [escape(r.repository), String(r.pulls), escape(formatBytes(r.bytes))])) : '<tr><td colspan="3" class="muted">nothing pulled yet</td></tr>'}
</table>
<h2>Recent pulls</h2>
<table id="recent"><tr><th>When</th><th>Image</th><th>Outcome</th><th>Status</th></tr>
${d.recentPulls.length ? rows(d.recentPulls.map((p) => [escape(new Date(p.at).toISOString().replace('T', ' ').slice(0, 19)), escape(`${p.upstream}/${p.repository}:${p.reference}`), escape(p.outcome), String(p.status)])) : '<tr><td colspan="4" class="muted">none yet</td></tr>'}
</table>
<p class="muted">Generated ${escape(d.generatedAt)} · <a href="/metrics">metrics</a> · <a href="/status.json">status.json</a></p>
</body></html>
`;
}
