// The per-upstream circuit breaker (issue 13): it opens on failures that say the upstream
// itself is unhealthy, never because one client keeps asking for one bad thing.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { CircuitBreaker } from '../../src/upstream/breaker.js';

const COOLDOWN = 30_000;

/** Run one request through the breaker and report how it ended. */
function attempt(breaker: CircuitBreaker, outcome: 'ok' | 'down' | { repository: string } | 'inconclusive'): boolean {
  const permit = breaker.acquire();
  if (!permit.allowed) return false;
  if (outcome === 'ok') breaker.success(permit.probe);
  else if (outcome === 'down') breaker.failure(permit.probe);
  else if (outcome === 'inconclusive') breaker.release(permit.probe);
  else breaker.failure(permit.probe, outcome.repository);
  return true;
}

describe('circuit breaker', () => {
  it('opens after N failures that say the upstream is unhealthy (network errors, time-outs, /v2/ 5xx)', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    attempt(breaker, 'down');
    attempt(breaker, 'down');
    expect(breaker.state).toBe('closed');
    attempt(breaker, 'down');
    expect(breaker.state).toBe('open');
    expect(breaker.acquire().allowed).toBe(false);
    expect(breaker.retryInMs()).toBe(COOLDOWN);
  });

  it('does not open after any number of 5xx for one repository', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    for (let i = 0; i < 50; i++) expect(attempt(breaker, { repository: `library/${'a'.repeat(255)}` })).toBe(true);
    expect(breaker.state).toBe('closed');
    // Nor for two bad repositories.
    for (let i = 0; i < 50; i++) attempt(breaker, { repository: 'library/alpine' });
    expect(breaker.state).toBe('closed');
    expect(breaker.acquire()).toEqual({ allowed: true, probe: false });
  });

  it('opens when the 5xx answers span several distinct repositories', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    attempt(breaker, { repository: 'team/a' });
    attempt(breaker, { repository: 'team/b' });
    expect(breaker.state).toBe('closed');
    attempt(breaker, { repository: 'team/c' });
    expect(breaker.state).toBe('open');
  });

  it('one repository failing does not hide network failures', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    attempt(breaker, 'down');
    attempt(breaker, { repository: 'team/bad' });
    attempt(breaker, 'down');
    attempt(breaker, { repository: 'team/bad' });
    expect(breaker.state).toBe('closed');
    attempt(breaker, 'down');
    expect(breaker.state).toBe('open');
  });

  it('a success in between starts the count again', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    attempt(breaker, 'down');
    attempt(breaker, 'down');
    attempt(breaker, 'ok');
    attempt(breaker, 'down');
    attempt(breaker, 'down');
    expect(breaker.state).toBe('closed');
  });

  it('after the cooldown lets one probe through; a failed probe opens it again, a successful one closes it', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(2, COOLDOWN, clock);
    attempt(breaker, 'down');
    attempt(breaker, 'down');
    expect(breaker.state).toBe('open');
    clock.advance(COOLDOWN - 1);
    expect(breaker.acquire().allowed).toBe(false);
    clock.advance(1);
    expect(breaker.state).toBe('half-open');
    const probe = breaker.acquire();
    expect(probe).toEqual({ allowed: true, probe: true });
    // Only one probe at a time.
    expect(breaker.acquire().allowed).toBe(false);
    breaker.failure(probe.probe);
    expect(breaker.state).toBe('open');
    expect(breaker.retryInMs()).toBe(COOLDOWN);

    clock.advance(COOLDOWN);
    // An inconclusive probe (a 404, a 429) lets the next request probe.
    expect(attempt(breaker, 'inconclusive')).toBe(true);
    expect(breaker.state).toBe('half-open');
    const second = breaker.acquire();
    expect(second.probe).toBe(true);
    breaker.success(second.probe);
    expect(breaker.state).toBe('closed');
    expect(breaker.acquire()).toEqual({ allowed: true, probe: false });
    // Closed again means counting from zero.
    attempt(breaker, 'down');
    expect(breaker.state).toBe('closed');
  });

  it('a probe answered with a 5xx for one repository opens it again too (the upstream is still unwell)', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(3, COOLDOWN, clock);
    for (const repository of ['team/a', 'team/b', 'team/c']) attempt(breaker, { repository });
    expect(breaker.state).toBe('open');
    // While open, no repository gets through.
    expect(attempt(breaker, { repository: 'team/d' })).toBe(false);
    clock.advance(COOLDOWN);
    expect(attempt(breaker, { repository: 'team/a' })).toBe(true);
    expect(breaker.state).toBe('open');
    expect(breaker.retryInMs()).toBe(COOLDOWN);
    clock.advance(COOLDOWN);
    expect(attempt(breaker, 'ok')).toBe(true);
    expect(breaker.state).toBe('closed');
    // Closed again: one repository's 5xx answers alone do not open it.
    for (let i = 0; i < 10; i++) attempt(breaker, { repository: 'team/a' });
    expect(breaker.state).toBe('closed');
  });

  it('threshold 0 never opens', () => {
    const clock = new ManualClock();
    const breaker = new CircuitBreaker(0, COOLDOWN, clock);
    for (let i = 0; i < 20; i++) attempt(breaker, 'down');
    expect(breaker.state).toBe('closed');
  });
});
