// GET / : a plain, fast HTML page for operators (no build toolchain, no script, no external
// asset): first what the mirror saved its upstreams (today, and per day for 30 days as an
// inline SVG chart) and the pulls each upstream credential has left; then cache size against
// its cap, hit ratio, top repositories, recent pulls, and each upstream's health and remaining
// rate limit. GET /status.json gives the same data to scripts.

import type { Mirror } from '../mirror.js';
import { formatBytes } from '../units.js';
import { savedReport, type SavedReport } from './savings.js';

export interface RecentPull {
  at: number;
  upstream: string;
  repository: string;
  reference: string;
  outcome: string;
  status: number;
}

/**
 * Pulls an upstream has left for one credential, from its last `ratelimit-remaining`
 * (`updatedAt`: the upstream's last report, for any of its credentials).
 */
export interface PullQuota {
  upstream: string;
  /** The credential's label (never its secret): the user name, or `anonymous`. */
  credential: string;
  remaining: number | null;
  limit: number | null;
  /** When the upstream last reported it (ISO time), or null. */
  updatedAt: string | null;
}

export interface StatusData {
  generatedAt: string;
  saved: SavedReport;
  pullQuota: PullQuota[];
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
    saved: savedReport(mirror),
    // One entry per credential (and anonymous), each with what its upstream last reported.
    pullQuota: mirror.selector.upstreams.flatMap((u) => {
      const client = mirror.upstreams.clientFor(u.name);
      const updatedAt = client?.rateLimit ? new Date(client.rateLimit.updatedAt).toISOString() : null;
      return (client?.rateLimits() ?? []).map((q) => ({ upstream: u.name, credential: q.credential, remaining: q.remaining ?? null, limit: q.limit ?? null, updatedAt }));
    }),
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
const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/**
 * A bar per day, today last (highlighted), drawn as inline SVG: no script, no external asset.
 * Each bar's <title> is its day and value (a tooltip, and what screen readers read).
 */
function barChart(id: string, label: string, days: { day: string; value: number }[], format: (n: number) => string): string {
  const width = 460;
  const height = 150;
  const left = 64;
  const bottom = 22;
  const top = 10;
  const plotHeight = height - top - bottom;
  const slot = (width - left - 4) / days.length;
  const max = Math.max(0, ...days.map((d) => d.value));
  const bars = days
    .map((d, i) => {
      const h = max > 0 ? Math.max(d.value > 0 ? 1 : 0, (d.value / max) * plotHeight) : 0;
      const x = left + i * slot + 1;
      const y = top + plotHeight - h;
      const today = i === days.length - 1;
      return `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(slot - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${today ? '#1a7f55' : '#6cbf98'}"><title>${escape(d.day)}: ${escape(format(d.value))}</title></rect>`;
    })
    .join('');
  const axisY = top + plotHeight;
  const tick = (i: number, anchor: string) =>
    `<text x="${(left + i * slot + slot / 2).toFixed(1)}" y="${height - 6}" text-anchor="${anchor}">${escape(days[i]!.day.slice(5))}</text>`;
  return `<svg id="${id}" class="chart" role="img" aria-label="${escape(label)}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="11" fill="#555">
${max > 0 ? `<text x="${left - 6}" y="${top + 8}" text-anchor="end">${escape(format(max))}</text>` : ''}<text x="${left - 6}" y="${axisY}" text-anchor="end">0</text>
<line x1="${left}" y1="${top}" x2="${width - 4}" y2="${top}" stroke="#eee"/><line x1="${left}" y1="${axisY + 0.5}" x2="${width - 4}" y2="${axisY + 0.5}" stroke="#bbb"/>
${bars}
${tick(0, 'start')}${tick(Math.floor(days.length / 2), 'middle')}${tick(days.length - 1, 'end')}
${max === 0 ? `<text x="${(left + width) / 2}" y="${top + plotHeight / 2}" text-anchor="middle" fill="#888">nothing saved yet</text>` : ''}
</svg>`;
}

function savedSection(d: StatusData): string {
  const { saved } = d;
  const reasons = Object.entries(saved.today.byReason)
    .sort((a, b) => b[1].bytes - a[1].bytes || b[1].pulls - a[1].pulls)
    .map(([reason, f]) => `${escape(reason)}: ${[f.bytes > 0 ? escape(formatBytes(f.bytes)) : '', f.pulls > 0 ? plural(f.pulls, 'pull') : ''].filter(Boolean).join(', ')}`)
    .join(' · ');
  const quota = d.pullQuota
    .map((q) => `<div>${escape(q.upstream)} <span class="muted">(${escape(q.credential)})</span>: <b>${q.remaining === null ? '<span class="muted">unknown</span>' : `${q.remaining}${q.limit !== null ? ` of ${q.limit}` : ''}`}</b></div>`)
    .join('');
  const dailyRows = [...saved.daily].reverse().map((day) => `<tr><td>${escape(day.day)}</td><td>${escape(formatBytes(day.bytes))}</td><td>${day.pulls}</td></tr>`).join('');
  return `<h2>What the mirror saved its upstreams</h2>
<div class="cards" id="saved">
<div class="card" id="saved-today"><div>Saved today <span class="muted">(${escape(saved.today.day)}, UTC)</span></div><div class="big">${escape(formatBytes(saved.today.bytes))}</div>
<div>${plural(saved.today.pulls, 'pull')} not sent upstream</div><div class="muted">${reasons || 'nothing yet today'}</div></div>
<div class="card" id="saved-30d"><div>Last 30 days</div><div class="big">${escape(formatBytes(saved.last30Days.bytes))}</div><div>${plural(saved.last30Days.pulls, 'pull')} not sent upstream</div></div>
<div class="card" id="quota"><div>Pulls left upstream</div>${quota || '<div class="muted">no upstreams</div>'}</div>
</div>
<div class="charts">
<figure><figcaption>Upstream bytes saved per day</figcaption>${barChart('saved-bytes-chart', 'Upstream bytes saved per day, last 30 days', saved.daily.map((x) => ({ day: x.day, value: x.bytes })), formatBytes)}</figure>
<figure><figcaption>Upstream pulls saved per day</figcaption>${barChart('saved-pulls-chart', 'Upstream pulls saved per day, last 30 days', saved.daily.map((x) => ({ day: x.day, value: x.pulls })), (n) => plural(Math.round(n), 'pull'))}</figure>
</div>
<details><summary>Per day</summary><table id="saved-daily"><tr><th>Day (UTC)</th><th>Bytes saved</th><th>Pulls saved</th></tr>${dailyRows}</table></details>`;
}

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
.charts{display:flex;gap:1rem;flex-wrap:wrap;margin-top:1rem}figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem}
figcaption{font-weight:600;margin-bottom:.25rem}.chart{max-width:100%;height:auto;display:block}details{margin-top:.75rem}
</style></head><body>
<h1>registry-mirror${d.offline ? ' <span class="open">(offline)</span>' : ''}</h1>
${savedSection(d)}
<h2>Cache</h2>
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
