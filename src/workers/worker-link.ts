// A worker's end of the IPC channel to the primary: the SiblingWorkers the core uses
// (flights, tokens, leases, events), cluster-wide metrics and readiness for the server, and
// the primary's shutdown and reload orders. Only misses, revalidations and bookkeeping send
// anything; a warm hit never waits on this channel.

import type { DownloadClaim, DownloadNews, SiblingEvent, SiblingWorkers } from '../core/sibling-workers.js';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { isOurs, type ToPrimary, type ToWorker } from './broker.js';

/** A question to the primary unanswered this long is answered locally (the primary is gone or stuck). */
const REPLY_TIMEOUT_MS = 30_000;

/** The IPC channel to the primary: the worker process itself (a fake in unit tests). */
export interface PrimaryChannel {
  readonly connected?: boolean;
  send?(message: unknown): boolean;
  on(event: 'message', listener: (message: unknown) => void): unknown;
}

export class WorkerLink implements SiblingWorkers {
  private nextReq = 0;
  private readonly pending = new Map<number, { resolve(value: unknown): void; timer: NodeJS.Timeout }>();
  private readonly listeners: ((event: SiblingEvent) => void)[] = [];
  private readonly newsListeners: ((digest: string, news: DownloadNews) => void)[] = [];
  private readonly followerListeners: ((digest: string, followers: number) => void)[] = [];
  private localReadiness: () => Promise<string | undefined> = async () => undefined;
  private shutdownPending = false;
  private onShutdown: () => void = () => {
    this.shutdownPending = true;
  };
  private onReload: () => void = () => undefined;

  constructor(
    readonly id: number,
    private readonly channel: PrimaryChannel = process,
  ) {
    channel.on('message', (message: unknown) => {
      if (isOurs<ToWorker>(message)) this.receive(message);
    });
  }

  /** What to do when the primary says to stop (SIGTERM/SIGINT to it) or reload (SIGHUP). */
  onOrders(orders: { shutdown(): void; reload(): void }): void {
    this.onShutdown = orders.shutdown;
    this.onReload = orders.reload;
    // Told to stop while still starting: stop now that there is something to stop.
    if (this.shutdownPending) orders.shutdown();
  }

  lead(key: string): Promise<'lead' | 'followed'> {
    // No primary answering: lead (the worst case is one more upstream request).
    return this.ask<'lead' | 'followed'>((req) => ({ mirror: 'lead', key, req }), 'lead');
  }

  release(key: string): void {
    this.tell({ mirror: 'release', key });
  }

  takeToken(bucket: string): Promise<boolean> {
    return this.ask<boolean>((req) => ({ mirror: 'token', bucket, req }), true);
  }

  async exclusive<T>(lease: string, work: () => Promise<T>): Promise<T | undefined> {
    if (!(await this.ask<boolean>((req) => ({ mirror: 'lease', lease, req }), false))) return undefined;
    try {
      return await work();
    } finally {
      this.tell({ mirror: 'lease-release', lease });
    }
  }

  claimDownload(digest: string, repository: string): Promise<DownloadClaim> {
    // No primary answering: download it here (the worst case is one more upstream download).
    return this.ask<DownloadClaim>((req) => ({ mirror: 'dl-claim', digest, repository, req }), { role: 'own' });
  }

  reportDownload(digest: string, news: DownloadNews): void {
    this.tell({ mirror: 'dl-news', digest, news });
  }

  unfollowDownload(digest: string): void {
    this.tell({ mirror: 'dl-unfollow', digest });
  }

  onDownloadNews(listener: (digest: string, news: DownloadNews) => void): void {
    this.newsListeners.push(listener);
  }

  onFollowers(listener: (digest: string, followers: number) => void): void {
    this.followerListeners.push(listener);
  }

  publish(event: SiblingEvent): void {
    this.tell({ mirror: 'publish', event });
  }

  subscribe(listener: (event: SiblingEvent) => void): void {
    this.listeners.push(listener);
  }

  async clusterMetrics(): Promise<{ contentType: string; text: string }> {
    return this.ask((req) => ({ mirror: 'metrics', req }), { contentType: 'text/plain; charset=utf-8', text: '# the primary did not answer\n' });
  }

  clusterReadiness(): Promise<string | undefined> {
    return this.ask<string | undefined>((req) => ({ mirror: 'readiness', req }), 'the primary process did not answer');
  }

  answerReadiness(local: () => Promise<string | undefined>): void {
    this.localReadiness = local;
  }

  private receive(message: ToWorker): void {
    switch (message.mirror) {
      case 'reply': {
        const waiting = this.pending.get(message.req);
        if (!waiting) return;
        this.pending.delete(message.req);
        clearTimeout(waiting.timer);
        waiting.resolve(message.value);
        return;
      }
      case 'event':
        for (const listener of this.listeners) listener(message.event);
        return;
      // Delivered after pending promise continuations: IPC messages read together arrive in
      // consecutive ticks, so the news right behind a claim's reply would otherwise reach this
      // worker before the continuation of that claim has registered the download it follows.
      case 'dl-news':
        setImmediate(() => {
          for (const listener of this.newsListeners) listener(message.digest, message.news);
        });
        return;
      case 'dl-followers':
        setImmediate(() => {
          for (const listener of this.followerListeners) listener(message.digest, message.followers);
        });
        return;
      case 'readiness-ask':
        void this.localReadiness()
          .catch((err: unknown) => `readiness check failed: ${(err as Error).message}`)
          .then((problem) => this.tell({ mirror: 'readiness-answer', req: message.req, problem }));
        return;
      case 'shutdown':
        this.onShutdown();
        return;
      case 'reload':
        this.onReload();
    }
  }

  private ask<T>(message: (req: number) => ToPrimary, fallback: T): Promise<T> {
    if (!this.channel.connected) return Promise.resolve(fallback);
    const req = ++this.nextReq;
    return new Promise<T>((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(req);
        resolve(fallback);
      }, REPLY_TIMEOUT_MS);
      timer.unref();
      this.pending.set(req, { resolve: resolve as (value: unknown) => void, timer });
      this.tell(message(req));
    });
  }

  private tell(message: ToPrimary): void {
    if (!this.channel.connected || !this.channel.send) return;
    try {
      this.channel.send(message);
    } catch {
      // the channel closed under us: the primary is gone and this worker exits with it
    }
  }
}

/** Let the primary's AggregatorRegistry read this worker's registry (prom-client's own IPC). */
export function shareMetrics(registry: Registry): void {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing one installs the worker's listener for the primary's requests.
  new AggregatorRegistry();
}
