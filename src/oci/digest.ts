import { createHash, type Hash } from 'node:crypto';
import type { Digest, DigestAlgorithm } from './reference.js';

/** A running digest over a byte stream, for verifying content as it streams. */
export class DigestVerifier {
  private readonly hash: Hash;

  constructor(readonly expected: Digest) {
    this.hash = createHash(expected.algorithm);
  }

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
  }

  /** Finishes the hash; returns the computed `algorithm:hex`. Call once. */
  finish(): string {
    return `${this.expected.algorithm}:${this.hash.digest('hex')}`;
  }
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}
