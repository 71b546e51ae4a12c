// Manifests an upstream said it does not have, remembered for a short while (the upstream's
// negativeTtl, 30 s by default) per upstream, repository, reference and Accept negotiation:
// a storm of requests for a missing tag costs one upstream request (concurrent ones join the
// one in flight, core/single-flight.ts; later ones are answered from here).
//
// Only a 404 is remembered. A 401/403 is not: it may be a token glitch or credentials being
// fixed, and remembering it would turn a blip into half a minute of refusals (Docker Hub's
// 401 for a missing repository, asked anonymously, therefore still goes upstream; concurrent
// ones are coalesced and each client's misses are bounded by clientMisses). The Accept
// negotiation is part of the key because an answer depends on it (ghcr answers 404 to an
// Accept without the index type). Content the mirror holds always wins: the manifest service
// looks here only after its tag row or stored manifest was not found.

import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { RegistryError } from '../oci/errors.js';
import { NegativeAnswer } from './results.js';

interface Remembered {
  answer: NegativeAnswer;
  expiresAt: number;
}

export class NegativeCache {
  private readonly entries: LRUCache<string, Remembered>;

  constructor(
    private readonly clock: Clock,
    { maxEntries = 10_000, maxBytes = 16 * 1024 * 1024 }: { maxEntries?: number; maxBytes?: number } = {},
  ) {
    // Keys come from clients and error bodies from upstreams: bounded in count and in bytes.
    this.entries = new LRUCache({ max: maxEntries, maxSize: maxBytes, sizeCalculation: (entry, key) => key.length + JSON.stringify(entry.answer.toJSON()).length });
  }

  /** `accept`: the negotiated Accept key for a tag ('all' for a digest, fetched with every type). */
  static keyOf(upstream: string, repository: string, reference: string, accept: string): string {
    return `${upstream}\u0000${repository}\u0000${reference}\u0000${accept}`;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The remembered 404 for `key`, while its time lasts. */
  answer(key: string): NegativeAnswer | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (this.clock.now() >= entry.expiresAt) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.answer;
  }

  /** The upstream answered 404 for `key`: give the same answer for `ttlMs` (0: not at all). */
  remember(key: string, error: RegistryError, ttlMs: number): void {
    if (ttlMs <= 0) return;
    this.entries.set(key, { answer: new NegativeAnswer(error), expiresAt: this.clock.now() + ttlMs });
  }

  /** The mirror learned that `key` exists; true when a 404 was remembered for it. */
  forget(key: string): boolean {
    return this.entries.delete(key);
  }
}
