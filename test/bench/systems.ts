// The three systems under test, each a real process on 127.0.0.1 with its own fresh
// storage, pointed at the same counting upstream front:
//  - mirror:       this project, `node dist/cli.js serve` (the production build)
//  - distribution: Debian's docker-registry in proxy (pull-through cache) mode
//  - nginx:        Debian's nginx as the classic registry caching proxy (proxy_cache)
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'undici';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** mirror = the mirror with `workers: auto` (its default); mirror-w1 = the mirror with `workers: 1`. */
export type SystemKey = 'mirror' | 'mirror-w1' | 'distribution' | 'nginx';

/** One process of a running system and what it is (primary, worker 1, master, …). */
export interface SystemProcess {
  pid: number;
  role: string;
}

export interface RunningSystem {
  key: SystemKey;
  url: string;
  /** Every process of the system (nginx: master and workers). */
  pids(): number[];
  /** Peak resident set (sum of VmHWM over its processes), bytes. */
  peakRss(): number;
  /** Its processes with their roles (mirror: the primary and its workers; nginx: master and workers). */
  processes(): SystemProcess[];
  logPath: string;
  /** Per-phase CPU profiles through the inspector (mirror started with `inspect`). */
  profiler?: PhaseProfiler;
  stop(): Promise<void>;
}

export interface PhaseProfiler {
  start(): Promise<void>;
  /** Stops the running profile and writes it (Chrome .cpuprofile format) to `path`. */
  stop(path: string): Promise<void>;
  close(): void;
}

/** Drive V8's sampling profiler in a process started with --inspect, over the inspector WebSocket. */
async function connectProfiler(wsUrl: string): Promise<PhaseProfiler> {
  const ws = new WebSocket(wsUrl);
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener('open', () => resolve(), { once: true });
    ws.addEventListener('error', () => reject(new Error(`cannot connect to the inspector at ${wsUrl}`)), { once: true });
  });
  let nextId = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  ws.addEventListener('message', (event) => {
    const msg = JSON.parse(String(event.data)) as { id?: number; result?: unknown; error?: { message: string } };
    if (msg.id === undefined) return;
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) p?.reject(new Error(msg.error.message));
    else p?.resolve(msg.result);
  });
  const send = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<unknown>((resolve, reject) => {
      const id = ++nextId;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params }));
      setTimeout(() => {
        if (pending.delete(id)) reject(new Error(`inspector: ${method} timed out`));
      }, 30_000).unref();
    });
  await send('Profiler.enable');
  await send('Profiler.setSamplingInterval', { interval: 500 });
  return {
    start: async () => {
      await send('Profiler.start');
    },
    stop: async (path) => {
      const { profile } = (await send('Profiler.stop')) as { profile: unknown };
      writeFileSync(path, JSON.stringify(profile));
    },
    close: () => ws.close(),
  };
}

/** Everything started and not yet stopped, for the bench's finally/signal cleanup. */
export const running = new Set<RunningSystem>();

export async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** A process's peak resident set since it started (or since `clear_refs` 5), bytes; 0 once it is gone. */
export function vmHwm(pid: number): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function vmRss(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The peak resident set of one process over a sampled interval. */
export interface ProcessPeak {
  role: string;
  pid: number;
  bytes: number;
}

/**
 * Sample VmRSS of every process of a system every `intervalMs` until stopped: the peak per
 * process within one phase, whatever was resident before it (VmHWM, even reset by clear_refs, starts
 * from the resident set at the reset).
 * The process list (workers come and go) is refreshed every second: scanning /proc is not free.
 */
export function sampleRss(system: RunningSystem, intervalMs = 100): { stop(): ProcessPeak[] } {
  const peaks = new Map<number, ProcessPeak>();
  let procs: SystemProcess[] = [];
  let listedAt = 0;
  const tick = () => {
    if (Date.now() - listedAt >= 1000) {
      procs = system.processes();
      listedAt = Date.now();
    }
    for (const { pid, role } of procs) {
      const bytes = vmRss(pid);
      const peak = peaks.get(pid);
      if (!peak) peaks.set(pid, { role, pid, bytes });
      else peak.bytes = Math.max(peak.bytes, bytes);
    }
  };
  tick();
  const timer = setInterval(tick, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      tick();
      return [...peaks.values()].filter((p) => p.bytes > 0);
    },
  };
}

/** Peaks of several runs of one system, the highest per role (pids change from run to run). */
export function mergePeaks(a: ProcessPeak[], b: ProcessPeak[]): ProcessPeak[] {
  const byRole = new Map<string, ProcessPeak>();
  for (const p of [...a, ...b]) if ((byRole.get(p.role)?.bytes ?? -1) < p.bytes) byRole.set(p.role, p);
  return [...byRole.values()];
}

/** `61.2 MiB` for one process; `primary 40.1 · worker 1 60.2 · worker 2 58.3 MiB` for several. */
export function formatPeaks(peaks: ProcessPeak[]): string {
  const mib = (b: number) => (b / (1024 * 1024)).toFixed(1);
  if (peaks.length === 1) return `${mib(peaks[0]!.bytes)} MiB`;
  const rank = (role: string) => (/^(primary|master)$/.test(role) ? -1 : Number(/\d+$/.exec(role)?.[0] ?? 0));
  return `${[...peaks].sort((a, b) => rank(a.role) - rank(b.role)).map((p) => `${p.role} ${mib(p.bytes)}`).join(' · ')} MiB`;
}

/** Roles for a primary/master and its children: `worker 1`, `worker 2`, … in pid order. */
function withChildren(pid: number, primaryRole: string, childRole: string): SystemProcess[] {
  return [{ pid, role: primaryRole }, ...childrenOf(pid).sort((a, b) => a - b).map((p, i) => ({ pid: p, role: `${childRole} ${i + 1}` }))];
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone
    }
  }
  return out;
}

async function waitForHttp(url: string, timeoutMs: number, alive: () => boolean, output: () => string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.get(url, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('error', () => resolve(false));
      req.setTimeout(2000, () => req.destroy());
    });
    if (ok) return;
    if (!alive()) throw new Error(`${url}: process exited:\n${output()}`);
    if (Date.now() > until) throw new Error(`${url} did not come up within ${timeoutMs} ms:\n${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function tail(path: string, chars = 3000): string {
  try {
    const text = readFileSync(path, 'utf8');
    return text.slice(-chars);
  } catch {
    return '';
  }
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

function track(system: RunningSystem): RunningSystem {
  running.add(system);
  const stop = system.stop;
  let stopping: Promise<void> | undefined;
  system.stop = () => {
    stopping ??= stop.call(system).finally(() => running.delete(system));
    return stopping;
  };
  return system;
}

// Last resort when the bench dies without its cleanup: SIGTERM whatever is still running
// (nginx's master stops its workers; the workers are signalled too in case it is gone).
const spawned = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of spawned) {
    if (child.exitCode !== null || child.signalCode !== null || !child.pid) continue;
    for (const pid of [...childrenOf(child.pid), child.pid]) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // gone
      }
    }
  }
});

function spawnLogged(command: string, args: string[], logPath: string, options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  const fd = openSync(logPath, 'a');
  try {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', fd, fd] });
    spawned.add(child);
    child.once('exit', () => spawned.delete(child));
    return child;
  } finally {
    closeSync(fd);
  }
}

let workersOption: boolean | undefined;
/** Whether this build's `serve` has `--workers` (issue 16); probed once from its --help. */
export function mirrorHasWorkersOption(): boolean {
  workersOption ??= execFileSync(process.execPath, [join(ROOT, 'dist/cli.js'), 'serve', '--help'], { encoding: 'utf8' }).includes('--workers');
  return workersOption;
}

/**
 * The mirror as in production: `node dist/cli.js serve`, access log (stdout) to a file.
 * `workers` adds `--workers <n|auto>` (nothing when undefined: the mirror's default), only
 * when this build has the option; `config` is written as the config file (JSON is YAML).
 */
export async function startMirror(options: {
  upstreamUrl: string;
  workDir: string;
  cpuProfDir?: string;
  inspect?: boolean;
  logLevel?: string;
  extraArgs?: string[];
  workers?: number | 'auto';
  config?: Record<string, unknown>;
  key?: 'mirror' | 'mirror-w1';
}): Promise<RunningSystem> {
  const dir = mkdtempSync(join(options.workDir, 'mirror-'));
  const storage = join(dir, 'storage');
  const logPath = join(dir, 'mirror.log');
  const port = await freePort();
  const args = [...(options.extraArgs ?? [])];
  if (options.workers !== undefined && mirrorHasWorkersOption()) args.push('--workers', String(options.workers));
  if (options.config) {
    const configPath = join(dir, 'config.json');
    writeFileSync(configPath, JSON.stringify(options.config, null, 2));
    args.push('--config', configPath);
  }
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MIRROR_') && !k.startsWith('npm_')) env[k] = v;
  // As `npm start`, the image and the `mirror` command run it.
  const nodeArgs = ['--max-semi-space-size=2', ...(options.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`] : []), ...(options.inspect ? ['--inspect=127.0.0.1:0'] : [])];
  // cwd = its own directory: the repository's mirror.config.yaml must not apply.
  const child = spawnLogged(
    process.execPath,
    [...nodeArgs, join(ROOT, 'dist/cli.js'), 'serve', '--listen', `127.0.0.1:${port}`, '--storage', storage, '--upstream', options.upstreamUrl, '--log-level', options.logLevel ?? process.env.BENCH_LOG_LEVEL ?? 'info', ...args],
    logPath,
    { cwd: dir, env },
  );
  const alive = () => child.exitCode === null && child.signalCode === null;
  const until = Date.now() + 30_000;
  let url: string | undefined;
  while (!url) {
    const line = tail(logPath, 100_000).split('\n').find((l) => l.includes('"msg":"mirror listening"'));
    const u = line ? /"url":"(http[^"]+)"/.exec(line) : null;
    if (u) url = u[1];
    else if (!alive()) throw new Error(`mirror exited (${child.exitCode ?? child.signalCode}):\n${tail(logPath)}`);
    else if (Date.now() > until) {
      await stopChild(child, 'SIGKILL', 1000);
      throw new Error(`mirror did not log "mirror listening":\n${tail(logPath)}`);
    }
    else await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid!;
  const peaks = new Map<number, number>();
  let profiler: PhaseProfiler | undefined;
  if (options.inspect) {
    const ws = /Debugger listening on (ws:\/\/\S+)/.exec(tail(logPath, 100_000));
    if (!ws) throw new Error(`no inspector URL in the mirror's output:\n${tail(logPath)}`);
    profiler = await connectProfiler(ws[1]!);
  }
  return track({
    key: options.key ?? 'mirror',
    url,
    logPath,
    profiler,
    pids: () => (alive() ? [pid, ...childrenOf(pid)] : []),
    processes: () => (alive() ? withChildren(pid, 'primary', 'worker') : []),
    // The sum over the primary and its workers, each at its own peak.
    peakRss() {
      if (alive()) for (const p of [pid, ...childrenOf(pid)]) peaks.set(p, Math.max(peaks.get(p) ?? 0, vmHwm(p)));
      return [...peaks.values()].reduce((a, b) => a + b, 0);
    },
    async stop() {
      try {
        this.peakRss();
      } catch {
        // measuring must never keep a process alive
      }
      profiler?.close();
      await stopChild(child, 'SIGTERM', 15_000);
      rmSync(storage, { recursive: true, force: true });
    },
  });
}

/** distribution in proxy mode (a pull-through cache of the upstream front), anonymous. */
export async function startDistributionProxy(options: { upstreamUrl: string; workDir: string }): Promise<RunningSystem> {
  const dir = mkdtempSync(join(options.workDir, 'distribution-'));
  const port = await freePort();
  const configPath = join(dir, 'config.yml');
  const logPath = join(dir, 'distribution.log');
  writeFileSync(
    configPath,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'storage')}`,
      '  cache:',
      '    blobdescriptor: inmemory',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      '  secret: bench-secret',
      'proxy:',
      `  remoteurl: ${options.upstreamUrl}`,
      '',
    ].join('\n'),
  );
  const child = spawnLogged('/usr/bin/docker-registry', ['serve', configPath], logPath, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  const alive = () => child.exitCode === null && child.signalCode === null;
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/v2/`, 20_000, alive, () => tail(logPath)).catch(async (err: unknown) => {
    await stopChild(child, 'SIGKILL', 1000);
    throw err;
  });
  const pid = child.pid!;
  let peak = 0;
  return track({
    key: 'distribution',
    url,
    logPath,
    pids: () => (alive() ? [pid] : []),
    processes: () => (alive() ? [{ pid, role: 'process' }] : []),
    peakRss() {
      if (alive()) peak = Math.max(peak, vmHwm(pid));
      return peak;
    },
    async stop() {
      try {
        this.peakRss();
      } catch {
        // measuring must never keep a process alive
      }
      await stopChild(child, 'SIGTERM', 10_000);
      rmSync(join(dir, 'storage'), { recursive: true, force: true });
    },
  });
}

/**
 * nginx as the classic registry cache: a private instance (own prefix, config, pid, temp
 * and cache dirs). Tag manifests are cached briefly and keyed with the Accept header;
 * digests (manifests and blobs) for long. proxy_cache_lock makes concurrent misses wait
 * for the one request that fills the cache; upstream cache headers are ignored.
 */
export async function startNginx(options: { upstreamUrl: string; workDir: string }): Promise<RunningSystem> {
  const dir = mkdtempSync(join(options.workDir, 'nginx-'));
  for (const d of ['cache', 'temp/client_body', 'temp/proxy', 'temp/fastcgi', 'temp/uwsgi', 'temp/scgi', 'logs']) mkdirSync(join(dir, d), { recursive: true });
  const port = await freePort();
  const upstream = new URL(options.upstreamUrl);
  const logPath = join(dir, 'logs/error.log');
  const confPath = join(dir, 'nginx.conf');
  const proxy = [
    `      proxy_pass http://registry_upstream;`,
    `      proxy_set_header Host ${upstream.host};`,
  ];
  writeFileSync(
    confPath,
    [
      process.getuid?.() === 0 ? 'user root;' : '',
      'worker_processes auto;',
      'daemon off;',
      'master_process on;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${logPath} warn;`,
      'events { worker_connections 4096; }',
      'http {',
      `  access_log ${join(dir, 'logs/access.log')};`,
      `  client_body_temp_path ${join(dir, 'temp/client_body')};`,
      `  proxy_temp_path ${join(dir, 'temp/proxy')};`,
      `  fastcgi_temp_path ${join(dir, 'temp/fastcgi')};`,
      `  uwsgi_temp_path ${join(dir, 'temp/uwsgi')};`,
      `  scgi_temp_path ${join(dir, 'temp/scgi')};`,
      '  sendfile on;',
      '  tcp_nopush on;',
      '  tcp_nodelay on;',
      '  keepalive_timeout 65;',
      '  keepalive_requests 100000;',
      `  proxy_cache_path ${join(dir, 'cache')} levels=1:2 keys_zone=registry:32m max_size=20g inactive=7d use_temp_path=off;`,
      `  upstream registry_upstream { server ${upstream.host}; keepalive 32; }`,
      '  server {',
      `    listen 127.0.0.1:${port};`,
      '    proxy_http_version 1.1;',
      '    proxy_set_header Connection "";',
      '    proxy_read_timeout 900s;',
      '    proxy_cache registry;',
      '    proxy_cache_lock on;',
      '    proxy_cache_lock_timeout 880s;',
      '    proxy_cache_lock_age 880s;',
      '    proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;',
      '    proxy_cache_background_update on;',
      '    proxy_ignore_headers Cache-Control Expires Set-Cookie;',
      '    add_header X-Cache-Status $upstream_cache_status always;',
      '    # manifests by digest: immutable',
      '    location ~ "^/v2/.+/manifests/sha256:[a-f0-9]{64}$" {',
      '      proxy_cache_key $uri;',
      '      proxy_cache_valid 200 7d;',
      ...proxy,
      '    }',
      '    # manifests by tag: short, one entry per Accept header',
      '    location ~ ^/v2/.+/manifests/ {',
      '      proxy_cache_key $uri$http_accept;',
      '      proxy_cache_valid 200 1m;',
      ...proxy,
      '    }',
      '    # blobs: immutable',
      '    location ~ "^/v2/.+/blobs/sha256:[a-f0-9]{64}$" {',
      '      proxy_cache_key $uri;',
      '      proxy_cache_valid 200 7d;',
      ...proxy,
      '    }',
      '    location / {',
      '      proxy_cache off;',
      ...proxy,
      '    }',
      '  }',
      '}',
      '',
    ].join('\n'),
  );
  const child = spawnLogged('/usr/sbin/nginx', ['-p', dir, '-c', confPath, '-e', logPath], join(dir, 'logs/stdout.log'));
  const alive = () => child.exitCode === null && child.signalCode === null;
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/v2/`, 20_000, alive, () => tail(logPath) + tail(join(dir, 'logs/stdout.log'))).catch(async (err: unknown) => {
    await stopChild(child, 'SIGTERM', 5000);
    throw err;
  });
  const pid = child.pid!;
  const peaks = new Map<number, number>();
  return track({
    key: 'nginx',
    url,
    logPath,
    pids: () => (alive() ? [pid, ...childrenOf(pid)] : []),
    processes: () => (alive() ? withChildren(pid, 'master', 'worker') : []),
    peakRss() {
      for (const p of this.pids()) peaks.set(p, Math.max(peaks.get(p) ?? 0, vmHwm(p)));
      return [...peaks.values()].reduce((a, b) => a + b, 0);
    },
    async stop() {
      try {
        this.peakRss();
      } catch {
        // measuring must never keep a process alive
      }
      await stopChild(child, 'SIGTERM', 10_000);
      rmSync(join(dir, 'cache'), { recursive: true, force: true });
    },
  });
}

export function nginxAvailable(): boolean {
  return existsSync('/usr/sbin/nginx');
}
