// The first pull (issue 15) as measurements, side by side in one table with ratios:
//  - slowlink: cold pulls of the 256 MiB image and of a 12-layer image through a shaping front
//    that paces every upstream connection (8 MiB/s, 50 ms), the way dockerd pulls (3 layers at a
//    time): the mirror's variants (MIRROR_VARIANTS) vs distribution's proxy vs a direct pull;
//  - firstpull, on the unshaped loopback link: what the defaults cost against `segments: 1`
//    (median of LOOPBACK_ROUNDS cold pulls each), the upstream round trips of a cold pull of a
//    new repository, and the prefetch cost: the bytes the mirror downloads that no client asked
//    for when a client that has 10 of the 12 layers pulls the image.
// Each pull is on a freshly started system (empty cache).
import type { Image } from '../fixtures/oci-images.js';
import { bigLayer, buildImage } from '../fixtures/oci-images.js';
import type { RealUpstream } from '../fixtures/real-upstream.js';
import type { PullOptions, PullResult } from './pull-client.js';
import { startShapingFront } from './slow-link.js';
import { formatPeaks, mergePeaks, sampleRss, startDistributionProxy, startMirror, type ProcessPeak, type RunningSystem } from './systems.js';
import { median, settle } from './tools.js';

const MiB = 1024 * 1024;
const LOOPBACK_ROUNDS = 3;
/** Layers of the 12-layer image, MiB: 146 MiB in all, from 40 down to 2. */
const TWELVE_LAYERS_MIB = [40, 28, 20, 14, 10, 8, 6, 6, 5, 4, 3, 2];
/** The client of the prefetch-cost row has all layers but the last ones (an application's update). */
const LAYERS_THE_CLIENT_HAS = 10;

/**
 * A configuration of the mirror under test. `config` is its config file (none: the defaults),
 * `args` more `serve` options. A build that rejects them (an option from a branch that has
 * not landed yet) runs `standIn` instead, and the table says so.
 */
export interface MirrorVariant {
  name: string;
  config?: Record<string, unknown>;
  args?: string[];
  standIn?: { config?: Record<string, unknown>; args?: string[]; why: string };
  /** Also in the loopback and prefetch rows (otherwise on the slow link only). */
  everywhere: boolean;
}

/** The first variant is the reference of the ratio columns: the mirror as installed, no tuning. */
export const MIRROR_VARIANTS: MirrorVariant[] = [
  { name: 'mirror, defaults', everywhere: true },
  {
    name: 'mirror, segments: 1, prefetch: false',
    config: { downloads: { segments: 1 }, prefetch: false },
    standIn: { config: { downloads: { segments: 1 } }, why: 'this build has no `prefetch` option (issue 15 not merged): `segments: 1` alone' },
    everywhere: true,
  },
  // Fixed segments, as the slow-link row measured before adaptive segments (issue 8's setting).
  { name: 'mirror, segments: 4', config: { downloads: { segments: 4, segmentThreshold: '16MiB' } }, everywhere: false },
];

/**
 * Variants for an experiment, from BENCH_VARIANTS (a JSON list of {name, config}), added after
 * the standard ones on the slow link: e.g. '[{"name":"prefetch 8","config":{"prefetch":{"concurrency":8}}}]'.
 */
function extraVariants(): MirrorVariant[] {
  const text = process.env.BENCH_VARIANTS;
  if (!text) return [];
  const list = JSON.parse(text) as { name: string; config?: Record<string, unknown>; args?: string[] }[];
  return list.map((v) => ({ name: v.name, config: v.config, args: v.args, everywhere: false }));
}

export interface BenchImage {
  repository: string;
  image: Image;
  /** How the table names it. */
  title: string;
}

export async function twelveLayerImage(): Promise<Image> {
  const layers = await Promise.all(TWELVE_LAYERS_MIB.map((mib, i) => bigLayer(mib * MiB, `bench-twelve-${i}`)));
  return buildImage({ format: 'docker', layers, label: 'bench-twelve' });
}

export const imageBytes = (image: Image) => image.manifest.bytes.length + image.config.size + image.layers.reduce((a, l) => a + l.size, 0);

export interface FirstPullContext {
  upstream: RealUpstream;
  client: { pull(options: PullOptions): Promise<PullResult> };
  workDir: string;
  log: (msg: string) => void;
  awaitIdle: () => Promise<void>;
  withDistribution: boolean;
  /** The images of the slow-link and loopback rows. */
  images: BenchImage[];
  /** The 12-layer image: round trips and prefetch cost. */
  twelve?: BenchImage;
  slowLink?: { bytesPerSecond: number; latencyMs: number };
  loopback: boolean;
  variants?: MirrorVariant[];
}

export interface Check {
  target: string;
  ok: boolean;
  detail: string;
}

interface RoundTrips {
  requests: number;
  tokens: number;
  unauthorized: number;
  blobGets: number;
}

interface Cell {
  value: number;
  text: string;
}

const DIRECT = 'direct pull';
const DISTRIBUTION = 'distribution (proxy)';

const ms = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(0)} ms`);
const mib = (v: number) => `${(v / MiB).toFixed(1)} MiB`;

export async function firstPull(ctx: FirstPullContext): Promise<{ table: string; checks: Check[]; notes: string[] }> {
  const { upstream, client, workDir, log } = ctx;
  const variants = ctx.variants ?? [...MIRROR_VARIANTS, ...extraVariants()];
  const reference = variants[0]!.name;
  const notes = new Set<string>();
  const rejected = new Map<string, string>();
  const rows = new Map<string, Map<string, Cell>>();
  const set = (row: string, column: string, cell: Cell) => {
    if (!rows.has(row)) rows.set(row, new Map());
    rows.get(row)!.set(column, cell);
  };

  /** Start a variant; once a build rejects it, its stand-in from then on. */
  const startVariant = async (v: MirrorVariant, upstreamUrl: string): Promise<RunningSystem> => {
    const standIn = v.standIn;
    if (!rejected.has(v.name) || !standIn) {
      try {
        return await startMirror({ upstreamUrl, workDir, config: v.config, extraArgs: v.args });
      } catch (err) {
        const text = String(err);
        if (!standIn || !/invalid configuration|unknown option/.test(text)) throw err;
        const reason = /invalid configuration[^\n]*\n\s*-?\s*([^\n]+)|(unknown option[^\n]*)/.exec(text);
        rejected.set(v.name, (reason?.[1] ?? reason?.[2] ?? 'rejected').trim());
        notes.add(`“${v.name}”: this build rejects it (${rejected.get(v.name)}); measured instead: ${standIn.why}.`);
        log(`first pull: ${v.name}: rejected by this build (${rejected.get(v.name)}); measuring the stand-in (${standIn.why})`);
      }
    }
    return startMirror({ upstreamUrl, workDir, config: standIn.config, extraArgs: standIn.args });
  };

  /** One cold pull on a freshly started system (undefined: directly from `baseUrl`). */
  const coldPull = async (column: string, start: (() => Promise<RunningSystem>) | undefined, baseUrl: string, options: Omit<PullOptions, 'baseUrl'>) => {
    await ctx.awaitIdle();
    const sys = start ? await start() : undefined;
    const sampler = sys && sampleRss(sys);
    try {
      upstream.resetCounts();
      const tokensBefore = upstream.token.issued.length;
      const result = await client.pull({ ...options, baseUrl: sys?.url ?? baseUrl, timeoutMs: 230_000 });
      await settle(upstream);
      return {
        result,
        rss: sampler?.stop(),
        upstreamBytes: upstream.bytes({}),
        requests: upstream.requests.length,
        unauthorized: upstream.count({ status: 401 }),
        blobGets: upstream.count({ method: 'GET', kind: 'blob' }),
        tokens: upstream.token.issued.length - tokensBefore,
      };
    } catch (err) {
      throw new Error(`first pull: ${column}: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      sampler?.stop();
      await sys?.stop();
    }
  };

  type Column = { name: string; start?: (upstreamUrl: string) => Promise<RunningSystem> };
  const columns = (all: boolean): Column[] => [
    ...variants.filter((v) => all || v.everywhere).map((v) => ({ name: v.name, start: (u: string) => startVariant(v, u) })),
    ...(ctx.withDistribution ? [{ name: DISTRIBUTION, start: (u: string) => startDistributionProxy({ upstreamUrl: u, workDir }) }] : []),
    { name: DIRECT },
  ];
  const rssByColumn = new Map<string, ProcessPeak[]>();

  // The slow link: every upstream connection paced, 50 ms of latency.
  if (ctx.slowLink) {
    const { bytesPerSecond, latencyMs } = ctx.slowLink;
    const front = await startShapingFront(upstream.url, bytesPerSecond, latencyMs);
    const link = `${(bytesPerSecond / MiB).toFixed(0)} MiB/s per connection, ${latencyMs} ms`;
    log(`slow link: upstream behind a shaping front at ${front.url} (${link})`);
    try {
      for (const img of ctx.images) {
        for (const column of columns(true)) {
          const start = column.start && (() => column.start!(front.url));
          const r = await coldPull(column.name, start, front.url, { repository: img.repository, reference: '1' });
          set(`slow link (${link}): cold pull of ${img.title}, 3 layers at a time`, column.name, { value: r.result.ms, text: ms(r.result.ms) });
          if (r.rss) rssByColumn.set(`slow ${column.name}`, mergePeaks(rssByColumn.get(`slow ${column.name}`) ?? [], r.rss));
          log(`slow link: ${img.title}: ${column.name} ${(r.result.ms / 1000).toFixed(2)} s; upstream sent ${mib(r.upstreamBytes)} in ${r.requests} requests${r.rss ? `; peak RSS ${formatPeaks(r.rss)}` : ''}`);
        }
      }
    } finally {
      await front.stop();
    }
    for (const column of columns(true)) {
      const peaks = rssByColumn.get(`slow ${column.name}`);
      if (peaks) set('… peak RSS per process during the slow-link pulls (VmRSS every 100 ms)', column.name, { value: Math.max(...peaks.map((p) => p.bytes)), text: formatPeaks(peaks) });
    }
  }

  if (ctx.loopback) {
    // What the defaults cost where there is nothing to gain: the median of a few cold pulls each, interleaved.
    const mirrors = columns(false).filter((c) => c.name !== DIRECT && c.name !== DISTRIBUTION);
    const times = new Map<string, number[]>();
    const trips = new Map<string, RoundTrips>();
    for (let round = 0; round < LOOPBACK_ROUNDS; round++) {
      for (const img of ctx.images) {
        for (const column of mirrors) {
          const r = await coldPull(column.name, () => column.start!(upstream.url), upstream.url, { repository: img.repository, reference: '1' });
          const key = `${img.repository} ${column.name}`;
          times.set(key, [...(times.get(key) ?? []), r.result.ms]);
          if (r.rss) rssByColumn.set(`loop ${column.name}`, mergePeaks(rssByColumn.get(`loop ${column.name}`) ?? [], r.rss));
          if (round === 0 && img === ctx.twelve) trips.set(column.name, r);
        }
      }
    }
    for (const img of ctx.images) {
      for (const column of mirrors) {
        const all = times.get(`${img.repository} ${column.name}`)!;
        const m = median(all);
        set(`loopback (unshaped): cold pull of ${img.title}, median of ${LOOPBACK_ROUNDS}`, column.name, { value: m, text: ms(m) });
        log(`loopback: ${img.title}: ${column.name} median ${ms(m)} [${all.map(ms).join(', ')}]`);
      }
    }
    for (const column of mirrors) {
      const peaks = rssByColumn.get(`loop ${column.name}`);
      if (peaks) set('… peak RSS per process during the loopback pulls (VmRSS every 100 ms)', column.name, { value: Math.max(...peaks.map((p) => p.bytes)), text: formatPeaks(peaks) });
    }
    // The reference systems: one cold pull of the new repository, for its round trips.
    if (ctx.twelve) {
      for (const column of columns(false).filter((c) => !mirrors.some((m) => m.name === c.name))) {
        const start = column.start && (() => column.start!(upstream.url));
        trips.set(column.name, await coldPull(column.name, start, upstream.url, { repository: ctx.twelve.repository, reference: '1' }));
      }
    }
    for (const [column, r] of trips) roundTrips(column, r);

    // The prefetch cost: a client that has all layers but the last two.
    if (ctx.twelve) {
      const { repository, image } = ctx.twelve;
      const has = image.layers.slice(0, LAYERS_THE_CLIENT_HAS).map((l) => l.digest);
      for (const column of columns(false).filter((c) => c.name !== DIRECT)) {
        const r = await coldPull(column.name, () => column.start!(upstream.url), upstream.url, { repository, reference: '1', skipLayers: has });
        const unasked = Math.max(0, r.upstreamBytes - r.result.bytes);
        set(`prefetch cost: a client with ${LAYERS_THE_CLIENT_HAS} of the ${image.layers.length} layers pulls ${ctx.twelve.title}: upstream bytes no client asked for`, column.name, {
          value: unasked,
          text: `${mib(unasked)} (client: ${mib(r.result.bytes)}, upstream: ${mib(r.upstreamBytes)})`,
        });
        log(`prefetch cost: ${column.name}: the client fetched ${mib(r.result.bytes)}, the upstream sent ${mib(r.upstreamBytes)} (${r.blobGets} blob GETs): ${mib(unasked)} unasked`);
      }
    }
  }

  function roundTrips(column: string, r: RoundTrips) {
    set(`round trips: upstream + token requests per cold pull of a new repository (${ctx.twelve?.repository ?? 'the image'}, loopback)`, column, {
      value: r.requests + r.tokens,
      text: `${r.requests + r.tokens} (${r.unauthorized}× 401, ${r.tokens} token, ${r.blobGets} blob GETs)`,
    });
    log(`round trips: ${column}: ${r.requests} upstream requests (${r.unauthorized}× 401, ${r.blobGets} blob GETs) + ${r.tokens} token requests`);
  }

  // The table: every column, then the reference variant ÷ each other column.
  const names = [...new Set([...rows.values()].flatMap((cells) => [...cells.keys()]))];
  const ordered = [...variants.map((v) => v.name), DISTRIBUTION, DIRECT].filter((n) => names.includes(n));
  const label = (n: string) => (rejected.has(n) ? `${n} (stand-in, see note)` : n);
  const others = ordered.filter((n) => n !== reference);
  const header = ['', ...ordered.map(label), ...others.map((o) => `defaults ÷ ${o.replace(/^mirror, /, '')}`)];
  const lines = [...rows].map(([row, cells]) => [
    row,
    ...ordered.map((n) => cells.get(n)?.text ?? '–'),
    ...others.map((o) => {
      const a = cells.get(reference)?.value;
      const b = cells.get(o)?.value;
      if (a === undefined || b === undefined) return '–';
      return b === 0 ? (a === 0 ? '1.00×' : '∞') : `${(a / b).toFixed(2)}×`;
    }),
  ]);
  const table = [
    `First pull (issue 15): each cell a cold pull on a freshly started system; ratios are “${reference}” ÷ the column (time, bytes, requests: lower is better).`,
    '',
    `| ${header.join(' | ')} |`,
    `|${header.map((_, i) => (i === 0 ? '---' : '--:')).join('|')}|`,
    ...lines.map((l) => `| ${l.join(' | ')} |`),
  ].join('\n');

  const checks: Check[] = [];
  for (const [row, cells] of rows) {
    const def = cells.get(reference)?.value;
    if (def === undefined) continue;
    const dist = cells.get(DISTRIBUTION)?.value;
    if (row.startsWith('slow link') && dist !== undefined) {
      checks.push({ target: `${row.replace(/, 3 layers at a time$/, '')}: defaults ≥ 3× faster than distribution`, ok: dist / def >= 3, detail: `${(dist / def).toFixed(2)}× (${ms(def)} vs ${ms(dist)})` });
    }
    const one = cells.get(variants.find((v) => v.name !== reference && v.everywhere)?.name ?? '')?.value;
    if (row.startsWith('loopback') && one !== undefined) {
      checks.push({ target: `${row}: defaults cost ≤ 5% against segments: 1`, ok: def <= one * 1.05, detail: `${((def / one - 1) * 100).toFixed(1)}% (${ms(def)} vs ${ms(one)})` });
    }
    if (row.includes('peak RSS per process')) {
      checks.push({ target: `${row.replace(/^… /, '')}: ≤ 100 MiB per process (${reference})`, ok: def <= 100 * MiB, detail: mib(def) });
    }
  }
  return { table, checks, notes: [...notes] };
}
