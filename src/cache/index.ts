// The metadata index in SQLite (better-sqlite3, WAL). The disk is the truth for bytes;
// this is the truth for what they are: tags and their freshness, manifests' media
// types, which repository may be served which content, and access times for eviction.
// Every statement is prepared once; access times are batched, not written per request.

import Database, { type Statement } from 'better-sqlite3';
import { DAY_MS } from '../units.js';

export interface TagRow {
  upstream: string;
  repo: string;
  tag: string;
  accept: string;
  digest: string;
  mediaType: string;
  fetchedAt: number;
  checkedAt: number;
  expiresAt: number;
}

export interface RepoActivity {
  pulls: number;
  bytes: number;
  lastPull: number;
}

export interface StoredEntry {
  digest: string;
  size: number;
  kind: 'blob' | 'manifest';
  lastAccess: number;
}

export interface ManifestRow {
  digest: string;
  mediaType: string;
  size: number;
}

/** A stored manifest that refers to a subject: its descriptor's fields. */
export interface ReferrerRow {
  digest: string;
  mediaType: string;
  size: number;
  artifactType: string | undefined;
  annotations: Record<string, string> | undefined;
}

/** An upstream's referrers answer as stored: the descriptors (JSON) and until when they are trusted. */
export interface ReferrerListRow {
  descriptors: string;
  checkedAt: number;
  expiresAt: number;
}

// Each entry moves the schema one version up; user_version records how far we are.
const MIGRATIONS: string[] = [
  `CREATE TABLE blobs (
     digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
     created_at INTEGER NOT NULL, last_access INTEGER NOT NULL
   ) WITHOUT ROWID;
   CREATE TABLE manifests (
     digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, size INTEGER NOT NULL,
     created_at INTEGER NOT NULL, last_access INTEGER NOT NULL
   ) WITHOUT ROWID;
   CREATE TABLE tags (
     upstream TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, accept TEXT NOT NULL,
     digest TEXT NOT NULL, media_type TEXT NOT NULL,
     fetched_at INTEGER NOT NULL, checked_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
     PRIMARY KEY (upstream, repo, tag, accept)
   ) WITHOUT ROWID;
   CREATE INDEX tags_by_digest ON tags (digest);
   CREATE TABLE refs (parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY (parent, child)) WITHOUT ROWID;
   CREATE INDEX refs_by_child ON refs (child);
   CREATE TABLE links (upstream TEXT NOT NULL, repo TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (upstream, repo, digest)) WITHOUT ROWID;
   CREATE INDEX links_by_digest ON links (digest);
   CREATE TABLE pins (upstream TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (upstream, repo, tag)) WITHOUT ROWID;`,
  // 2: what `mirror stats` reports: hit ratio and the busiest repositories, kept across restarts.
  `CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
   CREATE TABLE repo_stats (
     upstream TEXT NOT NULL, repo TEXT NOT NULL, pulls INTEGER NOT NULL, bytes INTEGER NOT NULL, last_pull INTEGER NOT NULL,
     PRIMARY KEY (upstream, repo)
   ) WITHOUT ROWID;
   CREATE INDEX blobs_by_access ON blobs (last_access);
   CREATE INDEX manifests_by_access ON manifests (last_access);`,
  // 3: referrers (OCI 1.1). Which stored manifest refers to which subject (recorded when a
  // manifest with a subject is stored), and the upstream's last referrers answer per
  // repository and subject, for its TTL, for stale answers and for offline ones.
  `CREATE TABLE referrers (
     subject TEXT NOT NULL, referrer TEXT NOT NULL, artifact_type TEXT, annotations TEXT,
     PRIMARY KEY (subject, referrer)
   ) WITHOUT ROWID;
   CREATE INDEX referrers_by_referrer ON referrers (referrer);
   CREATE TABLE referrer_lists (
     upstream TEXT NOT NULL, repo TEXT NOT NULL, subject TEXT NOT NULL, descriptors TEXT NOT NULL,
     checked_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
     PRIMARY KEY (upstream, repo, subject)
   ) WITHOUT ROWID;`,
  // 4: the size a manifest's descriptor gives each reference: a download without Content-Length is bounded by it.
  `ALTER TABLE refs ADD COLUMN size INTEGER;`,
  // 5: what the mirror saved its upstreams, per UTC day (days since the epoch) and reason: the
  // status page's chart, kept across restarts. A few rows a day; never pruned (a year is ~2k rows).
  `CREATE TABLE saved_daily (
     day INTEGER NOT NULL, upstream TEXT NOT NULL, reason TEXT NOT NULL, bytes INTEGER NOT NULL, pulls INTEGER NOT NULL,
     PRIMARY KEY (day, upstream, reason)
   ) WITHOUT ROWID;`,
];

/** Upstream bytes and pulls a day's answers did not cost, for one upstream and one reason. */
export interface DailySaving {
  /** Days since the epoch, UTC. */
  day: number;
  upstream: string;
  reason: string;
  bytes: number;
  pulls: number;
}

interface TagDbRow {
  upstream: string;
  repo: string;
  tag: string;
  accept: string;
  digest: string;
  media_type: string;
  fetched_at: number;
  checked_at: number;
  expires_at: number;
}

function toTagRow(r: TagDbRow): TagRow {
  return {
    upstream: r.upstream, repo: r.repo, tag: r.tag, accept: r.accept, digest: r.digest, mediaType: r.media_type,
    fetchedAt: r.fetched_at, checkedAt: r.checked_at, expiresAt: r.expires_at,
  };
}

export class CacheIndex {
  readonly db: Database.Database;
  private readonly pendingAccess = new Map<string, number>();
  private readonly pendingCounters = new Map<string, number>();
  private readonly pendingRepos = new Map<string, RepoActivity & { upstream: string; repo: string }>();
  private readonly pendingSavings = new Map<string, DailySaving>();
  private readonly s: {
    getTag: Statement<[string, string, string, string], TagDbRow>;
    putTag: Statement<[string, string, string, string, string, string, number, number, number]>;
    touchTag: Statement<[number, number, string, string, string, string]>;
    deleteTag: Statement<[string, string, string]>;
    tagsOf: Statement<[string, string], { tag: string }>;
    repositories: Statement<[], { upstream: string; repo: string }>;
    getManifest: Statement<[string], { digest: string; media_type: string; size: number }>;
    putManifest: Statement<[string, string, number, number, number]>;
    putBlob: Statement<[string, number, number, number]>;
    getBlob: Statement<[string], { digest: string; size: number }>;
    deleteBlob: Statement<[string]>;
    deleteManifest: Statement<[string]>;
    hasLink: Statement<[string, string, string], { one: number }>;
    putLink: Statement<[string, string, string]>;
    putRef: Statement<[string, string, number | null]>;
    descriptorSize: Statement<[string], { size: number | null }>;
    touchBlob: Statement<[number, string]>;
    touchManifest: Statement<[number, string]>;
    addCounter: Statement<[string, number]>;
    addRepoStats: Statement<[string, string, number, number, number]>;
    putReferrer: Statement<[string, string, string | null, string | null]>;
    referrersOf: Statement<[string, string, string, number], { digest: string; media_type: string; size: number; artifact_type: string | null; annotations: string | null }>;
    getReferrerList: Statement<[string, string, string], { descriptors: string; checked_at: number; expires_at: number }>;
    putReferrerList: Statement<[string, string, string, string, number, number]>;
    deleteReferrerList: Statement<[string, string, string]>;
    addSaving: Statement<[number, string, string, number, number]>;
    savedSince: Statement<[number], DailySaving>;
  };

  constructor(path: string) {
    this.db = new Database(path);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('busy_timeout = 5000');
      this.migrate();
      this.s = this.prepare();
    } catch (err) {
      // Not a database, damaged, or too new: let the caller decide, without a dangling handle.
      this.db.close();
      throw err;
    }
  }

  private prepare(): CacheIndex['s'] {
    const db = this.db;
    return {
      getTag: db.prepare('SELECT * FROM tags WHERE upstream = ? AND repo = ? AND tag = ? AND accept = ?'),
      putTag: db.prepare(
        `INSERT INTO tags (upstream, repo, tag, accept, digest, media_type, fetched_at, checked_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (upstream, repo, tag, accept) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
           fetched_at = excluded.fetched_at, checked_at = excluded.checked_at, expires_at = excluded.expires_at`,
      ),
      touchTag: db.prepare('UPDATE tags SET checked_at = ?, expires_at = ? WHERE upstream = ? AND repo = ? AND tag = ? AND accept = ?'),
      deleteTag: db.prepare('DELETE FROM tags WHERE upstream = ? AND repo = ? AND tag = ?'),
      tagsOf: db.prepare('SELECT DISTINCT tag FROM tags WHERE upstream = ? AND repo = ? ORDER BY tag'),
      repositories: db.prepare('SELECT upstream, repo FROM tags UNION SELECT upstream, repo FROM links ORDER BY upstream, repo'),
      getManifest: db.prepare('SELECT digest, media_type, size FROM manifests WHERE digest = ?'),
      putManifest: db.prepare(
        `INSERT INTO manifests (digest, media_type, size, created_at, last_access) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (digest) DO UPDATE SET last_access = excluded.last_access`,
      ),
      putBlob: db.prepare(
        `INSERT INTO blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)
         ON CONFLICT (digest) DO UPDATE SET size = excluded.size, last_access = excluded.last_access`,
      ),
      getBlob: db.prepare('SELECT digest, size FROM blobs WHERE digest = ?'),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      deleteManifest: db.prepare('DELETE FROM manifests WHERE digest = ?'),
      hasLink: db.prepare('SELECT 1 AS one FROM links WHERE upstream = ? AND repo = ? AND digest = ?'),
      putLink: db.prepare('INSERT OR IGNORE INTO links (upstream, repo, digest) VALUES (?, ?, ?)'),
      putRef: db.prepare('INSERT INTO refs (parent, child, size) VALUES (?, ?, ?) ON CONFLICT (parent, child) DO UPDATE SET size = coalesce(excluded.size, size)'),
      descriptorSize: db.prepare('SELECT max(size) AS size FROM refs WHERE child = ?'),
      touchBlob: db.prepare('UPDATE blobs SET last_access = max(last_access, ?) WHERE digest = ?'),
      touchManifest: db.prepare('UPDATE manifests SET last_access = max(last_access, ?) WHERE digest = ?'),
      addCounter: db.prepare('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value'),
      addRepoStats: db.prepare(
        `INSERT INTO repo_stats (upstream, repo, pulls, bytes, last_pull) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (upstream, repo) DO UPDATE SET pulls = pulls + excluded.pulls, bytes = bytes + excluded.bytes,
           last_pull = max(last_pull, excluded.last_pull)`,
      ),
      putReferrer: db.prepare('INSERT OR REPLACE INTO referrers (subject, referrer, artifact_type, annotations) VALUES (?, ?, ?, ?)'),
      // Only what is still stored, and only in a repository that may be served it (links).
      referrersOf: db.prepare(
        `SELECT r.referrer AS digest, m.media_type, m.size, r.artifact_type, r.annotations
         FROM referrers r JOIN manifests m ON m.digest = r.referrer
         WHERE r.subject = ? AND EXISTS (SELECT 1 FROM links l WHERE l.upstream = ? AND l.repo = ? AND l.digest = r.referrer)
         ORDER BY r.referrer LIMIT ?`,
      ),
      getReferrerList: db.prepare('SELECT descriptors, checked_at, expires_at FROM referrer_lists WHERE upstream = ? AND repo = ? AND subject = ?'),
      putReferrerList: db.prepare(
        `INSERT INTO referrer_lists (upstream, repo, subject, descriptors, checked_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (upstream, repo, subject) DO UPDATE SET descriptors = excluded.descriptors,
           checked_at = excluded.checked_at, expires_at = excluded.expires_at`,
      ),
      deleteReferrerList: db.prepare('DELETE FROM referrer_lists WHERE upstream = ? AND repo = ? AND subject = ?'),
      addSaving: db.prepare(
        `INSERT INTO saved_daily (day, upstream, reason, bytes, pulls) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (day, upstream, reason) DO UPDATE SET bytes = bytes + excluded.bytes, pulls = pulls + excluded.pulls`,
      ),
      savedSince: db.prepare('SELECT day, upstream, reason, bytes, pulls FROM saved_daily WHERE day >= ? ORDER BY day, upstream, reason'),
    };
  }

  /** SQLite's quick consistency check: undefined when sound, else what it found. */
  quickCheck(): string | undefined {
    const rows = this.db.pragma('quick_check') as { quick_check: string }[];
    return rows.length === 1 && rows[0]!.quick_check === 'ok' ? undefined : rows.slice(0, 5).map((r) => r.quick_check).join('; ');
  }

  /** Make every committed transaction durable (WAL synced), e.g. before dropping a journal of them. */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(PASSIVE)');
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new Error(`index schema version ${current} is newer than this mirror understands (${MIGRATIONS.length})`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      // IMMEDIATE, and the version read again inside: another process (a worker starting
      // beside this one) may have run this migration while this one waited for the lock.
      this.db.transaction(() => {
        if ((this.db.pragma('user_version', { simple: true }) as number) !== v) return;
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      }).immediate();
    }
  }

  getTag(upstream: string, repo: string, tag: string, accept: string): TagRow | undefined {
    const row = this.s.getTag.get(upstream, repo, tag, accept);
    return row ? toTagRow(row) : undefined;
  }

  putTag(t: TagRow): void {
    this.s.putTag.run(t.upstream, t.repo, t.tag, t.accept, t.digest, t.mediaType, t.fetchedAt, t.checkedAt, t.expiresAt);
  }

  touchTag(upstream: string, repo: string, tag: string, accept: string, checkedAt: number, expiresAt: number): void {
    this.s.touchTag.run(checkedAt, expiresAt, upstream, repo, tag, accept);
  }

  deleteTag(upstream: string, repo: string, tag: string): void {
    this.s.deleteTag.run(upstream, repo, tag);
  }

  tagsOf(upstream: string, repo: string): string[] {
    return this.s.tagsOf.all(upstream, repo).map((r) => r.tag);
  }

  /** Every repository the mirror holds something of (tags or links), per upstream. */
  repositories(): { upstream: string; repo: string }[] {
    return this.s.repositories.all();
  }

  getManifest(digest: string): ManifestRow | undefined {
    const row = this.s.getManifest.get(digest);
    return row ? { digest: row.digest, mediaType: row.media_type, size: row.size } : undefined;
  }

  /** A manifest, its links, its references and the subject it refers to (if any), in one transaction. */
  putManifest(
    m: {
      digest: string; mediaType: string; size: number; children: { digest: string; size: number | undefined }[];
      referrer?: { subject: string; artifactType: string | undefined; annotations: Record<string, string> | undefined } | undefined;
    },
    link: { upstream: string; repo: string } | undefined,
    now: number,
  ): void {
    this.db.transaction(() => {
      this.s.putManifest.run(m.digest, m.mediaType, m.size, now, now);
      if (m.referrer) {
        const { subject, artifactType, annotations } = m.referrer;
        this.s.putReferrer.run(subject, m.digest, artifactType ?? null, annotations ? JSON.stringify(annotations) : null);
      }
      if (link) this.s.putLink.run(link.upstream, link.repo, m.digest);
      for (const child of m.children) {
        this.s.putRef.run(m.digest, child.digest, child.size ?? null);
        // The repository's own manifest says it contains these: it may be served them.
        if (link) this.s.putLink.run(link.upstream, link.repo, child.digest);
      }
    })();
  }

  /**
   * The size the stored manifests' descriptors give `digest` (the largest, when they differ:
   * a manifest that understates a size must not make the real blob undownloadable).
   */
  descriptorSize(digest: string): number | undefined {
    return this.s.descriptorSize.get(digest)?.size ?? undefined;
  }

  putBlob(digest: string, size: number, now: number): void {
    this.s.putBlob.run(digest, size, now, now);
  }

  getBlob(digest: string): { digest: string; size: number } | undefined {
    return this.s.getBlob.get(digest);
  }

  deleteBlob(digest: string): void {
    this.s.deleteBlob.run(digest);
  }

  deleteManifest(digest: string): void {
    this.s.deleteManifest.run(digest);
  }

  hasLink(upstream: string, repo: string, digest: string): boolean {
    return this.s.hasLink.get(upstream, repo, digest) !== undefined;
  }

  putLink(upstream: string, repo: string, digest: string): void {
    this.s.putLink.run(upstream, repo, digest);
  }

  /** The stored manifests that refer to `subject` and are linked to the repository, in digest order. */
  referrersOf(upstream: string, repo: string, subject: string, limit: number): ReferrerRow[] {
    return this.s.referrersOf.all(subject, upstream, repo, limit).map((r) => ({
      digest: r.digest,
      mediaType: r.media_type,
      size: r.size,
      artifactType: r.artifact_type ?? undefined,
      annotations: r.annotations ? (JSON.parse(r.annotations) as Record<string, string>) : undefined,
    }));
  }

  getReferrerList(upstream: string, repo: string, subject: string): ReferrerListRow | undefined {
    const row = this.s.getReferrerList.get(upstream, repo, subject);
    return row ? { descriptors: row.descriptors, checkedAt: row.checked_at, expiresAt: row.expires_at } : undefined;
  }

  putReferrerList(upstream: string, repo: string, subject: string, list: ReferrerListRow): void {
    this.s.putReferrerList.run(upstream, repo, subject, list.descriptors, list.checkedAt, list.expiresAt);
  }

  deleteReferrerList(upstream: string, repo: string, subject: string): void {
    this.s.deleteReferrerList.run(upstream, repo, subject);
  }

  /** Note an access; written in the next flush, not now. */
  recordAccess(digest: string, at: number): void {
    this.pendingAccess.set(digest, at);
  }

  /** Count a served request (outcome counters and per-repository activity); flushed in batches. */
  recordRequest(upstream: string, repo: string, outcome: string, bytes: number, isPull: boolean, at: number): void {
    this.pendingCounters.set(`requests.${outcome}`, (this.pendingCounters.get(`requests.${outcome}`) ?? 0) + 1);
    const source = outcome === 'hit' || outcome === 'stale' || outcome === 'revalidated' ? 'cache' : 'upstream';
    if (bytes > 0) this.pendingCounters.set(`bytes.${source}`, (this.pendingCounters.get(`bytes.${source}`) ?? 0) + bytes);
    const key = `${upstream}\u0000${repo}`;
    const r = this.pendingRepos.get(key) ?? { upstream, repo, pulls: 0, bytes: 0, lastPull: 0 };
    if (isPull) r.pulls++;
    r.bytes += bytes;
    r.lastPull = Math.max(r.lastPull, at);
    this.pendingRepos.set(key, r);
  }

  /** Count what an answer saved the upstream, on the UTC day of `at`; flushed in batches. */
  recordSaving(upstream: string, reason: string, bytes: number, pulls: number, at: number): void {
    const day = Math.floor(at / DAY_MS);
    const key = `${day}\u0000${upstream}\u0000${reason}`;
    const s = this.pendingSavings.get(key);
    if (s) {
      s.bytes += bytes;
      s.pulls += pulls;
    } else this.pendingSavings.set(key, { day, upstream, reason, bytes, pulls });
  }

  /** The saved_daily rows from `firstDay` (days since the epoch) on, flushed ones only. */
  savedSince(firstDay: number): DailySaving[] {
    return this.s.savedSince.all(firstDay);
  }

  flushAccessTimes(): number {
    if (this.pendingAccess.size === 0 && this.pendingCounters.size === 0 && this.pendingRepos.size === 0 && this.pendingSavings.size === 0) return 0;
    // One transaction; the batch is dropped only once it is written (a full disk or a busy
    // database leaves it for the next flush).
    this.db.transaction(() => {
      for (const [digest, at] of this.pendingAccess) {
        this.s.touchBlob.run(at, digest);
        this.s.touchManifest.run(at, digest);
      }
      for (const [name, value] of this.pendingCounters) this.s.addCounter.run(name, value);
      for (const r of this.pendingRepos.values()) this.s.addRepoStats.run(r.upstream, r.repo, r.pulls, r.bytes, r.lastPull);
      for (const v of this.pendingSavings.values()) this.s.addSaving.run(v.day, v.upstream, v.reason, v.bytes, v.pulls);
      // IMMEDIATE: the write lock is taken (waiting out busy_timeout) before anything is read,
      // so workers and CLI commands writing the same index wait for each other, never fail at once.
    }).immediate();
    const written = this.pendingAccess.size;
    this.pendingAccess.clear();
    this.pendingCounters.clear();
    this.pendingRepos.clear();
    this.pendingSavings.clear();
    return written;
  }

  // ------------------------------------------------------------ lifecycle (gc, verify, ls, stats)

  usage(): { blobs: number; manifests: number; bytes: number } {
    const b = this.db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM blobs').get() as { n: number; bytes: number };
    const m = this.db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM manifests').get() as { n: number; bytes: number };
    return { blobs: b.n, manifests: m.n, bytes: b.bytes + m.bytes };
  }

  /** Least recently used first. */
  *entriesByAccess(): Generator<StoredEntry> {
    const rows = this.db
      .prepare(
        `SELECT digest, size, 'blob' AS kind, last_access AS lastAccess FROM blobs
         UNION ALL SELECT digest, size, 'manifest' AS kind, last_access AS lastAccess FROM manifests
         ORDER BY lastAccess, digest`,
      )
      .iterate() as IterableIterator<StoredEntry>;
    yield* rows;
  }

  /**
   * Content that eviction must keep: pinned images and fresh tags' manifests, with everything
   * they reference and the referrers (signatures, SBOMs) that refer to them.
   */
  protectedDigests(now: number): Set<string> {
    const rows = this.db
      .prepare(
        `WITH RECURSIVE keep(digest) AS (
           SELECT t.digest FROM tags t JOIN pins p ON p.upstream = t.upstream AND p.repo = t.repo AND p.tag = t.tag
           UNION SELECT digest FROM tags WHERE expires_at > ?
           UNION SELECT r.child FROM refs r JOIN keep k ON r.parent = k.digest
           UNION SELECT x.referrer FROM referrers x JOIN keep k ON x.subject = k.digest
         ) SELECT digest FROM keep`,
      )
      .all(now) as { digest: string }[];
    return new Set(rows.map((r) => r.digest));
  }

  /** Pinned images: their tags' manifests and everything those reference. */
  pinnedDigests(): string[] {
    const rows = this.db
      .prepare(
        `WITH RECURSIVE keep(digest) AS (
           SELECT t.digest FROM tags t JOIN pins p ON p.upstream = t.upstream AND p.repo = t.repo AND p.tag = t.tag
           UNION SELECT r.child FROM refs r JOIN keep k ON r.parent = k.digest
         ) SELECT digest FROM keep`,
      )
      .all() as { digest: string }[];
    return rows.map((r) => r.digest);
  }

  /** Forget an object (evicted or corrupt): its rows and the tags that point at it. */
  forget(digest: string): void {
    this.db.transaction(() => {
      this.s.deleteBlob.run(digest);
      this.s.deleteManifest.run(digest);
      this.db.prepare('DELETE FROM tags WHERE digest = ?').run(digest);
      this.db.prepare('DELETE FROM referrers WHERE referrer = ?').run(digest);
    })();
  }

  isIndexed(digest: string): boolean {
    return this.s.getBlob.get(digest) !== undefined || this.s.getManifest.get(digest) !== undefined;
  }

  allIndexedDigests(): { digest: string; size: number; kind: 'blob' | 'manifest' }[] {
    return this.db
      .prepare(`SELECT digest, size, 'blob' AS kind FROM blobs UNION ALL SELECT digest, size, 'manifest' AS kind FROM manifests`)
      .all() as { digest: string; size: number; kind: 'blob' | 'manifest' }[];
  }

  pin(upstream: string, repo: string, tag: string): void {
    this.db.prepare('INSERT OR IGNORE INTO pins (upstream, repo, tag) VALUES (?, ?, ?)').run(upstream, repo, tag);
  }

  /** Every cached tag with its manifest, the bytes it references that are cached, and when it was last pulled. */
  listTagsDetailed(upstream?: string, repo?: string): {
    upstream: string; repo: string; tag: string; digest: string; mediaType: string; fetchedAt: number; checkedAt: number;
    bytes: number; lastPull: number | null; pinned: number;
  }[] {
    return this.db
      .prepare(
        `WITH RECURSIVE closure(root, digest) AS (
           SELECT DISTINCT digest, digest FROM tags
           UNION SELECT c.root, r.child FROM refs r JOIN closure c ON r.parent = c.digest
         ),
         sizes AS (
           SELECT c.root, sum(coalesce(b.size, 0) + coalesce(m.size, 0)) AS bytes
           FROM closure c LEFT JOIN blobs b ON b.digest = c.digest LEFT JOIN manifests m ON m.digest = c.digest
           GROUP BY c.root
         )
         SELECT t.upstream, t.repo, t.tag, t.digest, t.media_type AS mediaType, t.fetched_at AS fetchedAt, t.checked_at AS checkedAt,
                coalesce(s.bytes, 0) AS bytes, rs.last_pull AS lastPull,
                EXISTS (SELECT 1 FROM pins p WHERE p.upstream = t.upstream AND p.repo = t.repo AND p.tag = t.tag) AS pinned
         FROM tags t LEFT JOIN sizes s ON s.root = t.digest
         LEFT JOIN repo_stats rs ON rs.upstream = t.upstream AND rs.repo = t.repo
         WHERE (@upstream IS NULL OR t.upstream = @upstream) AND (@repo IS NULL OR t.repo = @repo)
         GROUP BY t.upstream, t.repo, t.tag
         ORDER BY t.upstream, t.repo, t.tag`,
      )
      .all({ upstream: upstream ?? null, repo: repo ?? null }) as ReturnType<CacheIndex['listTagsDetailed']>;
  }

  counters(): Record<string, number> {
    const rows = this.db.prepare('SELECT name, value FROM counters').all() as { name: string; value: number }[];
    return Object.fromEntries(rows.map((r) => [r.name, r.value]));
  }

  topRepositories(limit: number): { upstream: string; repo: string; pulls: number; bytes: number; lastPull: number }[] {
    return this.db
      .prepare('SELECT upstream, repo, pulls, bytes, last_pull AS lastPull FROM repo_stats ORDER BY pulls DESC, bytes DESC LIMIT ?')
      .all(limit) as { upstream: string; repo: string; pulls: number; bytes: number; lastPull: number }[];
  }

  close(): void {
    try {
      this.flushAccessTimes();
    } finally {
      // Closed even when the last flush fails (a full disk): the batch is lost, the file is not.
      this.db.close();
    }
  }
}
