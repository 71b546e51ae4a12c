// The warm blob read path in isolation (issue 16): a fake upstream with one large blob, the
// built mirror with N workers, the blob pulled once (cold) and then R times by curl, one at a
// time; per round the wall time, MB/s and the CPU every mirror process spent (from /proc).
//   node --import tsx test/bench/blob-cpu.ts [workers=1] [rounds=6] [MiB=192]
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pseudoRandomBytes, startFakeUpstream } from '../fixtures/fake-upstream.js';

const workers = process.argv[2] ?? '1';
const rounds = Number(process.argv[3] ?? 6);
const mib = Number(process.argv[4] ?? 192);
const upstream = await startFakeUpstream({ auth: false });
const digest = upstream.addBlob(pseudoRandomBytes(mib * 1024 * 1024, 'blob-cpu'), ['team/app']);
const work = mkdtempSync(join(tmpdir(), 'blobcpu-'));
const flags = (process.env.NODE_FLAGS ?? '--max-semi-space-size=2').split(' ').filter(Boolean);
// MIRROR_CPU / CURL_CPU pin the mirror and curl to a core (taskset), to tell placement effects from code.
const pin = (cpu: string | undefined, argv: string[]) => (cpu ? ['taskset', ['-c', cpu, ...argv]] : [argv[0]!, argv.slice(1)]) as [string, string[]];
const child = spawn(...pin(process.env.MIRROR_CPU, [process.execPath, ...flags, process.env.DIST ?? 'dist/cli.js', 'serve', '--listen', '127.0.0.1:0', '--workers', workers, '--storage', join(work, 'c'), '--upstream', upstream.url, '--log-level', 'info']), { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise<string>((resolve) => { let out = ''; child.stdout!.on('data', (c: Buffer) => { if (out === undefined) return; out += c; const m = /"url":"(http[^"]+)"/.exec(out); if (m) { out = undefined as unknown as string; resolve(m[1]!); } }); });
child.stdout!.resume();
const pids = () => [child.pid!, ...readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => { try { return readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(child.pid); } catch { return false; } }).map(Number)];
const ticks = (pid: number) => { try { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return Number(f[11]) + Number(f[12]); } catch { return 0; } };
const blobUrl = `${url}/v2/team/app/blobs/${digest}`;
// The upstream lives in this process: curl must not block its event loop (execFile, not execFileSync).
const curl = async (...args: string[]) => (await promisify(execFile)(...pin(process.env.CURL_CPU, ['curl', '-sf', '-o', '/dev/null', ...args]), { encoding: 'utf8' })).stdout;
await curl(blobUrl);
await new Promise((r) => setTimeout(r, 1500));
for (let r = 0; r < rounds; r++) {
  const ps = pids();
  const before = ps.map(ticks);
  const t0 = process.hrtime.bigint();
  const out = await curl('-w', '%{size_download} %{header_json}', blobUrl);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const size = Number(out.split(' ')[0]);
  const worker = /"x-mirror-worker":\["([^"]+)"/i.exec(out)?.[1] ?? '-';
  const cpu = ps.map((p, i) => `${p === child.pid ? 'primary' : p}:${(ticks(p) - before[i]!) * 10}ms`).join(' ');
  console.log(`round ${r}: ${(size / 1e6 / s).toFixed(0)} MB/s in ${(s * 1000).toFixed(0)} ms (worker ${worker}); cpu ${cpu}`);
}
await new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); });
await upstream.stop();
