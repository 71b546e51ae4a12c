// The primary's part in keeping N workers one mirror: who leads each flight (the first worker
// to ask; the others wait for its release, then re-read the index), shared token buckets
// (revalidation budgets), leases (one evictor at a time) and relaying what a worker publishes
// to the others. Plain state driven by messages, so it stays small (the primary builds no
// mirror) and unit-testable without processes.

import type { Clock } from '../clock.js';
import type { DownloadNews, SiblingEvent } from '../core/sibling-workers.js';
import { TokenBucket } from '../upstream/rate-limiter.js';

/** Every message of ours carries `mirror` (prom-client's aggregation shares the channel). */
export type ToPrimary =
  | { mirror: 'lead'; key: string; req: number }
  | { mirror: 'release'; key: string }
  | { mirror: 'token'; bucket: string; req: number }
  | { mirror: 'lease'; lease: string; req: number }
  | { mirror: 'lease-release'; lease: string }
  | { mirror: 'publish'; event: SiblingEvent }
  | { mirror: 'dl-claim'; digest: string; repository: string; req: number }
  | { mirror: 'dl-news'; digest: string; news: DownloadNews }
  | { mirror: 'dl-unfollow'; digest: string }
  | { mirror: 'metrics'; req: number }
  | { mirror: 'readiness'; req: number }
  | { mirror: 'readiness-answer'; req: number; problem: string | undefined };

export type ToWorker =
  | { mirror: 'reply'; req: number; value: unknown }
  | { mirror: 'event'; event: SiblingEvent }
  | { mirror: 'dl-news'; digest: string; news: DownloadNews }
  | { mirror: 'dl-followers'; digest: string; followers: number }
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

/** A blob download one worker runs for all: its latest news and the workers following it. */
interface SharedDownload {
  owner: number;
  repository: string;
  news: DownloadNews | undefined;
  followers: Set<number>;
}

export class Broker {
  private readonly flights = new Map<string, Flight>();
  private readonly downloads = new Map<string, SharedDownload>();
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
      case 'dl-claim': {
        const download = this.downloads.get(message.digest);
        if (!download || download.owner === worker) {
          this.downloads.set(message.digest, { owner: worker, repository: message.repository, news: undefined, followers: download?.followers ?? new Set() });
          this.send(worker, { mirror: 'reply', req: message.req, value: { role: 'own' } });
          return true;
        }
        download.followers.add(worker);
        this.send(worker, { mirror: 'reply', req: message.req, value: { role: 'follow', owner: download.owner, repository: download.repository, news: download.news } });
        this.send(download.owner, { mirror: 'dl-followers', digest: message.digest, followers: download.followers.size });
        return true;
      }
      case 'dl-news': {
        const download = this.downloads.get(message.digest);
        if (download?.owner !== worker) return true;
        download.news = message.news;
        for (const follower of download.followers) this.send(follower, { mirror: 'dl-news', digest: message.digest, news: message.news });
        // Over: a later claim starts anew (after reading the store, which has it when done).
        if (message.news.state === 'done' || message.news.state === 'failed') this.downloads.delete(message.digest);
        return true;
      }
      case 'dl-unfollow': {
        const download = this.downloads.get(message.digest);
        if (download?.followers.delete(worker)) this.send(download.owner, { mirror: 'dl-followers', digest: message.digest, followers: download.followers.size });
        return true;
      }
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
    for (const [digest, download] of this.downloads) {
      if (download.owner === worker) {
        // Its temp file is half-written and nobody writes it any more: a follower takes over.
        this.downloads.delete(digest);
        const orphaned: DownloadNews = { state: 'orphaned', written: 0, verified: false };
        for (const follower of download.followers) this.send(follower, { mirror: 'dl-news', digest, news: orphaned });
      } else if (download.followers.delete(worker)) {
        this.send(download.owner, { mirror: 'dl-followers', digest, followers: download.followers.size });
      }
    }
  }

  /** Blob downloads shared now (for tests). */
  get sharedDownloadCount(): number {
    return this.downloads.size;
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
