// What each replica on a shared bucket needs kept, published to the bucket for the replica
// that evicts (shared-eviction.ts). One object per replica, `_mirror/replicas/<id>.json`,
// rewritten every heartbeat (and soon after content it had not used lately is used):
//   pinned   pinned tags' manifests and all they reference: kept until the replica expires
//   fresh    fresh tags' manifests and all they reference: kept while the replica is live
//   inUse    content it is serving or downloading right now: kept while the replica is live
//   used     when it last used the content it used most recently (the newest 10,000):
//            the evictor's LRU order is the latest use by any replica
// A replica is live while its object is younger than three of its heartbeats; one silent for
// `replicaExpiry` is forgotten (its object deleted by the evictor).

import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { ControlObjects } from './blob-store.js';

export const REPLICAS_PREFIX = 'replicas/';
/** The newest uses a replica publishes; older ones fall back to the evictor's own knowledge. */
export const MAX_PUBLISHED_USES = 10_000;
const MAX_STATE_BYTES = 64 * 1024 * 1024;
/** A replica is live while its state is younger than this many of its heartbeats. */
const LIVE_HEARTBEATS = 3;

export interface ReplicaState {
  replica: string;
  publishedAt: number;
  heartbeatMs: number;
  pinned: string[];
  fresh: string[];
  inUse: string[];
  used: [digest: string, at: number][];
}

/** Everything the other replicas need kept, merged. */
export interface SharedKeep {
  /** Never evicted: pinned by any replica; fresh or in use on a live one. */
  keep: Set<string>;
  /** The latest use of each digest by any replica. */
  lastUse: Map<string, number>;
  replicas: { replica: string; live: boolean }[];
}

/** This replica's recent uses, newest last, bounded. */
export class RecentUses {
  private readonly uses = new Map<string, number>();

  constructor(private readonly max = MAX_PUBLISHED_USES) {}

  /** Returns true when the digest was not among the recent uses (the others do not know yet). */
  note(digest: string, at: number): boolean {
    const known = this.uses.delete(digest);
    this.uses.set(digest, at);
    if (this.uses.size > this.max) this.uses.delete(this.uses.keys().next().value!);
    return !known;
  }

  get(digest: string): number | undefined {
    return this.uses.get(digest);
  }

  entries(): [string, number][] {
    return [...this.uses];
  }
}

/** A stable id for this replica: configured, or made once and kept beside its index. */
export function replicaIdentity(storagePath: string, configured: string | undefined): string {
  if (configured) return configured;
  const file = join(storagePath, 'replica-id');
  if (existsSync(file)) {
    const id = readFileSync(file, 'utf8').trim();
    if (/^[A-Za-z0-9._-]{1,100}$/.test(id)) return id;
  }
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 60) || 'replica';
  const id = `${host}-${randomBytes(4).toString('hex')}`;
  writeFileSync(file, `${id}\n`);
  return id;
}

export async function publishState(objects: ControlObjects, state: ReplicaState): Promise<void> {
  await objects.put(`${REPLICAS_PREFIX}${state.replica}.json`, Buffer.from(JSON.stringify(state)));
}

function parseState(body: Buffer): ReplicaState | undefined {
  try {
    const s = JSON.parse(body.toString('utf8')) as Partial<ReplicaState>;
    const strings = (a: unknown): a is string[] => Array.isArray(a) && a.every((x) => typeof x === 'string');
    if (
      typeof s.replica === 'string' && typeof s.publishedAt === 'number' && typeof s.heartbeatMs === 'number' &&
      strings(s.pinned) && strings(s.fresh) && strings(s.inUse) &&
      Array.isArray(s.used) && s.used.every((u) => Array.isArray(u) && typeof u[0] === 'string' && typeof u[1] === 'number')
    ) {
      return s as ReplicaState;
    }
  } catch {
    // below
  }
  return undefined;
}

/**
 * The other replicas' states, each with whether it is live. States silent for `expiryMs` are
 * deleted. Throws when one cannot be read or understood: evicting without knowing what a
 * replica needs kept could delete its pins, so the run is given up and tried again later.
 */
export async function readStates(
  objects: ControlObjects,
  options: { exclude?: string; now: number; expiryMs: number; onExpired?(replica: string): void },
): Promise<{ state: ReplicaState; live: boolean }[]> {
  const out: { state: ReplicaState; live: boolean }[] = [];
  for (const { name, modifiedAt } of await objects.list(REPLICAS_PREFIX)) {
    const replica = name.slice(REPLICAS_PREFIX.length).replace(/\.json$/, '');
    if (replica === options.exclude) continue;
    if (options.now - modifiedAt > options.expiryMs) {
      await objects.delete(name);
      options.onExpired?.(replica);
      continue;
    }
    const object = await objects.get(name, MAX_STATE_BYTES);
    if (!object) continue; // deleted since the listing
    const state = parseState(object.body);
    if (!state) throw new Error(`cannot understand ${name}: what that replica needs kept is unknown`);
    out.push({ state, live: options.now - modifiedAt <= LIVE_HEARTBEATS * state.heartbeatMs });
  }
  return out;
}

export function mergeStates(states: { state: ReplicaState; live: boolean }[]): SharedKeep {
  const keep = new Set<string>();
  const lastUse = new Map<string, number>();
  for (const { state, live } of states) {
    for (const d of state.pinned) keep.add(d);
    if (live) {
      for (const d of state.fresh) keep.add(d);
      for (const d of state.inUse) keep.add(d);
    }
    for (const [d, at] of state.used) lastUse.set(d, Math.max(lastUse.get(d) ?? 0, at));
  }
  return { keep, lastUse, replicas: states.map(({ state, live }) => ({ replica: state.replica, live })) };
}
