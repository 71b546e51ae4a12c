// The warm blob read path in isolation (issue 16): a fake upstream with one large blob, the
// built mirror (started as the bench starts it) with N workers, the blob pulled once (cold)
// and then R times by curl, one at a time; per round MB/s, the worker that served it and the
// CPU every mirror process spent (from /proc).
//   node --import tsx test/bench/blob-cpu.ts [workers=1] [rounds=6] [MiB=192] [clients=1]
// With clients > 1, each round is that many curls at once (MB/s: all bytes ÷ the slowest).
// At the end: each mirror process's peak RSS (VmHWM).
// MIRROR_CPU / CURL_CPU pin the mirror's processes and curl to a core (taskset), to tell
// placement effects from code.
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pseudoRandomBytes, startFakeUpstream } from '../fixtures/fake-upstream.js';
import { startMirror, vmHwm } from './systems.js';

const workers = Number(process.argv[2] ?? 1);
const rounds = Number(process.argv[3] ?? 6);
const mib = Number(process.argv[4] ?? 192);
const clients = Number(process.argv[5] ?? 1);

const upstream = await startFakeUpstream({ auth: false });
const digest = upstream.addBlob(pseudoRandomBytes(mib * 1024 * 1024, 'blob-cpu'), ['team/app']);
const workDir = mkdtempSync(join(tmpdir(), 'blobcpu-'));
const mirror = await startMirror({ upstreamUrl: upstream.url, workDir, workers });
const pin = process.env.MIRROR_CPU;
if (pin) for (const { pid } of mirror.processes()) execFileSync('taskset', ['-a', '-cp', pin, String(pid)], { stdio: 'ignore' });

/** User + system CPU of a process so far, in clock ticks (0 once it is gone). */
function ticks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

// The upstream lives in this process: curl must not block its event loop (execFile, not execFileSync).
async function curl(...args: string[]): Promise<string> {
  const argv = ['curl', '-sf', '-o', '/dev/null', ...args];
  const [file, rest] = process.env.CURL_CPU ? ['taskset', ['-c', process.env.CURL_CPU, ...argv]] : [argv[0]!, argv.slice(1)];
  return (await promisify(execFile)(file, rest, { encoding: 'utf8' })).stdout;
}

const blobUrl = `${mirror.url}/v2/team/app/blobs/${digest}`;
try {
  await curl(blobUrl);
  await new Promise((r) => setTimeout(r, 1500));
  // The peak from here on: the warm rounds, not the cold download (clear_refs 5 resets VmHWM).
  for (const { pid } of mirror.processes()) writeFileSync(`/proc/${pid}/clear_refs`, '5');
  for (let r = 0; r < rounds; r++) {
    const processes = mirror.processes();
    const before = processes.map((p) => ticks(p.pid));
    const t0 = process.hrtime.bigint();
    const outs = await Promise.all(Array.from({ length: clients }, () => curl('-w', '%{size_download} %{header_json}', blobUrl)));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const size = outs.reduce((sum, out) => sum + Number(out.split(' ')[0]), 0);
    const worker = outs.map((out) => /"x-mirror-worker":\["([^"]+)"/i.exec(out)?.[1] ?? '-').join(',');
    const cpu = processes.map((p, i) => `${p.role}: ${(ticks(p.pid) - before[i]!) * 10} ms`).join(', ');
    console.log(`round ${r}: ${(size / 1e6 / seconds).toFixed(0)} MB/s in ${(seconds * 1000).toFixed(0)} ms (worker ${worker}); cpu ${cpu}`);
  }
  console.log(`peak RSS (VmHWM) in the warm rounds: ${mirror.processes().map((p) => `${p.role} ${(vmHwm(p.pid) / 1048576).toFixed(1)} MiB`).join(', ')}`);
} finally {
  await mirror.stop();
  await upstream.stop();
  rmSync(workDir, { recursive: true, force: true });
}
