// `serve` with `workers: N` (N > 1): this process is the primary. It forks N workers that
// share the listening socket (node:cluster), restarts one that dies (with back-off), forwards
// SIGHUP (reload) and SIGTERM/SIGINT (graceful shutdown) to every worker, brokers what keeps
// the workers one mirror (broker.ts), and answers the workers' questions about the whole
// mirror (`/metrics` aggregated over workers, `/readyz` ready only when all are).
// It builds no mirror (no index, no store, no upstream clients): it must stay small, since
// every process counts against the memory budget.

import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { AggregatorRegistry } from 'prom-client';
import { systemClock } from '../clock.js';
import type { Config } from '../config.js';
import { Broker, isOurs, type ToPrimary, type ToWorker } from './broker.js';

/** Back-off before restarting a worker that died: doubles per quick death, up to the maximum. */
const RESTART_MIN_MS = 250;
const RESTART_MAX_MS = 30_000;
/** A worker that lived this long resets the back-off. */
const STABLE_AFTER_MS = 30_000;
/** How long `/readyz` waits for every worker's own answer. */
const READINESS_TIMEOUT_MS = 5_000;

interface Slot {
  worker: Worker | undefined;
  listening: boolean;
  startedAt: number;
  quickDeaths: number;
}

export async function runPrimary(config: Config, logger: Logger): Promise<void> {
  const count = config.workers;
  const slots: Slot[] = [];
  const slotOf = new Map<number, Slot>();
  let stopping = false;
  let announced = false;
  let exitCode = 0;

  const send = (id: number, message: ToWorker) => {
    const worker = cluster.workers?.[id];
    if (!worker?.isConnected()) return;
    try {
      worker.send(message);
    } catch {
      // it is dying: its exit is handled below
    }
  };
  const liveIds = () => slots.flatMap((s) => (s.worker?.isConnected() ? [s.worker.id] : []));
  const broker = new Broker(send, liveIds, () => config.revalidation, systemClock);
  // Answers the workers' own prom-client requests; the aggregate sums counters over workers.
  const aggregator = new AggregatorRegistry();

  let nextReadiness = 0;
  const readinessAsked = new Map<number, (problem: string | undefined) => void>();
  const readiness = async (): Promise<string | undefined> => {
    if (stopping) return 'shutting down';
    const down = slots.filter((s) => !s.listening || !s.worker?.isConnected()).length;
    if (down > 0) return `${down} of ${count} workers not running`;
    const answers = slots.map(
      (s) =>
        new Promise<string | undefined>((resolve) => {
          const req = ++nextReadiness;
          const timer = setTimeout(() => {
            readinessAsked.delete(req);
            resolve(`worker ${s.worker!.id} did not answer`);
          }, READINESS_TIMEOUT_MS);
          readinessAsked.set(req, (problem) => {
            clearTimeout(timer);
            resolve(problem && `worker ${s.worker!.id}: ${problem}`);
          });
          send(s.worker!.id, { mirror: 'readiness-ask', req });
        }),
    );
    return (await Promise.all(answers)).find((p) => p !== undefined);
  };

  cluster.on('message', (worker, message: unknown) => {
    if (!isOurs<ToPrimary>(message) || broker.handle(worker.id, message)) return;
    if (message.mirror === 'metrics') {
      aggregator.clusterMetrics().then(
        (text) => send(worker.id, { mirror: 'reply', req: message.req, value: { contentType: aggregator.contentType, text } }),
        (err: unknown) => send(worker.id, { mirror: 'reply', req: message.req, value: { contentType: 'text/plain; charset=utf-8', text: `# aggregation failed: ${(err as Error).message}\n` } }),
      );
    } else if (message.mirror === 'readiness') {
      void readiness().then((problem) => send(worker.id, { mirror: 'reply', req: message.req, value: problem }));
    } else if (message.mirror === 'readiness-answer') {
      const answer = readinessAsked.get(message.req);
      readinessAsked.delete(message.req);
      answer?.(message.problem);
    }
  });

  cluster.on('listening', (worker, address) => {
    const slot = slotOf.get(worker.id);
    if (slot) slot.listening = true;
    if (announced || slots.some((s) => !s.listening)) return;
    announced = true;
    // Workers share the primary's socket: this address (port 0 resolved) is the mirror's.
    const host = address.addressType === 6 ? `[${address.address}]` : address.address ?? config.listen.host;
    const url = `${config.tls ? 'https' : 'http'}://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${address.port}`;
    logger.info(
      {
        url,
        listen: `${config.listen.host}:${config.listen.port}`,
        workers: count,
        pid: process.pid,
        storage: config.storage.path,
        offline: config.offline,
        upstreams: config.upstreams.map((u) => ({ name: u.name, url: u.url, ttlMs: u.ttlMs, credentials: u.credentials.map((c) => c.name) })),
        defaultUpstream: config.defaultUpstream,
      },
      'mirror listening',
    );
    logger.flush();
  });

  const fork = (slot: Slot) => {
    const worker = cluster.fork();
    slot.worker = worker;
    slot.listening = false;
    slot.startedAt = Date.now();
    slotOf.set(worker.id, slot);
  };

  cluster.on('exit', (worker, code, signal) => {
    const slot = slotOf.get(worker.id);
    slotOf.delete(worker.id);
    broker.workerGone(worker.id);
    if (!slot) return;
    slot.worker = undefined;
    slot.listening = false;
    if (stopping) {
      // The exit code says how the shutdown went (a worker that died earlier was restarted).
      if (code !== 0 || signal) exitCode = 1;
      if (slots.every((s) => !s.worker)) finish();
      return;
    }
    if (!announced) {
      // Never served: a configuration or port problem that a restart would only repeat.
      logger.fatal({ worker: worker.id, code, signal }, 'a worker failed to start; stopping');
      void stop('startup failure', code || 1);
      for (const s of slots) s.worker?.process.kill('SIGTERM');
      return;
    }
    const lived = Date.now() - slot.startedAt;
    slot.quickDeaths = lived >= STABLE_AFTER_MS ? 0 : slot.quickDeaths + 1;
    const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** Math.max(0, slot.quickDeaths - 1));
    logger.error({ worker: worker.id, pid: worker.process.pid, code, signal, restartInMs: delay }, 'worker died; restarting it');
    setTimeout(() => {
      if (!stopping) fork(slot);
    }, delay).unref();
  });

  const finish = () => {
    logger.info({ code: exitCode }, 'stopped');
    logger.flush();
    process.exit(exitCode);
  };

  const stop = async (why: string, code?: number) => {
    if (stopping) {
      // A second signal: the workers stop now.
      logger.warn({ signal: why }, 'second signal: stopping the workers now');
      for (const s of slots) s.worker?.process.kill('SIGTERM');
      return;
    }
    stopping = true;
    if (code !== undefined) exitCode = code;
    logger.info({ signal: why }, 'shutting down: every worker finishes its in-flight requests');
    for (const s of slots) if (s.worker) send(s.worker.id, { mirror: 'shutdown' });
    if (slots.every((s) => !s.worker)) finish();
  };

  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => {
    logger.info({ workers: liveIds() }, 'SIGHUP: every worker reloads its TLS certificate and htpasswd file');
    for (const id of liveIds()) send(id, { mirror: 'reload' });
  });

  for (let i = 0; i < count; i++) slots.push({ worker: undefined, listening: false, startedAt: 0, quickDeaths: 0 });
  // The first worker alone first: it creates or migrates the index, reconciles what an earlier
  // run left and sweeps the scratch space; the others then open a settled cache, together.
  fork(slots[0]!);
  cluster.once('listening', () => {
    if (!stopping) for (const slot of slots.slice(1)) fork(slot);
  });
}
