// bcrypt checks off the event loop: bcryptjs is pure JavaScript (~50 ms a check at cost 10),
// so a client sending wrong passwords would stall every other request if it ran on the main
// thread. A few worker threads run the checks; a bounded queue feeds them, and past its bound
// a check is refused at once ('busy') rather than queued without end.

import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

// Inline (eval) so that it works the same from dist/ and from src/*.ts under tsx/vitest.
// bcryptjs is resolved here, from this package, and handed over by path: an eval worker's
// own require() would resolve from the process's working directory.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcryptjs);
parentPort.on('message', ({ id, password, hash }) => {
  let ok = false;
  try { ok = bcrypt.compareSync(password, hash); } catch { ok = false; }
  parentPort.postMessage({ id, ok });
});
`;

export type Verdict = boolean | 'busy';

export interface PasswordVerifierOptions {
  /** Worker threads (started when first needed). */
  workers: number;
  /** Checks that may wait for a worker; past this, verify() answers 'busy' at once. */
  maxQueue: number;
}

interface Job {
  id: number;
  password: string;
  hash: string;
  resolve(verdict: Verdict): void;
  reject(err: Error): void;
}

interface Slot {
  worker: Worker;
  job: Job | undefined;
}

export class PasswordVerifier {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 0;
  private closed = false;
  private bcryptPath: string | undefined;
  /** Checks handed to a worker so far (for tests and the curious). */
  checks = 0;

  constructor(private readonly options: PasswordVerifierOptions = { workers: 1, maxQueue: 64 }) {}

  /** Does `password` match the bcrypt `hash`? 'busy' when too many checks are waiting. */
  verify(password: string, hash: string): Promise<Verdict> {
    if (this.closed || this.queue.length >= this.options.maxQueue) return Promise.resolve('busy');
    return new Promise<Verdict>((resolve, reject) => {
      this.queue.push({ id: ++this.nextId, password, hash, resolve, reject });
      this.pump();
    });
  }

  /** Stop the workers; checks still waiting answer 'busy'. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.resolve('busy');
    const slots = this.slots.splice(0);
    for (const slot of slots) slot.job?.resolve('busy');
    await Promise.all(slots.map((slot) => slot.worker.terminate().catch(() => undefined)));
  }

  private pump(): void {
    while (this.queue.length > 0) {
      let slot = this.slots.find((s) => s.job === undefined);
      if (!slot && this.slots.length < this.options.workers) slot = this.spawn();
      if (!slot) return;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      this.checks++;
      slot.worker.postMessage({ id: job.id, password: job.password, hash: job.hash });
    }
  }

  private spawn(): Slot {
    this.bcryptPath ??= createRequire(import.meta.url).resolve('bcryptjs');
    // execArgv: [] so that the source runs as CommonJS whatever flags the process got
    // (--input-type=module, --import tsx…).
    const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { bcryptjs: this.bcryptPath } });
    const slot: Slot = { worker, job: undefined };
    worker.on('message', (message: { id: number; ok: boolean }) => {
      const job = slot.job;
      if (!job || job.id !== message.id) return;
      slot.job = undefined;
      job.resolve(message.ok === true);
      this.pump();
      if (slot.job === undefined) slot.worker.unref();
    });
    const gone = (err: Error) => {
      const index = this.slots.indexOf(slot);
      if (index < 0) return;
      this.slots.splice(index, 1);
      slot.job?.reject(err);
      slot.job = undefined;
      if (!this.closed) this.pump();
    };
    worker.on('error', gone);
    worker.on('exit', (code) => gone(new Error(`password worker exited (${code})`)));
    // An idle worker never keeps the process alive (one with a check to finish does). After
    // the listeners: adding a 'message' listener refs the worker's port again.
    worker.unref();
    this.slots.push(slot);
    return slot;
  }
}
