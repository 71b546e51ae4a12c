// `npm run bench`: this mirror against two reference pull-through caches on the same
// upstream (CNCF distribution with Bearer token auth, behind a counting front) and the
// same content: distribution in proxy mode and nginx as the classic registry cache.
// Prints one table, all side by side with the mirror's ratio to each, checks the
// targets, and writes the tables to test/bench/RESULTS.md.
//
//   npm run bench                                   # everything (about 10 minutes on a quiet machine)
//   npm run bench -- --systems mirror --phases manifest --phase-prof --no-results
//   npm run bench -- --systems mirror --phases slowlink --slow-images twelve --slow-rate 64 --no-results
//
// Options: --systems mirror,mirror-w1,distribution,nginx (mirror = `--workers auto`, mirror-w1 =
//            `--workers 1`; a build without `--workers` runs both as its one process, and
//            mirror-w1 is left out unless named)
//          --phases cold,blob,manifest,concurrent,slowlink,firstpull,bounds (warm = blob,manifest;
//            blob and manifest still start with the cold pull that warms the cache; slowlink and
//            firstpull = issue 15's first-pull rows, see first-pull.ts; bounds = issue 13's crowds
//            of dropping, slow and wrong-password clients, see bounds.ts)
//          --slow-rate 8       MiB/s per upstream connection on the slow link (50 ms latency)
//          --slow-images big,twelve   the images of the slowlink/firstpull rows (256 MiB, 12 layers)
//          --no-idle-wait      do not wait (up to 30 s) for an idle machine before each measurement
//          --skip-build
//          --cpu-prof    node --cpu-prof on the mirror: one profile per mirror process
//          --phase-prof  one CPU profile per measurement, through the mirror's inspector
//          --no-results  do not rewrite RESULTS.md
//   BENCH_KEEP=1 keeps the work directory (each system's log and storage) for a look afterwards; a failed run always keeps it
//   BENCH_VARIANTS='[{"name":"…","config":{…}}]' adds mirror configurations to the slow-link rows (experiments)
//   BENCH_LOG_LEVEL=debug runs the mirror at that log level (with BENCH_KEEP, its log is kept)
//   BENCH_TTFB_DETAIL=1 logs each concurrent client's layer request: worker@start+h<headers ms>+b<first byte ms>
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { cpus, totalmem, tmpdir } from 'node:os';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { bigLayer, buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { imageBytes } from './first-pull.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { MANIFEST_ACCEPT, type PullOptions, type PullResult } from './pull-client.js';
import {
  formatPeaks,
  mirrorHasWorkersOption,
  ROOT,
  running,
  sampleRss,
  startDistributionProxy,
  startMirror,
  startNginx,
  type ProcessPeak,
  type RunningSystem,
  type SystemKey,
} from './systems.js';
import { curlDownload, ensureAptPackage, hasCommand, loadTest, percentile, run, settle, summarizeCpuProfile, type LoadResult } from './tools.js';

const MiB = 1024 * 1024;
const BENCH_DEADLINE_MS = 25 * 60_000;
const CONCURRENT_CLIENTS = 20;
const LOAD_SECONDS = 5;
const BLOB_ROUNDS = 5;

const { values: argv } = parseArgs({
  options: {
    systems: { type: 'string' },
    phases: { type: 'string', default: 'cold,warm,concurrent,slowlink,firstpull,bounds' },
    'slow-rate': { type: 'string', default: '8' },
    'slow-images': { type: 'string', default: 'big,twelve' },
    'skip-build': { type: 'boolean', default: false },
    'cpu-prof': { type: 'boolean', default: false },
    'phase-prof': { type: 'boolean', default: false },
    'no-results': { type: 'boolean', default: false },
    'no-idle-wait': { type: 'boolean', default: false },
  },
});
const systems = (argv.systems ?? 'mirror,mirror-w1,distribution,nginx').split(',').map((s) => s.trim()) as SystemKey[];
const phases = new Set(argv.phases!.split(',').flatMap((s) => (s.trim() === 'warm' ? ['blob', 'manifest'] : [s.trim()])));
for (const p of phases) if (!['cold', 'blob', 'manifest', 'concurrent', 'slowlink', 'firstpull', 'bounds'].includes(p)) throw new Error(`unknown phase ${p}`);
for (const s of systems) if (!['mirror', 'mirror-w1', 'distribution', 'nginx'].includes(s)) throw new Error(`unknown system ${s}`);
const slowImages = argv['slow-images']!.split(',').map((s) => s.trim());
for (const i of slowImages) if (!['big', 'twelve'].includes(i)) throw new Error(`unknown image ${i} (big, twelve)`);
const slowRate = Number(argv['slow-rate']);
if (!(slowRate > 0)) throw new Error(`--slow-rate ${argv['slow-rate']}: MiB/s, a positive number`);

const LABELS: Record<SystemKey, string> = {
  mirror: 'mirror (workers auto)',
  'mirror-w1': 'mirror (workers 1)',
  distribution: 'distribution (proxy)',
  nginx: 'nginx (proxy_cache)',
};
/** The mirror's `--workers` per system (undefined: not a mirror). */
const WORKERS: Partial<Record<SystemKey, number | 'auto'>> = { mirror: 'auto', 'mirror-w1': 1 };
/** The measurements sampled for per-process peak RSS, in table order. */
const RSS_PHASES: [name: string, label: string][] = [
  ['cold-pull', 'cold pull'],
  ['warm-blob', 'warm blob'],
  ['manifest-by-tag', 'manifest by tag'],
  ['manifest-by-digest', 'manifest by digest'],
  ['concurrent-cold-pulls', '20 concurrent cold pulls'],
];
const t0 = performance.now();
const elapsed = () => {
  const s = Math.round((performance.now() - t0) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
};
const log = (msg: string) => console.log(`[${elapsed()}] ${msg}`);

// ---- the pull client process ------------------------------------------------------------

interface PullClient {
  pull(options: PullOptions): Promise<PullResult>;
  pulls(options: PullOptions, count: number): Promise<PullResult[]>;
  auth(options: PullOptions): Promise<string | undefined>;
  stop(): void;
}

function startPullClient(): PullClient {
  const child: ChildProcess = fork(join(ROOT, 'test/bench/pull-client.ts'), [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, BENCH_PULL_CLIENT: '1' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let nextId = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  child.on('message', (msg: { id: number; ok: boolean; result?: unknown; error?: string }) => {
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.ok) p?.resolve(msg.result);
    else p?.reject(new Error(msg.error));
  });
  child.on('exit', (code) => {
    for (const p of pending.values()) p.reject(new Error(`pull client exited with ${code}`));
    pending.clear();
  });
  const call = <T>(op: string, options: PullOptions, count?: number): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const id = ++nextId;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${op} of ${options.repository} at ${options.baseUrl} took over 240 s`));
      }, 240_000);
      pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      child.send({ id, op, options, count });
    });
  return {
    pull: (o) => call('pull', o),
    pulls: (o, n) => call('pulls', o, n),
    auth: (o) => call('auth', o),
    stop: () => {
      if (child.exitCode === null) child.kill('SIGTERM');
    },
  };
}

// ---- results ----------------------------------------------------------------------------

interface SystemResult {
  key: SystemKey;
  coldPullMs?: number;
  coldUpstreamBytes?: number;
  coldUpstreamBlobGets?: number;
  coldUpstreamRequests?: number;
  coldUpstream401?: number;
  coldTokenRequests?: number;
  concurrentWallMs?: number;
  concurrentUpstreamBlobGets200?: number;
  concurrentUpstreamBlobRequests?: number;
  concurrentUpstreamBytes?: number;
  concurrentTtfbP50Ms?: number;
  concurrentTtfbMaxMs?: number;
  concurrentFirstLayerDoneMs?: number;
  concurrentUpstream401?: number;
  concurrentTokenRequests?: number;
  /** Distinct `X-Mirror-Worker` values among the 20 clients' layer responses (none: no such header). */
  concurrentWorkers?: number;
  blobOneClientMBps?: number;
  blobEightClientsMBps?: number;
  manifestTag?: LoadResult;
  manifestDigest?: LoadResult;
  manifestTagUpstreamRequests?: number;
  peakRssRun1?: number;
  peakRssRun2?: number;
  /** Peak VmRSS per process during each measurement (sampled every 100 ms). */
  phaseRss: Record<string, ProcessPeak[]>;
  profiles: string[];
  notes: string[];
}

const rssNote = (sys: RunningSystem) => `peak RSS so far ${(sys.peakRss() / MiB).toFixed(1)} MiB`;

async function startSystem(key: SystemKey, upstreamUrl: string, workDir: string, profDir?: string): Promise<RunningSystem> {
  if (key === 'mirror' || key === 'mirror-w1') {
    return startMirror({ key, upstreamUrl, workDir, workers: WORKERS[key], cpuProfDir: argv['cpu-prof'] ? profDir : undefined, inspect: argv['phase-prof'] });
  }
  if (key === 'distribution') return startDistributionProxy({ upstreamUrl, workDir });
  return startNginx({ upstreamUrl, workDir });
}

async function benchSystem(
  key: SystemKey,
  ctx: { upstream: RealUpstream; client: PullClient; workDir: string; big: Image; concurrent: Image; profRoot?: string },
): Promise<SystemResult> {
  const { upstream, client, workDir, big, concurrent } = ctx;
  const r: SystemResult = { key, phaseRss: {}, profiles: [], notes: [] };
  const label = LABELS[key];
  const profDir = (run: string) => (WORKERS[key] !== undefined && ctx.profRoot ? join(ctx.profRoot, `${key}-${run}`) : undefined);
  /** Run one measurement with each process's RSS sampled, under the CPU profiler when --phase-prof. */
  const measure = async <T>(sys: RunningSystem, name: string, fn: () => Promise<T>): Promise<T> => {
    const rss = sampleRss(sys);
    try {
      if (!sys.profiler || !ctx.profRoot) return await fn();
      await sys.profiler.start();
      try {
        return await fn();
      } finally {
        const path = join(ctx.profRoot, `${key}-${name}.cpuprofile`);
        await sys.profiler.stop(path);
        r.profiles.push(path);
      }
    } finally {
      r.phaseRss[name] = rss.stop();
      log(`${label}: ${name}: peak RSS per process ${formatPeaks(r.phaseRss[name])}`);
    }
  };

  if (phases.has('cold') || phases.has('blob') || phases.has('manifest')) {
    // Run 1: a fresh cache; one cold pull of the big image, then the warm measurements.
    await awaitIdle();
    const sys = await startSystem(key, upstream.url, workDir, profDir('run1-cold-warm'));
    try {
      log(`${label}: started at ${sys.url}`);
      upstream.resetCounts();
      const coldTokensBefore = upstream.token.issued.length;
      const cold = await measure(sys, 'cold-pull', () => client.pull({ baseUrl: sys.url, repository: 'bench/big', reference: '1' }));
      r.coldPullMs = cold.ms;
      r.coldUpstreamBytes = upstream.bytes({});
      r.coldUpstreamBlobGets = upstream.count({ method: 'GET', kind: 'blob' });
      r.coldUpstreamRequests = upstream.requests.length;
      const before = r.coldUpstreamBytes;
      log(
        `${label}: cold pull of ${(imageBytes(big) / MiB).toFixed(1)} MiB in ${(cold.ms / 1000).toFixed(2)} s; upstream sent ${(r.coldUpstreamBytes / MiB).toFixed(1)} MiB in ${r.coldUpstreamRequests} requests (${r.coldUpstreamBlobGets} blob GETs)`,
      );

      await settle(upstream);
      r.coldUpstreamBytes = upstream.bytes({});
      r.coldUpstreamBlobGets = upstream.count({ method: 'GET', kind: 'blob' });
      r.coldUpstreamRequests = upstream.requests.length;
      r.coldUpstream401 = upstream.count({ status: 401 });
      r.coldTokenRequests = upstream.token.issued.length - coldTokensBefore;
      if (r.coldUpstreamBytes !== before) log(`${label}: after the pull the upstream went on sending: ${(r.coldUpstreamBytes / MiB).toFixed(1)} MiB in ${r.coldUpstreamRequests} requests (${r.coldUpstreamBlobGets} blob GETs)`);
      log(`${label}: ${rssNote(sys)} after the cold pull`);

      const auth = await client.auth({ baseUrl: sys.url, repository: 'bench/big', reference: '1' });
      const authHeaders: Record<string, string> = auth ? { authorization: auth } : {};
      if (phases.has('blob')) {
        const layer = big.layers[0]!;
        const blobUrl = `${sys.url}/v2/bench/big/blobs/${layer.digest}`;
        await curlDownload(blobUrl, authHeaders); // warm-up
        const one: number[] = [];
        const eight: number[] = [];
        await measure(sys, 'warm-blob', async () => {
          for (let i = 0; i < BLOB_ROUNDS; i++) {
            const c = await curlDownload(blobUrl, authHeaders);
            if (c.bytes !== layer.size) throw new Error(`${label}: warm blob answered ${c.bytes} bytes`);
            one.push(c.bytes / c.seconds / 1e6);
          }
          for (let i = 0; i < BLOB_ROUNDS; i++) {
            const results = await Promise.all(Array.from({ length: 8 }, () => curlDownload(blobUrl, authHeaders)));
            const bytes = results.reduce((a, c) => a + c.bytes, 0);
            if (bytes !== 8 * layer.size) throw new Error(`${label}: 8 warm blob downloads answered ${bytes} bytes`);
            eight.push(bytes / Math.max(...results.map((c) => c.seconds)) / 1e6);
          }
        });
        // The best round: a capacity figure, robust to another process's burst on a shared machine.
        r.blobOneClientMBps = Math.max(...one);
        r.blobEightClientsMBps = Math.max(...eight);
        log(`${label}: warm blob (${(layer.size / MiB).toFixed(0)} MiB) 1 client ${r.blobOneClientMBps.toFixed(0)} MB/s [${one.map((v) => v.toFixed(0)).join(', ')}], 8 clients ${r.blobEightClientsMBps.toFixed(0)} MB/s [${eight.map((v) => v.toFixed(0)).join(', ')}]`);
        log(`${label}: ${rssNote(sys)} after the warm blob downloads`);
      }
      if (phases.has('manifest')) {
        const manifestHeaders = { accept: MANIFEST_ACCEPT, ...authHeaders };
        const tagUrl = `${sys.url}/v2/bench/big/manifests/1`;
        const digestUrl = `${sys.url}/v2/bench/big/manifests/${big.manifest.digest}`;
        for (const url of [tagUrl, digestUrl, tagUrl, digestUrl]) {
          const res = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', ...Object.entries(manifestHeaders).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), url], 10_000);
          if (res.stdout !== '200') throw new Error(`${label}: ${url} answered ${res.stdout}`);
        }
        upstream.resetCounts();
        r.manifestTag = await measure(sys, 'manifest-by-tag', () => loadTest(tagUrl, manifestHeaders, LOAD_SECONDS));
        r.manifestTagUpstreamRequests = upstream.count({ kind: 'manifest' });
        log(
          `${label}: manifest by tag ${r.manifestTag.requestsPerSecond.toFixed(0)} req/s, p50 ${r.manifestTag.p50Ms.toFixed(2)} ms, p99 ${r.manifestTag.p99Ms.toFixed(2)} ms (${r.manifestTag.tool}, ${r.manifestTag.errors} errors, ${r.manifestTagUpstreamRequests} upstream manifest requests)`,
        );
        r.manifestDigest = await measure(sys, 'manifest-by-digest', () => loadTest(digestUrl, manifestHeaders, LOAD_SECONDS));
        log(
          `${label}: manifest by digest ${r.manifestDigest.requestsPerSecond.toFixed(0)} req/s, p50 ${r.manifestDigest.p50Ms.toFixed(2)} ms, p99 ${r.manifestDigest.p99Ms.toFixed(2)} ms (${r.manifestDigest.tool}, ${r.manifestDigest.errors} errors)`,
        );
        for (const m of [r.manifestTag, r.manifestDigest]) if (m.errors > 0) r.notes.push(`${label}: ${m.errors} non-2xx/socket errors under load`);
        log(`${label}: ${rssNote(sys)} after the manifest load`);
      }
    } finally {
      await sys.stop();
      r.peakRssRun1 = sys.peakRss();
    }
  }

  if (phases.has('concurrent')) {
    // Run 2: a fresh cache; 20 clients pull the same cold image at once.
    await awaitIdle();
    const sys = await startSystem(key, upstream.url, workDir, profDir('run2-concurrent'));
    try {
      log(`${label}: restarted cold at ${sys.url}; ${CONCURRENT_CLIENTS} concurrent cold pulls`);
      upstream.resetCounts();
      const tokensBefore = upstream.token.issued.length;
      const started = performance.now();
      // The pulling client shares this process: its own event-loop delay is part of every time it measures.
      const loopDelay = monitorEventLoopDelay({ resolution: 5 });
      loopDelay.enable();
      const pulls = await measure(sys, 'concurrent-cold-pulls', () => client.pulls({ baseUrl: sys.url, repository: 'bench/concurrent', reference: '1' }, CONCURRENT_CLIENTS));
      loopDelay.disable();
      r.concurrentWallMs = performance.now() - started;
      await settle(upstream);
      r.concurrentUpstreamBlobGets200 = upstream.count({ method: 'GET', kind: 'blob', status: 200 });
      r.concurrentUpstreamBlobRequests = upstream.count({ kind: 'blob' });
      r.concurrentUpstreamBytes = upstream.bytes({});
      r.concurrentUpstream401 = upstream.count({ status: 401 });
      r.concurrentTokenRequests = upstream.token.issued.length - tokensBefore;
      const layer = concurrent.layers[0]!;
      const timings = pulls.map((p) => p.blobs.find((b) => b.digest === layer.digest)!);
      const ttfb = timings.map((t) => t.firstByteMs);
      r.concurrentTtfbP50Ms = percentile(ttfb, 50);
      if (process.env.BENCH_TTFB_DETAIL) log(`TTFB detail (this process's event-loop delay during the pulls: p50 ${(loopDelay.percentile(50) / 1e6).toFixed(0)} ms, p99 ${(loopDelay.percentile(99) / 1e6).toFixed(0)} ms, max ${(loopDelay.max / 1e6).toFixed(0)} ms): ${timings.map((t) => `${t.worker ?? '-'}@${t.requestAtMs.toFixed(0)}+h${t.headersMs.toFixed(0)}+b${t.firstByteMs.toFixed(0)}`).join(' ')}`);
      r.concurrentTtfbMaxMs = Math.max(...ttfb);
      r.concurrentFirstLayerDoneMs = Math.min(...timings.map((t) => t.totalMs));
      const workers = new Set(timings.flatMap((t) => (t.worker === undefined ? [] : [t.worker])));
      if (workers.size) r.concurrentWorkers = workers.size;
      log(
        `${label}: ${rssNote(sys)}; ${CONCURRENT_CLIENTS} pulls in ${(r.concurrentWallMs / 1000).toFixed(2)} s; upstream blob GETs 200: ${r.concurrentUpstreamBlobGets200} (blob requests ${r.concurrentUpstreamBlobRequests}, distinct blobs 2), upstream ${(r.concurrentUpstreamBytes / MiB).toFixed(1)} MiB; layer TTFB p50 ${r.concurrentTtfbP50Ms.toFixed(0)} ms, max ${r.concurrentTtfbMaxMs.toFixed(0)} ms; fastest layer download ${r.concurrentFirstLayerDoneMs.toFixed(0)} ms; upstream 401s ${r.concurrentUpstream401}, token requests ${r.concurrentTokenRequests}${workers.size ? `; served by ${workers.size} workers` : ''}`,
      );
    } finally {
      await sys.stop();
      r.peakRssRun2 = sys.peakRss();
    }
  }

  if (WORKERS[key] !== undefined && ctx.profRoot) {
    for (const runDir of ['run1-cold-warm', 'run2-concurrent']) {
      const dir = join(ctx.profRoot, `${key}-${runDir}`);
      if (!existsSync(dir)) continue;
      for (const f of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) r.profiles.push(join(dir, f));
    }
  }
  return r;
}

// ---- the table --------------------------------------------------------------------------

interface Row {
  label: string;
  value: (r: SystemResult) => number | undefined;
  format: (v: number, r: SystemResult) => string;
  /** 'lower' or 'higher' is better; ratios are mirror ÷ other either way. */
  better: 'lower' | 'higher';
}

function buildRows(big: Image, concurrent: Image): Row[] {
  const bigBytes = imageBytes(big);
  const concBytes = imageBytes(concurrent);
  const ms = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 2 : 0)} ms`);
  const mb = (v: number) => `${v.toFixed(0)} MB/s`;
  const rps = (v: number) => `${Math.round(v).toLocaleString('en-US')}/s`;
  const mib = (v: number) => `${(v / MiB).toFixed(1)} MiB`;
  return [
    { label: `cold pull, 1 client (${mib(bigBytes)}, 3 layers)`, value: (r) => r.coldPullMs, format: ms, better: 'lower' },
    { label: 'upstream bytes per cold pull (× image)', value: (r) => r.coldUpstreamBytes, format: (v) => `${(v / bigBytes).toFixed(3)}× (${mib(v)})`, better: 'lower' },
    { label: 'upstream requests per cold pull', value: (r) => r.coldUpstreamRequests, format: (v, r) => `${v} (${r.coldUpstreamBlobGets} blob GETs)`, better: 'lower' },
    { label: '… of which 401s (+ token requests)', value: (r) => r.coldUpstream401, format: (v, r) => `${v} (+${r.coldTokenRequests})`, better: 'lower' },
    { label: `${CONCURRENT_CLIENTS} concurrent cold pulls (${mib(concBytes)}): wall time`, value: (r) => r.concurrentWallMs, format: ms, better: 'lower' },
    { label: `… upstream blob GETs 200 (2 distinct blobs)`, value: (r) => r.concurrentUpstreamBlobGets200, format: (v, r) => `${v}${r.concurrentUpstreamBlobRequests !== v ? ` (+${r.concurrentUpstreamBlobRequests! - v} other)` : ''}`, better: 'lower' },
    { label: '… upstream bytes (× image)', value: (r) => r.concurrentUpstreamBytes, format: (v) => `${(v / concBytes).toFixed(2)}× (${mib(v)})`, better: 'lower' },
    { label: '… layer time-to-first-byte, p50 of 20', value: (r) => r.concurrentTtfbP50Ms, format: ms, better: 'lower' },
    { label: '… layer time-to-first-byte, max of 20', value: (r) => r.concurrentTtfbMaxMs, format: ms, better: 'lower' },
    { label: '… fastest client’s layer download', value: (r) => r.concurrentFirstLayerDoneMs, format: ms, better: 'lower' },
    { label: '… upstream 401s, 20 clients at once on a fresh cache (goal 1; + token requests)', value: (r) => r.concurrentUpstream401, format: (v, r) => `${v} (+${r.concurrentTokenRequests})`, better: 'lower' },
    { label: '… worker processes that served the 20 (X-Mirror-Worker)', value: (r) => r.concurrentWorkers, format: (v) => String(v), better: 'higher' },
    { label: `warm blob, 1 client (curl, ${(big.layers[0]!.size / MiB).toFixed(0)} MiB, best of ${BLOB_ROUNDS})`, value: (r) => r.blobOneClientMBps, format: mb, better: 'higher' },
    { label: 'warm blob, 8 clients (aggregate, best of 5)', value: (r) => r.blobEightClientsMBps, format: mb, better: 'higher' },
    { label: 'warm manifest by tag (wrk 2t/16c)', value: (r) => r.manifestTag?.requestsPerSecond, format: rps, better: 'higher' },
    { label: '… by tag p50', value: (r) => r.manifestTag?.p50Ms, format: ms, better: 'lower' },
    { label: '… by tag p99', value: (r) => r.manifestTag?.p99Ms, format: ms, better: 'lower' },
    { label: 'warm manifest by digest', value: (r) => r.manifestDigest?.requestsPerSecond, format: rps, better: 'higher' },
    { label: '… by digest p50', value: (r) => r.manifestDigest?.p50Ms, format: ms, better: 'lower' },
    { label: '… by digest p99', value: (r) => r.manifestDigest?.p99Ms, format: ms, better: 'lower' },
    { label: 'peak RSS (VmHWM), cold pull + warm run', value: (r) => r.peakRssRun1, format: mib, better: 'lower' },
    { label: 'peak RSS (VmHWM), 20-concurrent run', value: (r) => r.peakRssRun2, format: mib, better: 'lower' },
    ...RSS_PHASES.map(([name, label]): Row => ({
      label: `peak RSS per process, ${label} (VmRSS every 100 ms)`,
      value: (r) => maxPeak(r.phaseRss[name]),
      format: (_v, r) => formatPeaks(r.phaseRss[name]!),
      better: 'lower',
    })),
  ];
}

const maxPeak = (peaks: ProcessPeak[] | undefined) => (peaks?.length ? Math.max(...peaks.map((p) => p.bytes)) : undefined);

function renderTable(rows: Row[], results: SystemResult[]): string {
  const mirror = results.find((r) => r.key === 'mirror');
  const others = results.filter((r) => r.key !== 'mirror');
  const header = ['', ...results.map((r) => LABELS[r.key]), ...(mirror ? others.map((o) => `mirror ÷ ${o.key}`) : [])];
  const lines: string[][] = [];
  for (const row of rows) {
    const cells = results.map((r) => {
      const v = row.value(r);
      return v === undefined ? '–' : row.format(v, r);
    });
    if (!results.some((r) => row.value(r) !== undefined)) continue;
    const ratios = mirror
      ? others.map((o) => {
          const a = row.value(mirror);
          const b = row.value(o);
          if (a === undefined || b === undefined) return '–';
          if (b === 0) return a === 0 ? '1.00×' : '∞';
          return `${(a / b).toFixed(2)}×`;
        })
      : [];
    lines.push([row.label, ...cells, ...ratios]);
  }
  if (!lines.length) return '';
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [fmt(header), `|${widths.map((w, i) => (i === 0 ? `${'-'.repeat(w + 1)}-` : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...lines.map(fmt)].join('\n');
}

interface Check {
  target: string;
  ok: boolean;
  detail: string;
}

function checkTargets(results: SystemResult[], big: Image): Check[] {
  const m = results.find((r) => r.key === 'mirror');
  if (!m) return [];
  const d = results.find((r) => r.key === 'distribution');
  const n = results.find((r) => r.key === 'nginx');
  const w1 = results.find((r) => r.key === 'mirror-w1');
  const checks: Check[] = [];
  if (m.coldPullMs !== undefined && d?.coldPullMs !== undefined) {
    checks.push({ target: 'cold pull ≤ 0.8× distribution’s time', ok: m.coldPullMs <= 0.8 * d.coldPullMs, detail: `${(m.coldPullMs / d.coldPullMs).toFixed(2)}× (${(m.coldPullMs / 1000).toFixed(2)} vs ${(d.coldPullMs / 1000).toFixed(2)} s)` });
  }
  if (m.coldUpstreamBytes !== undefined) {
    const ratio = m.coldUpstreamBytes / imageBytes(big);
    checks.push({ target: 'upstream bytes per cold pull = 1.00× image', ok: ratio >= 1 && ratio < 1.005, detail: `${ratio.toFixed(4)}×` });
  }
  if (m.concurrentUpstreamBlobRequests !== undefined) {
    checks.push({
      target: `${CONCURRENT_CLIENTS} concurrent cold pulls: one upstream GET per distinct blob (2)`,
      ok: m.concurrentUpstreamBlobRequests === 2 && m.concurrentUpstreamBlobGets200 === 2,
      detail: `${m.concurrentUpstreamBlobGets200} GETs 200, ${m.concurrentUpstreamBlobRequests} blob requests`,
    });
  }
  if (m.concurrentUpstream401 !== undefined) {
    checks.push({ target: `${CONCURRENT_CLIENTS} clients at once on a fresh mirror: one upstream 401`, ok: m.concurrentUpstream401 <= 1, detail: `${m.concurrentUpstream401} × 401, ${m.concurrentTokenRequests} token requests` });
  }
  if (m.concurrentTtfbP50Ms !== undefined && w1?.concurrentTtfbP50Ms !== undefined) {
    checks.push({
      target: `${CONCURRENT_CLIENTS} concurrent cold pulls: waiting clients’ first byte p50 no worse than with one worker`,
      ok: m.concurrentTtfbP50Ms <= w1.concurrentTtfbP50Ms,
      detail: `${m.concurrentTtfbP50Ms.toFixed(0)} vs ${w1.concurrentTtfbP50Ms.toFixed(0)} ms`,
    });
  }
  for (const [name, get] of [
    ['by tag', (r: SystemResult) => r.manifestTag],
    ['by digest', (r: SystemResult) => r.manifestDigest],
  ] as const) {
    const mm = get(m);
    if (!mm) continue;
    const nn = n && get(n);
    if (nn) {
      checks.push({
        target: `warm manifest ${name}: req/s ≥ 1.0× nginx`,
        ok: mm.requestsPerSecond >= nn.requestsPerSecond,
        detail: `${Math.round(mm.requestsPerSecond)} vs ${Math.round(nn.requestsPerSecond)} (${(mm.requestsPerSecond / nn.requestsPerSecond).toFixed(2)}×)`,
      });
      checks.push({ target: `warm manifest ${name}: p99 ≤ 1.5× nginx’s p99`, ok: mm.p99Ms <= 1.5 * nn.p99Ms, detail: `${mm.p99Ms.toFixed(2)} vs ${nn.p99Ms.toFixed(2)} ms` });
    }
    checks.push({ target: `warm manifest ${name}: p99 ≤ 5 ms`, ok: mm.p99Ms <= 5, detail: `p99 ${mm.p99Ms.toFixed(2)} ms` });
  }
  for (const [name, get] of [
    ['1 client', (r: SystemResult) => r.blobOneClientMBps],
    ['8 clients', (r: SystemResult) => r.blobEightClientsMBps],
  ] as const) {
    const mv = get(m);
    if (mv === undefined) continue;
    for (const o of [d, n]) {
      const ov = o && get(o);
      if (ov === undefined || !o) continue;
      checks.push({ target: `warm blob throughput, ${name} ≥ ${o.key}`, ok: mv >= ov, detail: `${mv.toFixed(0)} vs ${ov.toFixed(0)} MB/s` });
    }
  }
  const rss = Math.max(m.peakRssRun1 ?? 0, m.peakRssRun2 ?? 0);
  if (rss > 0) checks.push({ target: 'mirror peak RSS < 150 MiB', ok: rss < 150 * MiB, detail: `${(rss / MiB).toFixed(1)} MiB` });
  for (const mr of [m, w1]) {
    if (!mr) continue;
    for (const [name, label] of RSS_PHASES) {
      const peaks = mr.phaseRss[name];
      if (!peaks?.length) continue;
      checks.push({ target: `${LABELS[mr.key]}, ${label}: peak RSS ≤ 100 MiB per process`, ok: maxPeak(peaks)! <= 100 * MiB, detail: formatPeaks(peaks) });
    }
  }
  return checks;
}

/** Share of all cores busy over `ms` (from /proc/stat): how idle the machine is without the bench. */
async function machineBusy(ms = 1000): Promise<number> {
  const sample = () => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + (f[4] ?? 0);
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  const a = sample();
  await new Promise((r) => setTimeout(r, ms));
  const b = sample();
  return 1 - (b.idle - a.idle) / Math.max(1, b.total - a.total);
}

/** Wait (bounded) until the machine is quiet, so another user's burst does not land in a measurement. */
async function awaitIdle(maxMs = 30_000): Promise<void> {
  if (argv['no-idle-wait']) return;
  const until = Date.now() + maxMs;
  let busy = await machineBusy(500);
  if (busy < 0.15) return;
  log(`waiting for the machine to go idle (${(busy * 100).toFixed(0)}% busy)`);
  while (Date.now() < until) {
    busy = await machineBusy(1000);
    if (busy < 0.15) return;
  }
  log(`still ${(busy * 100).toFixed(0)}% busy after ${maxMs / 1000} s: measuring anyway (noisy)`);
  noisy = true;
}
let noisy = false;

function loadavg(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

function revision(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', 'src'], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
    return dirty ? `${head} + ${dirty} uncommitted file(s) in src/` : head;
  } catch {
    return 'unknown revision';
  }
}

function machine(): { nproc: number; cpu: string; memory: string } {
  const model = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  return { nproc: cpus().length, cpu: model, memory: `${(totalmem() / 1024 ** 3).toFixed(1)} GiB` };
}

function versions(): string {
  const first = (command: string) => {
    try {
      return execFileSync('sh', ['-c', `${command} 2>&1 || true`], { encoding: 'utf8' }).trim().split('\n')[0] ?? '?';
    } catch {
      return '?';
    }
  };
  return [
    `Node ${process.version}`,
    first('/usr/bin/docker-registry --version').replace(/^.*github.com\/docker\/distribution /, 'distribution '),
    /nginx\/[\d.]+/.exec(first('/usr/sbin/nginx -v'))?.[0] ?? 'nginx',
    hasCommand('wrk') ? `wrk ${/wrk (?:debian\/)?([\d.]+)/.exec(first('wrk -v'))?.[1] ?? ''}`.trim() : 'autocannon',
    first('curl --version').split(' ').slice(0, 2).join(' '),
  ].join(', ');
}

// ---- main ---------------------------------------------------------------------------------

let upstream: RealUpstream | undefined;
let client: PullClient | undefined;
let workDir: string | undefined;
let cleaningUp: Promise<void> | undefined;

/** A failed run keeps its work directory (the systems' logs say why): set when the bench fails. */
let keepWorkDir = Boolean(process.env.BENCH_KEEP);

function cleanup(): Promise<void> {
  cleaningUp ??= (async () => {
    client?.stop();
    for (const s of [...running]) await s.stop().catch((err: unknown) => console.error(`stopping ${s.key}: ${String(err)}`));
    await upstream?.stop().catch((err: unknown) => console.error(`stopping the upstream: ${String(err)}`));
    if (workDir && !keepWorkDir) rmSync(workDir, { recursive: true, force: true });
    else if (workDir) console.error(`bench: work directory kept: ${workDir}`);
  })();
  return cleaningUp;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\nbench: ${signal}, stopping everything`);
    void cleanup().finally(() => process.exit(130));
  });
}
const watchdog = setTimeout(() => {
  console.error(`bench: still running after ${BENCH_DEADLINE_MS / 60_000} minutes; stopping everything`);
  void cleanup().finally(() => process.exit(1));
}, BENCH_DEADLINE_MS);
watchdog.unref();

const setupNotes: string[] = [];

async function main(): Promise<number> {
  if (!argv['skip-build']) {
    log('npm run build');
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit', timeout: 180_000 });
  }
  const rev = revision();
  log(`mirror under test: ${rev}`);
  if (!mirrorHasWorkersOption() && systems.some((k) => WORKERS[k] !== undefined)) {
    setupNotes.push('This build’s `serve` has no `--workers` (issue 16 not merged): every mirror column is its one process.');
    log(`note: ${setupNotes.at(-1)}`);
    // Two identical single-process columns measure nothing new: keep mirror-w1 only when it was asked for.
    if (argv.systems === undefined && systems.includes('mirror-w1')) systems.splice(systems.indexOf('mirror-w1'), 1);
  }
  if (!existsSync('/usr/bin/docker-registry')) ensureAptPackage('docker-registry', 'docker-registry');
  if (systems.includes('nginx') && !ensureAptPackage('nginx', 'nginx')) throw new Error('nginx is not installed and could not be installed');
  if (!ensureAptPackage('curl', 'curl')) throw new Error('curl is required');
  if (phases.has('manifest') && !ensureAptPackage('wrk', 'wrk')) log('wrk is not available: falling back to autocannon');

  workDir = mkdtempSync(join(tmpdir(), 'registry-mirror-bench-'));
  const profRoot = argv['cpu-prof'] || argv['phase-prof'] ? join(tmpdir(), `registry-mirror-bench-prof-${new Date().toISOString().replace(/[:.]/g, '-')}`) : undefined;
  if (profRoot) mkdirSync(profRoot, { recursive: true });

  log('content: layers of 192 MiB + 64 MiB + small (bench/big:1) and 64 MiB (bench/concurrent:1), cached in the fixtures dir');
  const [l192, l64, lc] = [await bigLayer(192 * MiB, 'bench-192'), await bigLayer(64 * MiB, 'bench-64'), await bigLayer(64 * MiB, 'bench-concurrent-64')];
  const big = buildImage({ format: 'docker', layers: [l192, l64, smallLayer([{ path: 'etc/bench', content: 'bench big\n' }])], label: 'bench-big' });
  const concurrent = buildImage({ format: 'docker', layers: [lc], label: 'bench-concurrent' });
  if (imageBytes(big) < 256 * MiB) throw new Error('the big image must be at least 256 MiB');
  let twelveImage: import('./first-pull.js').BenchImage | undefined;
  if ((phases.has('slowlink') || phases.has('firstpull')) && slowImages.includes('twelve')) {
    const { twelveLayerImage } = await import('./first-pull.js');
    const image = await twelveLayerImage();
    twelveImage = { repository: 'bench/twelve', image, title: `the 12-layer image (${(imageBytes(image) / MiB).toFixed(0)} MiB)` };
    log(`content: 12 layers of 40 down to 2 MiB (bench/twelve:1, ${(imageBytes(image) / MiB).toFixed(1)} MiB), cached in the fixtures dir`);
  }

  upstream = await startRealUpstream({ tokenTtlSeconds: 3600 });
  log(`upstream (distribution + token endpoint) behind the counting front at ${upstream.url}; pushing`);
  await upstream.push('bench/big', '1', big);
  await upstream.push('bench/concurrent', '1', concurrent);
  if (twelveImage) await upstream.push(twelveImage.repository, '1', twelveImage.image);
  upstream.resetCounts();
  client = startPullClient();

  await awaitIdle();
  const busyBefore = await machineBusy();
  const loadBefore = loadavg();
  log(`machine: ${(busyBefore * 100).toFixed(0)}% of the CPUs busy before the first system starts (load average ${loadBefore})`);
  if (busyBefore > 0.15) log('WARNING: the machine is not idle; other processes compete for the cores and the numbers will be noisy');

  const results: SystemResult[] = [];
  for (const key of systems) {
    results.push(await benchSystem(key, { upstream, client, workDir, big, concurrent, profRoot }));
  }

  // Issue 15's first pull: the slow link, the loopback cost of the defaults, round trips, prefetch cost.
  let firstPullTable = '';
  const firstPullChecks: Check[] = [];
  const firstPullNotes: string[] = [];
  if (phases.has('slowlink') || phases.has('firstpull')) {
    const { firstPull } = await import('./first-pull.js');
    const images = [...(slowImages.includes('big') ? [{ repository: 'bench/big', image: big, title: `the ${(imageBytes(big) / MiB).toFixed(0)} MiB image` }] : []), ...(twelveImage ? [twelveImage] : [])];
    const fp = await firstPull({
      upstream,
      client,
      workDir,
      log,
      awaitIdle,
      withDistribution: systems.includes('distribution'),
      images,
      twelve: twelveImage,
      slowLink: phases.has('slowlink') ? { bytesPerSecond: slowRate * MiB, latencyMs: 50 } : undefined,
      loopback: phases.has('firstpull'),
    });
    firstPullTable = fp.table;
    firstPullChecks.push(...fp.checks);
    firstPullNotes.push(...fp.notes);
  }

  // The bounds: crowds of misbehaving clients (issue 13), each on a freshly started system.
  let boundsTable = '';
  const boundsChecks: Check[] = [];
  if (phases.has('bounds')) {
    const { committingReaders, dropCrowd, writeHtpasswd, wrongPasswords } = await import('./bounds.js');
    const { startMirror: startMirrorSystem } = await import('./systems.js');
    const drops = await Promise.all([0, 1, 2, 3].map((i) => bigLayer(256 * MiB, `bench-drop-${i}`)));
    const dropImage = buildImage({ format: 'docker', layers: drops, label: 'bench-drop' });
    log('bounds: pushing 4 layers of 256 MiB (bench/drop:1)');
    await upstream.push('bench/drop', '1', dropImage);
    const dropBlobs = drops.map((blob) => ({ repo: 'bench/drop', blob }));
    const boundsResults: import('./bounds.js').BoundsResult[] = [];
    // nginx has no cold-download machinery to attack; one mirror is enough (the crowd is not about workers).
    for (const key of systems.filter((k) => k !== 'nginx' && k !== 'mirror-w1')) {
      await awaitIdle();
      const sys = await startSystem(key, upstream.url, workDir);
      try {
        const r = await dropCrowd(sys, upstream, dropBlobs);
        boundsResults.push(r);
        log(`bounds: ${LABELS[key]}: ${r.scenario}: peak RSS ${((r.peakRssBytes ?? 0) / MiB).toFixed(1)} MiB; ${r.detail}`);
      } finally {
        await sys.stop();
      }
    }
    if (systems.includes('mirror')) {
      const { startCephRgw, createBucket } = await import('../fixtures/ceph-rgw.js');
      log('bounds: starting Ceph RGW (S3) for the committing-readers scenario');
      const rgw = await startCephRgw();
      try {
        await createBucket(rgw, 'bench');
        const s3Config = join(workDir, 'bounds-s3.json');
        writeFileSync(
          s3Config,
          JSON.stringify({ storage: { driver: 's3', s3: { bucket: 'bench', endpoint: rgw.endpoint, region: rgw.region, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, redirect: 0 } } }),
        );
        await awaitIdle();
        const sys = await startMirrorSystem({ upstreamUrl: upstream.url, workDir, extraArgs: ['--config', s3Config] });
        try {
          const r = await committingReaders(sys, upstream, 'bench/concurrent', concurrent.layers[0]!);
          boundsResults.push(r);
          log(`bounds: mirror: ${r.scenario}: peak RSS ${((r.peakRssBytes ?? 0) / MiB).toFixed(1)} MiB; ${r.detail}`);
        } finally {
          await sys.stop();
        }
      } finally {
        await rgw.stop();
      }
      const authConfig = join(workDir, 'bounds-auth.json');
      writeFileSync(authConfig, JSON.stringify({ auth: { htpasswd: writeHtpasswd(workDir, 'bench', 'right-password') } }));
      await awaitIdle();
      const sys = await startMirrorSystem({ upstreamUrl: upstream.url, workDir, extraArgs: ['--config', authConfig] });
      try {
        const r = await wrongPasswords(sys);
        boundsResults.push(r);
        log(`bounds: mirror: ${r.scenario}: /healthz p50 ${r.p50Ms!.toFixed(2)} ms, p99 ${r.p99Ms!.toFixed(2)} ms; peak RSS ${((r.peakRssBytes ?? 0) / MiB).toFixed(1)} MiB; ${r.detail}`);
      } finally {
        await sys.stop();
      }
    }
    const fmtMiB = (v?: number) => (v === undefined ? '–' : `${(v / MiB).toFixed(1)} MiB`);
    boundsTable = [
      'Bounds: crowds of misbehaving clients, each scenario on a freshly started system (issue 13). Event-loop stall: the',
      'latency of `/healthz` probed every 5 ms by one more client while the attack runs.',
      '',
      '| system | scenario | peak RSS | upstream bytes | /healthz p50 / p99 | detail |',
      '|---|---|--:|--:|--:|---|',
      ...boundsResults.map(
        (r) =>
          `| ${LABELS[r.system as SystemKey]} | ${r.scenario} | ${fmtMiB(r.peakRssBytes)} | ${r.upstreamBytes === undefined ? '–' : fmtMiB(r.upstreamBytes)} | ${r.p99Ms === undefined ? '–' : `${r.p50Ms!.toFixed(2)} / ${r.p99Ms.toFixed(2)} ms`} | ${r.detail} |`,
      ),
    ].join('\n');
    for (const r of boundsResults.filter((b) => b.system === 'mirror')) {
      if (r.peakRssBytes !== undefined) boundsChecks.push({ target: `${r.scenario}: peak RSS < 150 MiB`, ok: r.peakRssBytes < 150 * MiB, detail: fmtMiB(r.peakRssBytes) });
      if (r.p99Ms !== undefined) boundsChecks.push({ target: `${r.scenario}: event-loop stall p99 < 20 ms`, ok: r.p99Ms < 20, detail: `${r.p99Ms.toFixed(2)} ms` });
    }
  }

  const rows = buildRows(big, concurrent);
  const table = renderTable(rows, results);
  const checks = [...checkTargets(results, big), ...firstPullChecks, ...boundsChecks];
  const totalSeconds = (performance.now() - t0) / 1000;
  const m = machine();
  const notes = [...setupNotes, ...results.flatMap((r) => r.notes), ...firstPullNotes];
  const busyAfter = await machineBusy();
  const idleNote = `Machine idle check: ${(busyBefore * 100).toFixed(0)}% CPU busy before the first system (load ${loadBefore}), ${(busyAfter * 100).toFixed(0)}% after the last (load ${loadavg()}).`;
  if (noisy || busyAfter > 0.15) notes.push(`${idleNote} Other processes were using the cores: treat the numbers as noisy.`);

  console.log('');
  if (table) console.log(table);
  console.log('');
  for (const t of [firstPullTable, boundsTable].filter(Boolean)) {
    console.log(t);
    console.log('');
  }
  if (checks.length) {
    console.log('targets (mirror):');
    for (const c of checks) console.log(`  ${c.ok ? 'ok  ' : 'MISS'}  ${c.target}: ${c.detail}`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  const mirrorResult = results.find((r) => r.key === 'mirror');
  for (const p of mirrorResult?.profiles ?? []) {
    console.log('');
    console.log(summarizeCpuProfile(p));
  }
  console.log('');
  log(`bench finished in ${totalSeconds.toFixed(0)} s`);

  if (!argv['no-results']) {
    const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const md = [
      '# Benchmark results',
      '',
      `\`npm run bench\` on ${date} (mirror at ${rev}): ${m.nproc} cores (${m.cpu}), ${m.memory} RAM, all on loopback. ${versions()}.`,
      `The whole bench took ${totalSeconds.toFixed(0)} s. ${idleNote}`,
      '',
      'One upstream for all: CNCF distribution with Bearer token auth behind a counting front. Each system starts with an',
      'empty cache for each cold measurement. A pull is manifest by tag, config, then the layers 3 at a time, every blob',
      'streamed and its sha256 verified by the client. *distribution (proxy)* is `docker-registry` with `proxy.remoteurl`',
      '(anonymous); *nginx (proxy_cache)* is the classic registry cache (`proxy_cache_lock on`, tag manifests 1 min keyed',
      'with `Accept`, digests 7 days, `sendfile on`); nginx\'s clients do the token dance themselves. Warm blobs: `curl` to',
      '/dev/null, best of 5 rounds (8 clients: aggregate bytes ÷ slowest client). Warm manifests: `wrk -t2 -c16 -d5s --latency`.',
      'Peak RSS: VmHWM (nginx: master + workers; the mirror: primary + workers). Peak RSS per process: VmRSS of each process',
      'sampled every 100 ms during that measurement alone, the peak of each. *mirror (workers auto)* runs `serve --workers auto`,',
      '*mirror (workers 1)* `serve --workers 1`. Ratios are mirror (workers auto) ÷ the other system.',
      '',
      'Reading it: distribution 2.8 in proxy mode fetches a cold blob twice (one upstream stream for the client, one',
      'to store it) and every concurrent client of a blob that is still downloading gets its own upstream stream; nginx',
      'fetches once but `proxy_cache_lock` holds every other client until the whole blob is cached (it polls the lock',
      'every 500 ms), which the time-to-first-byte rows show; the mirror fetches once and streams to all of them at once.',
      '',
      ...(table ? [table, ''] : []),
      ...(firstPullTable ? [firstPullTable, ''] : []),
      ...(boundsTable ? [boundsTable, ''] : []),
      ...(checks.length ? ['Targets (mirror):', '', ...checks.map((c) => `- ${c.ok ? '✅' : '❌'} ${c.target}: ${c.detail}`), ''] : []),
      ...notes.map((n) => `Note: ${n}`),
      '',
    ].join('\n');
    writeFileSync(join(ROOT, 'test/bench/RESULTS.md'), md);
    log('wrote test/bench/RESULTS.md');
  }
  return 0;
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (err) {
  console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  exitCode = 1;
  keepWorkDir = true;
} finally {
  await cleanup();
  clearTimeout(watchdog);
}
process.exit(exitCode);
