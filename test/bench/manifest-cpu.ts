// The warm manifest hit path in isolation, for before/after checks of the hot path (issue 16):
// a fake upstream, the built mirror (`dist/cli.js`, or DIST=<another build's cli.js>) with N
// workers, wrk -t2 -c16 by tag and by digest, and the mirror's CPU time per request read from
// /proc (steadier than req/s on a 2-core machine where wrk shares the cores; still ±15 %).
//   node --import tsx test/bench/manifest-cpu.ts [workers=1] [rounds=3]      PROF=1: --cpu-prof into /tmp/prof
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFakeUpstream } from '../fixtures/fake-upstream.js';
import { vmHwm } from './systems.js';
import { spawn } from 'node:child_process';
const workers = process.argv[2] ?? '1';
const rounds = Number(process.argv[3] ?? 3);
const upstream = await startFakeUpstream({ auth: true });
const config = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: upstream.addBlob(Buffer.from('{}')), size: 2 }, layers: [] };
const digest = upstream.addManifest('team/app', 'v1', Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.manifest.v1+json');
const work = mkdtempSync(join(tmpdir(), 'hot-'));
const flags = process.env.PROF ? ['--cpu-prof', '--cpu-prof-dir=/tmp/prof'] : [];
const child = spawn(process.execPath, [...flags, process.env.DIST ?? 'dist/cli.js', 'serve', '--listen', '127.0.0.1:0', '--workers', workers, '--storage', join(work, 'c'), '--upstream', upstream.url, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise<string>((resolve) => { let out = ''; child.stdout!.on('data', (c: Buffer) => { if (out === undefined) return; out += c; const m = /"url":"(http[^"]+)"/.exec(out); if (m) { out = undefined as unknown as string; resolve(m[1]!); } }); });
const mirror = { url, kill: (sig: NodeJS.Signals) => new Promise((r) => { child.once('exit', r); child.kill(sig); }) };
const accept = 'application/vnd.oci.image.manifest.v1+json';
await fetch(`${mirror.url}/v2/team/app/manifests/v1`, { headers: { accept } });
for (const [label, path] of [['tag', 'v1'], ['digest', digest]]) {
  for (let r = 0; r < rounds; r++) {
    const cpu = () => { const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return (Number(f[11]) + Number(f[12])) * 10; };
    const c0 = cpu();
    const { stdout: out } = await promisify(execFile)('wrk', ['-t2', '-c16', '-d8s', '--latency', '-H', `Accept: ${accept}`, `${mirror.url}/v2/team/app/manifests/${path}`]);
    const rps = /Requests\/sec:\s+([\d.]+)/.exec(out)?.[1];
    const p99 = /99%\s+([\d.]+\w+)/.exec(out)?.[1];
    const total = Number(/(\d+) requests in/.exec(out)?.[1]);
    console.log(`${label} round ${r}: ${rps} req/s p99 ${p99}; mirror CPU ${((cpu() - c0) * 1000 / total).toFixed(1)} us/request`);
  }
}
// Peak RSS of the mirror process over the whole run (one process with workers 1).
console.log(`mirror process peak RSS (VmHWM) ${(vmHwm(child.pid!) / 1048576).toFixed(1)} MiB`);
const t0 = Date.now();
await mirror.kill('SIGTERM');
console.log(`stop took ${Date.now() - t0} ms`);
await upstream.stop();
