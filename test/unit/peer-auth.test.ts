import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MAX_SKEW_MS, signPeerRequest, verifyPeerRequest } from '../../src/cluster/peer-auth.js';

const secret = 'the-shared-cluster-secret';
const path = '/v2/library/alpine/blobs/sha256:' + 'a'.repeat(64) + '?ns=docker.io';
const now = Date.UTC(2026, 0, 1, 12, 0, 0);

describe('signed requests between replicas', () => {
  it('has the documented wire format: v1 t=<unix seconds> sig=<hex HMAC-SHA256>', () => {
    const header = signPeerRequest(secret, 'GET', path, now + 999);
    const t = Math.floor(now / 1000);
    const sig = createHmac('sha256', secret).update(`v1\nGET\n${path}\n${t}`).digest('hex');
    expect(header).toBe(`v1 t=${t} sig=${sig}`);
    expect(header).not.toContain(secret);
  });

  it('accepts a good signature, within the allowed skew either way', () => {
    const header = signPeerRequest(secret, 'GET', path, now);
    expect(verifyPeerRequest(header, secret, 'GET', path, now)).toBe(true);
    expect(verifyPeerRequest(header, secret, 'GET', path, now + MAX_SKEW_MS)).toBe(true);
    expect(verifyPeerRequest(header, secret, 'GET', path, now - MAX_SKEW_MS)).toBe(true);
  });

  it('refuses another secret, another path or query, another method', () => {
    const header = signPeerRequest(secret, 'GET', path, now);
    expect(verifyPeerRequest(header, 'another-cluster-secret!!', 'GET', path, now)).toBe(false);
    expect(verifyPeerRequest(header, secret, 'GET', path.replace('alpine', 'busybox'), now)).toBe(false);
    expect(verifyPeerRequest(header, secret, 'GET', path.replace('docker.io', 'ghcr.io'), now)).toBe(false);
    expect(verifyPeerRequest(header, secret, 'GET', path.split('?')[0]!, now)).toBe(false);
    expect(verifyPeerRequest(header, secret, 'HEAD', path, now)).toBe(false);
  });

  it('refuses stale and future timestamps, and a timestamp changed after signing', () => {
    expect(verifyPeerRequest(signPeerRequest(secret, 'GET', path, now - MAX_SKEW_MS - 1000), secret, 'GET', path, now)).toBe(false);
    expect(verifyPeerRequest(signPeerRequest(secret, 'GET', path, now + MAX_SKEW_MS + 1000), secret, 'GET', path, now)).toBe(false);
    const old = signPeerRequest(secret, 'GET', path, now - 3_600_000);
    const t = Math.floor(now / 1000);
    expect(verifyPeerRequest(old.replace(/t=\d+/, `t=${t}`), secret, 'GET', path, now)).toBe(false);
  });

  it('refuses missing and malformed headers', () => {
    const good = signPeerRequest(secret, 'GET', path, now);
    for (const header of [
      undefined,
      '',
      'x',
      '1',
      secret,
      [good, good],
      good.replace('v1 ', 'v2 '),
      good.toUpperCase(),
      good.slice(0, -2),
      `${good}00`,
      `${good} `,
      good.replace(/sig=/, 'sig= '),
      good.replace(/t=\d+/, 't=-1'),
      good.replace(/t=\d+/, 't=1e9'),
      good.replace(/t=\d+/, 't=99999999999999999999'),
    ]) {
      expect([header, verifyPeerRequest(header, secret, 'GET', path, now)]).toEqual([header, false]);
    }
  });
});
