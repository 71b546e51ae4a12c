// The process log (src/log.ts) when nobody reads stdout: a stuck log reader must cost a
// bounded amount of memory, not grow the mirror until it is killed.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Log `lines` access-sized lines in a child whose stdout nobody reads; its heap growth in MiB. */
function heapGrowthWithUnreadStdout(lines: number, bufferBytes: number): Promise<number> {
  const code = `
    import { createLogger } from './src/log.ts';
    const logger = createLogger('info', undefined, { bufferBytes: ${bufferBytes} });
    globalThis.gc();
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < ${lines}; i++) logger.info({ reqId: 'abc-' + i, method: 'GET', path: '/v2/library/alpine/manifests/3.19', status: 200, outcome: 'hit', bytes: 1234, ms: 0.5 }, 'request');
    globalThis.gc();
    process.stderr.write(JSON.stringify({ grew: (process.memoryUsage().heapUsed - before) / 1048576 }) + '\\n');
  `;
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  // stdout is a pipe nobody reads: after the kernel's 64 KiB the process's own buffer is all there is.
  child.stdout.pause();
  return new Promise((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => (child.kill('SIGKILL'), reject(new Error(`no answer: ${err}`))), 60_000);
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
      const m = /\{"grew":([-\d.e]+)\}/.exec(err);
      if (!m) return;
      clearTimeout(timer);
      // It would wait for ever at exit to flush into the unread pipe.
      child.kill('SIGKILL');
      resolve(Number(m[1]));
    });
  });
}

describe('the process log with a reader that stopped reading', () => {
  it('holds at most its buffer: 300k lines (~45 MiB) into an unread stdout grow the heap by little more than the 4 MiB bound', async () => {
    const grew = await heapGrowthWithUnreadStdout(300_000, 4 * 1024 * 1024);
    expect(grew).toBeLessThan(12);
  }, 90_000);

  it('(the same without a bound would hold them all: the check above can fail)', async () => {
    const grew = await heapGrowthWithUnreadStdout(300_000, 0);
    expect(grew).toBeGreaterThan(30);
  }, 90_000);
});
