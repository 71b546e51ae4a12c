// The primary's part in keeping N workers one mirror: who leads each flight (the first worker
// to ask; the others wait for its release, then re-read the index), shared token buckets
// (revalidation budgets), leases (one evictor at a time) and relaying what a worker publishes
// to the others. Plain state driven by messages, so it stays small (the primary builds no
// mirror) and unit-testable without processes.

import type { Clock } from '../clock.js';
import type { SiblingEvent } from '../core/sibling-workers.js';
import { TokenBucket } from '../upstream/rate-limiter.js';

/** Every message of ours carries `mirror` (prom-client's aggregation shares the channel). */
export type ToPrimary =
  | { mirror: 'lead'; key: string; req: number }
  | { mirror: 'release'; key: string }
  | { mirror: 'token'; bucket: string; req: number }
  | { mirror: 'lease'; lease: string; req: number }
  | { mirror: 'lease-release'; lease: string }
  | { mirror: 'publish'; event: SiblingEvent }
  | { mirror: 'metrics'; req: number }
  | { mirror: 'readiness'; req: number }
  | { mirror: 'readiness-answer'; req: number; problem: string | undefined };

export type ToWorker =
  | { mirror: 'reply'; req: number; value: unknown }
  | { mirror: 'event'; event: SiblingEvent }
  | { mirror: 'readiness-ask'; req: number }
  | { mirror: 'shutdown' }
  | { mirror: 'reload' };

export function isOurs<T extends { mirror: string }>(message: unknown): message is T {
  return typeof message === 'object' && message !== null && typeof (message as { mirror?: unknown }).mirror === 'string';
}

interface Flight {
  leader: number;
  waiters: { worker: number; req: number }[];
}

export class Broker {
  private readonly flights = new Map<string, Flight>();
  private readonly leases = new Map<string, number>();
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(
    private readonly send: (worker: number, message: ToWorker) => void,
    private readonly workers: () => number[],
    private readonly bucketSpec: (bucket: string) => { perSecond: number; burst: number },
    private readonly clock: Clock,
  ) {}

  /** The messages the broker answers; false for the others (metrics, readiness: the primary's). */
  handle(worker: number, message: ToPrimary): boolean {
    switch (message.mirror) {
      case 'lead': {
        const flight = this.flights.get(message.key);
        if (!flight) {
          this.flights.set(message.key, { leader: worker, waiters: [] });
          this.send(worker, { mirror: 'reply', req: message.req, value: 'lead' });
        } else flight.waiters.push({ worker, req: message.req });
        return true;
      }
      case 'release': {
        const flight = this.flights.get(message.key);
        if (flight?.leader === worker) this.finish(message.key, flight);
        return true;
      }
      case 'token': {
        let bucket = this.buckets.get(message.bucket);
        if (!bucket) {
          const { perSecond, burst } = this.bucketSpec(message.bucket);
          bucket = new TokenBucket(perSecond, burst, this.clock);
          this.buckets.set(message.bucket, bucket);
        }
        this.send(worker, { mirror: 'reply', req: message.req, value: bucket.tryTake() });
        return true;
      }
      case 'lease': {
        const holder = this.leases.get(message.lease);
        const granted = holder === undefined || holder === worker;
        if (granted) this.leases.set(message.lease, worker);
        this.send(worker, { mirror: 'reply', req: message.req, value: granted });
        return true;
      }
      case 'lease-release':
        if (this.leases.get(message.lease) === worker) this.leases.delete(message.lease);
        return true;
      case 'publish':
        // Sent in the order received: a leader's tag change reaches a follower before its release.
        for (const other of this.workers()) if (other !== worker) this.send(other, { mirror: 'event', event: message.event });
        return true;
      default:
        return false;
    }
  }

  /** A worker died: what it led is released (its followers do the work themselves), its leases freed. */
  workerGone(worker: number): void {
    for (const [key, flight] of this.flights) {
      flight.waiters = flight.waiters.filter((w) => w.worker !== worker);
      if (flight.leader === worker) this.finish(key, flight);
    }
    for (const [lease, holder] of this.leases) if (holder === worker) this.leases.delete(lease);
  }

  /** Flights led now (for tests and the status of the primary). */
  get flightCount(): number {
    return this.flights.size;
  }

  private finish(key: string, flight: Flight): void {
    this.flights.delete(key);
    for (const w of flight.waiters) this.send(w.worker, { mirror: 'reply', req: w.req, value: 'followed' });
  }
}
