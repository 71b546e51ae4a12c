// The eviction lease of a bucket shared by replicas: one object, `_mirror/eviction-lease.json`,
// naming the one replica that evicts from the bucket until the lease expires. It is taken and
// renewed with conditional writes, so that two replicas racing for it cannot both win:
//   absent                          → create it with If-None-Match: *
//   ours, expired, or unreadable    → replace it with If-Match: <the ETag just read>
// A write whose answer is lost (or that the SDK retried after it had landed) is settled by
// reading the lease back: it is ours exactly when it carries our nonce.
//
// Whether the store honours those conditions is probed once (Ceph RGW 16, AWS S3 and MinIO
// do). One that ignores them gets a weaker protocol: write, wait a settle delay, read back; ours
// if our write is still the one there. Two contenders can then both hold it only when one of
// them took longer than the settle delay between reading the lease and writing it. Even then
// each honours every replica's pins and recent use (shared-eviction.ts): the cost is evicting
// more than needed, never deleting what a replica needs.

import { randomUUID } from 'node:crypto';
import { PreconditionFailed, type ControlObjects } from './blob-store.js';

export const LEASE_OBJECT = 'eviction-lease.json';
const MAX_LEASE_BYTES = 64 * 1024;

interface LeaseRecord {
  holder: string;
  nonce: string;
  expiresAt: number;
}

export type LeaseState =
  | { held: true; expiresAt: number; /** The replica it was taken from (expired or released), if any. */ takenFrom?: string }
  | { held: false; holder: string | undefined; expiresAt: number };

export interface LeaseOptions {
  /** This replica's id, written into the lease for people and logs. */
  holder: string;
  ttlMs: number;
  now(): number;
  /** The weaker protocol's wait between writing the lease and reading it back. */
  settleMs?: number;
  sleep?(ms: number): Promise<void>;
}

function parseLease(body: Buffer): LeaseRecord | undefined {
  try {
    const r = JSON.parse(body.toString('utf8')) as Partial<LeaseRecord>;
    if (typeof r.holder === 'string' && typeof r.nonce === 'string' && typeof r.expiresAt === 'number') return { holder: r.holder, nonce: r.nonce, expiresAt: r.expiresAt };
  } catch {
    // unreadable: treated as expired
  }
  return undefined;
}

async function refused(write: () => Promise<unknown>): Promise<boolean> {
  try {
    await write();
    return false;
  } catch (err) {
    if (err instanceof PreconditionFailed) return true;
    throw err;
  }
}

/** Does the store refuse a create over an existing object and a replace at a stale ETag? */
export async function probeConditionalWrites(objects: ControlObjects, nonce: string): Promise<boolean> {
  const name = `probe-${nonce}.json`;
  const body = (step: number) => Buffer.from(JSON.stringify({ probe: nonce, step }));
  try {
    const first = await objects.put(name, body(1), { ifAbsent: true });
    if (!(await refused(() => objects.put(name, body(2), { ifAbsent: true })))) return false;
    if (await refused(() => objects.put(name, body(3), { ifEtag: first }))) return false;
    return await refused(() => objects.put(name, body(4), { ifEtag: first }));
  } finally {
    await objects.delete(name).catch(() => undefined);
  }
}

export class EvictionLease {
  readonly nonce = randomUUID();
  /**
   * Ours until this local time: the expiry the others go by, less a third of the TTL, so that
   * a delete in flight and some clock skew between replicas still fit before anyone takes over.
   */
  private validUntil = 0;
  private conditional: boolean | undefined;

  constructor(
    private readonly objects: ControlObjects,
    private readonly options: LeaseOptions,
  ) {}

  /** Is the lease ours now (with the safety margin)? */
  holds(): boolean {
    return this.options.now() < this.validUntil;
  }

  /** Whether the store honours conditional writes (undefined until the first refresh probed it). */
  get conditionalWrites(): boolean | undefined {
    return this.conditional;
  }

  /** Take the lease when it is absent, expired or released; renew it when it is ours. */
  async refresh(): Promise<LeaseState> {
    this.conditional ??= await probeConditionalWrites(this.objects, this.nonce);
    const now = this.options.now();
    const current = await this.objects.get(LEASE_OBJECT, MAX_LEASE_BYTES);
    const record = current && parseLease(current.body);
    if (record && record.nonce !== this.nonce && record.expiresAt > now) {
      this.validUntil = 0;
      return { held: false, holder: record.holder, expiresAt: record.expiresAt };
    }
    const takenFrom = record && record.nonce !== this.nonce ? record.holder : undefined;
    const mine: LeaseRecord = { holder: this.options.holder, nonce: this.nonce, expiresAt: now + this.options.ttlMs };
    const state = await this.write(mine, current ? { ifEtag: current.etag } : { ifAbsent: true });
    return state.held && takenFrom !== undefined ? { ...state, takenFrom } : state;
  }

  /** Give the lease up (shutting down): the others need not wait for it to expire. */
  async release(): Promise<void> {
    if (this.validUntil === 0) return;
    this.validUntil = 0;
    const current = await this.objects.get(LEASE_OBJECT, MAX_LEASE_BYTES);
    const record = current && parseLease(current.body);
    if (!current || record?.nonce !== this.nonce) return;
    const released = Buffer.from(JSON.stringify({ ...record, expiresAt: 0 }));
    await this.objects.put(LEASE_OBJECT, released, this.conditional ? { ifEtag: current.etag } : undefined).catch((err: unknown) => {
      if (!(err instanceof PreconditionFailed)) throw err;
    });
  }

  private async write(mine: LeaseRecord, condition: { ifAbsent: true } | { ifEtag: string }): Promise<LeaseState> {
    const body = Buffer.from(JSON.stringify(mine));
    let failure: unknown;
    try {
      if (this.conditional) {
        await this.objects.put(LEASE_OBJECT, body, condition);
        return this.ours(mine.expiresAt);
      }
      await this.objects.put(LEASE_OBJECT, body);
      await (this.options.sleep ?? ((ms) => new Promise<void>((r) => setTimeout(r, ms))))(this.options.settleMs ?? 2000);
    } catch (err) {
      if (!(err instanceof PreconditionFailed)) failure = err;
    }
    // Lost the race, lost the answer, or the weaker protocol: what is stored now decides.
    const after = await this.objects.get(LEASE_OBJECT, MAX_LEASE_BYTES);
    const stored = after && parseLease(after.body);
    if (stored?.nonce === this.nonce && stored.expiresAt > this.options.now()) return this.ours(stored.expiresAt);
    this.validUntil = 0;
    if (failure) throw failure;
    return { held: false, holder: stored?.holder, expiresAt: stored?.expiresAt ?? 0 };
  }

  private ours(expiresAt: number): LeaseState {
    this.validUntil = expiresAt - this.options.ttlMs / 3;
    return { held: true, expiresAt };
  }
}
