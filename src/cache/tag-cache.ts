// What each tag pointed at when last checked, and until when that is trusted: rows of the
// index's tags table, with the hot ones in memory in front of SQLite.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { CacheIndex, TagRow } from './index.js';

export interface TagKey {
  upstream: string;
  repo: string;
  tag: string;
  /** The Accept negotiation the tag was resolved under (oci/media-types.ts). */
  accept: string;
}

export class TagCache {
  private readonly hot = new LRUCache<string, TagRow>({ max: 20_000 });

  constructor(
    private readonly index: CacheIndex,
    private readonly logger: Logger,
    /** Told the key of each row this process changed (other workers drop their copies). */
    private readonly changed: (key: string) => void = () => undefined,
  ) {}

  /** An index write that fails (disk full, busy) is logged; the in-memory row still serves. */
  private write(what: string, row: TagRow, work: () => void): void {
    try {
      work();
    } catch (err) {
      this.logger.error({ upstream: row.upstream, repository: row.repo, tag: row.tag, err: (err as Error).message }, `could not ${what} in the index`);
    }
  }

  static keyOf(k: TagKey): string {
    return `${k.upstream}\u0000${k.repo}\u0000${k.tag}\u0000${k.accept}`;
  }

  get(k: TagKey, key = TagCache.keyOf(k)): TagRow | undefined {
    let row = this.hot.get(key);
    if (!row) {
      row = this.index.getTag(k.upstream, k.repo, k.tag, k.accept);
      if (row) this.hot.set(key, row);
    }
    return row;
  }

  /** Record a tag's (new) manifest. */
  put(row: TagRow): void {
    this.index.putTag(row);
    const key = TagCache.keyOf(row);
    this.hot.set(key, row);
    this.changed(key);
  }

  /** The tag still points where it did: trust it until `expiresAt`. */
  touch(row: TagRow, checkedAt: number, expiresAt: number): TagRow {
    const updated: TagRow = { ...row, checkedAt, expiresAt };
    this.write('extend a tag', row, () => this.index.touchTag(row.upstream, row.repo, row.tag, row.accept, checkedAt, expiresAt));
    const key = TagCache.keyOf(row);
    this.hot.set(key, updated);
    this.changed(key);
    return updated;
  }

  /** The upstream says the tag is gone (under every Accept). */
  delete(row: TagRow): void {
    const key = TagCache.keyOf(row);
    this.hot.delete(key);
    this.write('delete a tag', row, () => this.index.deleteTag(row.upstream, row.repo, row.tag));
    this.changed(key);
  }

  /** Another worker changed this row: the next read comes from the index. */
  forgetKey(key: string): void {
    this.hot.delete(key);
  }

  /** Drop in-memory rows that point at content that left the store. */
  forgetDigest(digest: string): void {
    for (const [key, row] of this.hot.entries()) if (row.digest === digest) this.hot.delete(key);
  }
}
