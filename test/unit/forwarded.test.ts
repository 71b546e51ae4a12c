import { describe, expect, it } from 'vitest';
import { normalizeAddress, TrustedProxies } from '../../src/http/forwarded.js';

describe('the client address behind trusted proxies', () => {
  const proxies = new TrustedProxies(['10.0.0.0/8', '192.0.2.1', 'fd00::/8']);

  it('believes X-Forwarded-For only from a trusted proxy, read from the right', () => {
    // From the balancer: the address it appended (right-most) is the client.
    expect(proxies.clientAddress('192.0.2.1', '203.0.113.7')).toBe('203.0.113.7');
    // Whatever the client wrote itself sits further left and is ignored.
    expect(proxies.clientAddress('192.0.2.1', '6.6.6.6, 203.0.113.7')).toBe('203.0.113.7');
    // A chain of trusted proxies is walked through.
    expect(proxies.clientAddress('192.0.2.1', '6.6.6.6, 203.0.113.7, 10.1.2.3, 10.9.9.9')).toBe('203.0.113.7');
    expect(proxies.clientAddress('192.0.2.1', ['6.6.6.6, 203.0.113.7', '10.1.2.3'])).toBe('203.0.113.7');
    // Not from a trusted proxy: the header is the client's own claim.
    expect(proxies.clientAddress('198.51.100.4', '203.0.113.7')).toBe('198.51.100.4');
    expect(proxies.clientAddress('192.0.2.1', undefined)).toBe('192.0.2.1');
    expect(new TrustedProxies([]).clientAddress('192.0.2.1', '203.0.113.7')).toBe('192.0.2.1');
  });

  it('handles IPv4 on dual-stack sockets, IPv6, ports, and garbage', () => {
    expect(proxies.clientAddress('::ffff:10.0.0.5', '203.0.113.7')).toBe('203.0.113.7');
    expect(proxies.clientAddress('fd00::1', '2001:db8::7')).toBe('2001:db8::7');
    expect(proxies.clientAddress('192.0.2.1', '[2001:db8::7]:5123')).toBe('2001:db8::7');
    expect(proxies.clientAddress('192.0.2.1', '203.0.113.7:40000')).toBe('203.0.113.7');
    // Unreadable: the walk stops at the last trusted hop.
    expect(proxies.clientAddress('192.0.2.1', 'not-an-address')).toBe('192.0.2.1');
    expect(proxies.clientAddress('192.0.2.1', 'evil, 10.0.0.7')).toBe('10.0.0.7');
    // All trusted: the left-most.
    expect(proxies.clientAddress('192.0.2.1', '10.0.0.8, 10.0.0.7')).toBe('10.0.0.8');
    expect(normalizeAddress(' ::FFFF:127.0.0.1 ')).toBe('127.0.0.1');
    expect(normalizeAddress('')).toBeUndefined();
  });
});
