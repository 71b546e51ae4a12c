// Each client's budget of upstream misses (issue 13): a token bucket per address.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { ClientMissBudget, clientKey } from '../../src/core/client-budget.js';
import { RegistryError } from '../../src/oci/errors.js';

function refused(fn: () => void): RegistryError | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof RegistryError) return err;
    throw err;
  }
  return undefined;
}

describe('ClientMissBudget', () => {
  it('refuses a client past its misses with 429 and Retry-After, refills with time, and leaves other clients alone', () => {
    const clock = new ManualClock();
    const budget = new ClientMissBudget(6, clock);
    for (let i = 0; i < 6; i++) budget.charge('192.0.2.1');
    const error = refused(() => budget.charge('192.0.2.1'));
    expect(error?.code).toBe('TOOMANYREQUESTS');
    expect(error?.status).toBe(429);
    expect(error?.headers['retry-after']).toBe('10');
    expect(refused(() => budget.charge('192.0.2.2'))).toBeUndefined();
    clock.advance(10_000);
    expect(refused(() => budget.charge('192.0.2.1'))).toBeUndefined();
    expect(refused(() => budget.charge('192.0.2.1'))).toBeDefined();
  });

  it('counts nothing without a client or with a budget of 0', () => {
    const clock = new ManualClock();
    const budget = new ClientMissBudget(1, clock);
    for (let i = 0; i < 10; i++) budget.charge(undefined);
    const off = new ClientMissBudget(0, clock);
    for (let i = 0; i < 10; i++) off.charge('192.0.2.1');
  });

  it('one budget per IPv4 address and per IPv6 /64', () => {
    expect(clientKey('192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('2001:db8:0:1:aaaa::1')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:0db8:0000:0001:ffff:0:0:2')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    const budget = new ClientMissBudget(1, new ManualClock());
    budget.charge('2001:db8:0:1::1');
    expect(refused(() => budget.charge('2001:db8:0:1::2'))?.code).toBe('TOOMANYREQUESTS');
    expect(refused(() => budget.charge('2001:db8:0:2::1'))).toBeUndefined();
  });
});
