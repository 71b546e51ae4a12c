import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, describe, expect, it } from 'vitest';
import { HtpasswdAuth } from '../../src/server/client-auth.js';

const work = mkdtempSync(join(tmpdir(), 'client-auth-'));
const file = join(work, 'htpasswd');
writeFileSync(file, `ops:${bcrypt.hashSync('right-pass', 4)}\n`);
afterAll(() => rmSync(work, { recursive: true, force: true }));
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

describe('htpasswd client auth', () => {
  it('checks passwords on a worker, and a repeated wrong header costs no second bcrypt run', async () => {
    const auth = new HtpasswdAuth(file, 'r', { workers: 1, maxQueue: 64 });
    try {
      expect(await auth.check(basic('ops', 'right-pass'))).toEqual({ ok: true, user: 'ops' });
      expect(await auth.check(basic('ops', 'right-pass'))).toEqual({ ok: true, user: 'ops' });
      expect(auth.passwordChecks).toBe(1);
      const wrong = basic('ops', 'guess');
      const concurrent = await Promise.all(Array.from({ length: 20 }, () => auth.check(wrong)));
      for (let i = 0; i < 5; i++) concurrent.push(await auth.check(wrong));
      for (const r of concurrent) expect(r).toEqual({ ok: false, user: 'ops', reason: 'wrong password' });
      expect(auth.passwordChecks).toBe(2);
      // A reload (the password may have changed) forgets refused headers too.
      auth.reload();
      expect((await auth.check(wrong)).ok).toBe(false);
      expect(auth.passwordChecks).toBe(3);
    } finally {
      await auth.close();
    }
  });

  it('answers busy at once when too many checks wait, and after close', async () => {
    const auth = new HtpasswdAuth(file, 'r', { workers: 1, maxQueue: 2 });
    try {
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => auth.check(basic('ops', `guess-${i}`))));
      // One running, two waiting; the other seven were not queued.
      expect(results.filter((r) => !r.ok && r.reason === 'wrong password')).toHaveLength(3);
      expect(results.filter((r) => !r.ok && r.busy === true)).toHaveLength(7);
      expect(auth.passwordChecks).toBe(3);
    } finally {
      await auth.close();
    }
    expect(await auth.check(basic('ops', 'right-pass'))).toMatchObject({ ok: false, busy: true });
  });
});
