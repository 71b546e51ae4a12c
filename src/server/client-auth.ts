// Optional authentication of the mirror's own clients: an htpasswd file of bcrypt entries
// (as `htpasswd -B` writes them). /v2/ answers 401 with a Basic challenge. bcrypt is slow by
// design (~50 ms a check), so a verified Authorization header is remembered for a while.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';

export type AuthResult = { ok: true; user: string } | { ok: false; user: string | undefined; reason: string };

export class HtpasswdAuth {
  private users = new Map<string, string>();
  private readonly verified = new LRUCache<string, string>({ max: 10_000, ttl: 5 * 60_000 });

  constructor(
    private readonly path: string,
    readonly realm: string,
  ) {
    this.reload();
  }

  /** Read the file again (SIGHUP). Lines: `user:$2y$…`; only bcrypt entries are accepted. */
  reload(): void {
    const users = new Map<string, string>();
    for (const [i, line] of readFileSync(this.path, 'utf8').split('\n').entries()) {
      const trimmed = line.trim();
      if (!trimmed || trimmed.startsWith('#')) continue;
      const colon = trimmed.indexOf(':');
      const user = trimmed.slice(0, colon);
      const hash = trimmed.slice(colon + 1);
      if (colon <= 0 || !/^\$2[aby]\$\d\d\$/.test(hash)) throw new Error(`${this.path}:${i + 1}: not a "user:bcrypt-hash" line (create entries with htpasswd -B)`);
      users.set(user, hash.replace(/^\$2y\$/, '$2b$'));
    }
    this.users = users;
    this.verified.clear();
  }

  get challenge(): string {
    return `Basic realm="${this.realm.replace(/"/g, '')}"`;
  }

  async check(authorization: string | undefined): Promise<AuthResult> {
    if (!authorization?.startsWith('Basic ')) return { ok: false, user: undefined, reason: 'no credentials' };
    const key = createHash('sha256').update(authorization).digest('hex');
    const known = this.verified.get(key);
    if (known) return { ok: true, user: known };
    const decoded = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return { ok: false, user: undefined, reason: 'malformed credentials' };
    const user = decoded.slice(0, colon);
    const hash = this.users.get(user);
    if (!hash) return { ok: false, user, reason: 'unknown user' };
    if (!(await bcrypt.compare(decoded.slice(colon + 1), hash))) return { ok: false, user, reason: 'wrong password' };
    this.verified.set(key, user);
    return { ok: true, user };
  }
}
