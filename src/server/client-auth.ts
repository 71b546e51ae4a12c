// Optional authentication of the mirror's own clients: an htpasswd file of bcrypt entries
// (as `htpasswd -B` writes them). /v2/ answers 401 with a Basic challenge. bcrypt is slow by
// design (~50 ms a check): the checks run on worker threads (password-verifier.ts), a
// verified Authorization header is remembered for a while, a refused one briefly, and
// concurrent checks of the same header share one bcrypt run.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { LRUCache } from 'lru-cache';
import { PasswordVerifier } from './password-verifier.js';

export type AuthResult =
  | { ok: true; user: string }
  /** `busy`: too many password checks are waiting; the client may try again shortly. */
  | { ok: false; user: string | undefined; reason: string; busy?: boolean };

export class HtpasswdAuth {
  private users = new Map<string, string>();
  private readonly verified = new LRUCache<string, string>({ max: 10_000, ttl: 5 * 60_000 });
  /** Headers whose password was wrong: repeating one costs no bcrypt run. Keyed by a hash, never the password. */
  private readonly refused = new LRUCache<string, string>({ max: 10_000, ttl: 60_000 });
  private readonly checking = new Map<string, Promise<AuthResult>>();
  private readonly verifier: PasswordVerifier;

  constructor(
    private readonly path: string,
    readonly realm: string,
    // One worker per spare core, at most 2: the main thread keeps serving.
    options = { workers: Math.max(1, Math.min(2, availableParallelism() - 1)), maxQueue: 64 },
  ) {
    this.verifier = new PasswordVerifier(options);
    this.reload();
  }

  /** bcrypt runs handed to the workers so far. */
  get passwordChecks(): number {
    return this.verifier.checks;
  }

  /** Stop the password workers (server close). */
  close(): Promise<void> {
    return this.verifier.close();
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
    this.refused.clear();
  }

  get challenge(): string {
    return `Basic realm="${this.realm.replace(/"/g, '')}"`;
  }

  async check(authorization: string | undefined): Promise<AuthResult> {
    if (!authorization?.startsWith('Basic ')) return { ok: false, user: undefined, reason: 'no credentials' };
    const key = createHash('sha256').update(authorization).digest('hex');
    const known = this.verified.get(key);
    if (known) return { ok: true, user: known };
    const refusedUser = this.refused.get(key);
    if (refusedUser !== undefined) return { ok: false, user: refusedUser, reason: 'wrong password' };
    const running = this.checking.get(key);
    if (running) return running;
    const check = this.verify(authorization, key).finally(() => this.checking.delete(key));
    this.checking.set(key, check);
    return check;
  }

  private async verify(authorization: string, key: string): Promise<AuthResult> {
    const decoded = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return { ok: false, user: undefined, reason: 'malformed credentials' };
    const user = decoded.slice(0, colon);
    const hash = this.users.get(user);
    if (!hash) return { ok: false, user, reason: 'unknown user' };
    const users = this.users;
    const verdict = await this.verifier.verify(decoded.slice(colon + 1), hash);
    if (verdict === 'busy') return { ok: false, user, reason: 'too many password checks waiting', busy: true };
    // A reload while the check ran: its verdict is about the old file, remember nothing.
    if (users !== this.users) return verdict ? { ok: true, user } : { ok: false, user, reason: 'wrong password' };
    if (!verdict) {
      this.refused.set(key, user);
      return { ok: false, user, reason: 'wrong password' };
    }
    this.verified.set(key, user);
    return { ok: true, user };
  }
}
