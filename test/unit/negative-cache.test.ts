// The negative cache (issue 15, item 6): remembered upstream 404s, by the injected clock, bounded.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { NegativeCache } from '../../src/core/negative-cache.js';
import { NegativeAnswer } from '../../src/core/results.js';
import { RegistryError } from '../../src/oci/errors.js';

const notFound = () => new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown to upstream docker.io', { detail: { upstream: 'docker.io', status: 404 } });
const key = (reference: string) => NegativeCache.keyOf('docker.io', 'library/app', reference, 'all');

describe('negative cache', () => {
  it('answers with the same OCI error, marked negative, until the TTL ends', () => {
    const clock = new ManualClock();
    const cache = new NegativeCache(clock);
    const original = notFound();
    cache.remember(key('missing'), original, 30_000);
    const answer = cache.answer(key('missing'));
    expect(answer).toBeInstanceOf(NegativeAnswer);
    expect(answer).toBeInstanceOf(RegistryError);
    expect(answer!.outcome).toBe('negative');
    expect({ status: answer!.status, body: answer!.toJSON() }).toEqual({ status: 404, body: original.toJSON() });
    clock.advance(29_999);
    expect(cache.answer(key('missing'))).toBeDefined();
    clock.advance(1);
    expect(cache.answer(key('missing'))).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it('keys by upstream, repository, reference and Accept negotiation', () => {
    const cache = new NegativeCache(new ManualClock());
    cache.remember(NegativeCache.keyOf('docker.io', 'library/app', 'v1', 'all'), notFound(), 30_000);
    expect(cache.answer(NegativeCache.keyOf('docker.io', 'library/app', 'v1', 'all'))).toBeDefined();
    expect(cache.answer(NegativeCache.keyOf('ghcr.io', 'library/app', 'v1', 'all'))).toBeUndefined();
    expect(cache.answer(NegativeCache.keyOf('docker.io', 'library/app2', 'v1', 'all'))).toBeUndefined();
    expect(cache.answer(NegativeCache.keyOf('docker.io', 'library/app', 'v2', 'all'))).toBeUndefined();
    // ghcr answers 404 to an Accept without the index type: that 404 says nothing of other Accepts.
    expect(cache.answer(NegativeCache.keyOf('docker.io', 'library/app', 'v1', 'application/vnd.oci.image.manifest.v1+json'))).toBeUndefined();
  });

  it('a TTL of 0 remembers nothing; forget drops an entry', () => {
    const cache = new NegativeCache(new ManualClock());
    cache.remember(key('off'), notFound(), 0);
    expect(cache.answer(key('off'))).toBeUndefined();
    cache.remember(key('found'), notFound(), 30_000);
    cache.forget(key('found'));
    expect(cache.answer(key('found'))).toBeUndefined();
  });

  it('holds at most maxEntries, dropping the least recently used', () => {
    const cache = new NegativeCache(new ManualClock(), { maxEntries: 3 });
    for (const ref of ['a', 'b', 'c']) cache.remember(key(ref), notFound(), 30_000);
    cache.answer(key('a'));
    cache.remember(key('d'), notFound(), 30_000);
    expect(cache.size).toBe(3);
    expect(cache.answer(key('b'))).toBeUndefined();
    expect(['a', 'c', 'd'].map((r) => cache.answer(key(r)) !== undefined)).toEqual([true, true, true]);
  });

  it('holds at most maxBytes of answers: an upstream cannot fill memory with long error bodies', () => {
    const cache = new NegativeCache(new ManualClock(), { maxBytes: 64 * 1024 });
    const long = () => new RegistryError('MANIFEST_UNKNOWN', 'x', { detail: { upstreamError: { code: 'MANIFEST_UNKNOWN', message: 'y'.repeat(20_000) } } });
    for (const ref of ['a', 'b', 'c', 'd', 'e']) cache.remember(key(ref), long(), 30_000);
    expect(cache.size).toBeLessThanOrEqual(3);
    expect(cache.answer(key('e'))).toBeDefined();
  });
});
