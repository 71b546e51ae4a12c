// Load generators and measurement helpers: wrk (autocannon when wrk is missing), curl
// processes for blob throughput, and a summary of `node --cpu-prof` profiles.
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RealUpstream } from '../fixtures/real-upstream.js';
import { ROOT } from './systems.js';

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion, killed after timeoutMs. */
export function run(command: string, args: string[], timeoutMs: number): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? ((err as NodeJS.ErrnoException & { code?: unknown }).code as number | undefined) ?? 1 : 0;
      resolve({ code: typeof code === 'number' ? code : 1, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** apt-get install when missing (as root), `apt-get update` at most once. */
let aptUpdated = false;
export function ensureAptPackage(command: string, pkg: string): boolean {
  if (hasCommand(command)) return true;
  if (process.getuid?.() !== 0) return false;
  try {
    if (!aptUpdated) {
      console.log(`# apt-get update (for ${pkg})`);
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', timeout: 180_000 });
      aptUpdated = true;
    }
    console.log(`# apt-get install -y ${pkg}`);
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg], {
      stdio: 'inherit',
      timeout: 300_000,
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  } catch (err) {
    console.log(`# could not install ${pkg}: ${(err as Error).message}`);
  }
  return hasCommand(command);
}

export interface LoadResult {
  tool: 'wrk' | 'autocannon';
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  /** Responses that were not 2xx/3xx (or errors). */
  errors: number;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  if (unit === 'us') return n / 1000;
  if (unit === 'ms') return n;
  if (unit === 's') return n * 1000;
  if (unit === 'm') return n * 60_000;
  throw new Error(`unknown unit ${unit}`);
}

export function parseWrk(output: string): Omit<LoadResult, 'tool'> {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(output);
  const p50 = /^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(output);
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(output);
  const total = /(\d+) requests in/.exec(output);
  if (!rps || !p50 || !p99 || !total) throw new Error(`cannot parse wrk output:\n${output}`);
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(output);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const errors = Number(non2xx?.[1] ?? 0) + (socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0);
  return { requestsPerSecond: Number(rps[1]), p50Ms: toMs(p50[1]!, p50[2]!), p99Ms: toMs(p99[1]!, p99[2]!), requests: Number(total[1]), errors };
}

/** 2 threads, 16 connections, `seconds` long, with latency percentiles. */
export async function loadTest(url: string, headers: Record<string, string>, seconds = 5): Promise<LoadResult> {
  // BENCH_LOAD_TOOL=autocannon forces the fallback.
  if (process.env.BENCH_LOAD_TOOL !== 'autocannon' && hasCommand('wrk')) {
    const args = ['-t2', '-c16', `-d${seconds}s`, '--latency', '--timeout', '5s'];
    for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
    args.push(url);
    const res = await run('wrk', args, (seconds + 20) * 1000);
    if (res.code !== 0) throw new Error(`wrk failed (${res.code}): ${res.stderr}${res.stdout}`);
    return { tool: 'wrk', ...parseWrk(res.stdout) };
  }
  const bin = join(ROOT, 'node_modules/.bin/autocannon');
  if (!existsSync(bin)) throw new Error('neither wrk nor autocannon is available');
  const args = ['-j', '-c', '16', '-w', '2', '-d', String(seconds)];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}=${v}`);
  args.push(url);
  const res = await run(bin, args, (seconds + 30) * 1000);
  if (res.code !== 0) throw new Error(`autocannon failed (${res.code}): ${res.stderr}`);
  const j = JSON.parse(res.stdout) as { requests: { average: number; total: number }; latency: { p50: number; p99: number }; non2xx: number; errors: number };
  return { tool: 'autocannon', requestsPerSecond: j.requests.average, p50Ms: j.latency.p50, p99Ms: j.latency.p99, requests: j.requests.total, errors: j.non2xx + j.errors };
}

export interface CurlResult {
  status: number;
  bytes: number;
  seconds: number;
}

export async function curlDownload(url: string, headers: Record<string, string>, timeoutSeconds = 120): Promise<CurlResult> {
  const args = ['-s', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}', '--max-time', String(timeoutSeconds)];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(url);
  const res = await run('curl', args, (timeoutSeconds + 10) * 1000);
  const [status, bytes, seconds] = res.stdout.trim().split(' ').map(Number);
  if (res.code !== 0 || status !== 200) throw new Error(`curl ${url}: exit ${res.code}, status ${status}: ${res.stderr}`);
  return { status: status!, bytes: bytes!, seconds: seconds! };
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** Self time by function and by file of a .cpuprofile, as text. */
export function summarizeCpuProfile(path: string, top = 20): string {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, profile.timeDeltas[i] ?? 0)));
  let total = 0;
  let idle = 0;
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  const shortUrl = (url: string) =>
    url
      .replace(`file://${ROOT}`, '')
      .replace(/^.*\/node_modules\//, 'node_modules/')
      .replace(/^node:internal\//, 'node:internal/') || '(native)';
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    total += us;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    const file = shortUrl(url);
    const fn = `${functionName || '(anonymous)'} ${file}${url ? `:${lineNumber + 1}` : ''}`;
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
    const bucket = url.startsWith('node:') ? url.replace(/^(node:(internal\/)?[^/]+).*$/, '$1') : file.startsWith('node_modules/') ? file.split('/').slice(0, 2).join('/') : file;
    byFile.set(bucket, (byFile.get(bucket) ?? 0) + us);
  }
  // Inclusive time of the project's own functions and of its dependencies' entry points.
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const us = Math.max(0, profile.timeDeltas[i] ?? 0);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const { functionName, url, lineNumber } = byId.get(cur)!.callFrame;
      if (!url.includes('/dist/') && !url.includes('/node_modules/')) continue;
      const key = `${functionName || '(anonymous)'} ${shortUrl(url)}:${lineNumber + 1}`;
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + us);
    }
  });
  const busy = total - idle;
  const pct = (us: number) => `${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%`;
  const lines = [`${path}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (percentages of busy time)`, '  top self time by function:'];
  for (const [fn, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${fn}`);
  lines.push('  inclusive time of project and dependency functions:');
  for (const [fn, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${fn}`);
  lines.push('  self time by module:');
  for (const [file, us] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 12)) lines.push(`  ${pct(us)}  ${file}`);
  return lines.join('\n');
}

/** Wait until the upstream front has been quiet for a moment (reference systems go on fetching after the client is done). */
export async function settle(upstream: RealUpstream, quietMs = 500, maxMs = 15_000): Promise<void> {
  const until = Date.now() + maxMs;
  let last = -1;
  while (Date.now() < until) {
    const now = upstream.bytes({}) + upstream.requests.length;
    if (now === last) return;
    last = now;
    await new Promise((r) => setTimeout(r, quietMs));
  }
}
