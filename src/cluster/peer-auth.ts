// How a replica proves that a request comes from another replica: an HMAC-SHA256, keyed by
// the cluster's shared secret, over the method, the path with its query and the time, sent as
//   x-registry-mirror-peer: v1 t=<unix seconds> sig=<hex>
// The secret itself never travels, a signature is good for one method and path only, and
// only while the sender's clock is within MAX_SKEW_MS of the receiver's.

import { createHmac, timingSafeEqual } from 'node:crypto';

/** The header that marks a request between replicas (it is not forwarded again). */
export const PEER_HEADER = 'x-registry-mirror-peer';

/** How far the signing time may be from the receiver's clock, either way. */
export const MAX_SKEW_MS = 60_000;

const SIGNED = /^v1 t=(\d{1,15}) sig=([0-9a-f]{64})$/;

function mac(secret: string, method: string, pathAndQuery: string, unixSeconds: number): Buffer {
  return createHmac('sha256', secret).update(`v1\n${method.toUpperCase()}\n${pathAndQuery}\n${unixSeconds}`).digest();
}

/** The header value for a request `method pathAndQuery` sent at `nowMs`. */
export function signPeerRequest(secret: string, method: string, pathAndQuery: string, nowMs: number): string {
  const t = Math.floor(nowMs / 1000);
  return `v1 t=${t} sig=${mac(secret, method, pathAndQuery, t).toString('hex')}`;
}

/**
 * True only for a well-formed header whose signature matches this request and secret and whose
 * time is within `maxSkewMs` of `nowMs`. Anything else (missing, malformed, wrong secret,
 * another path or method, stale, from the future) is false.
 */
export function verifyPeerRequest(
  header: string | string[] | undefined,
  secret: string,
  method: string,
  pathAndQuery: string,
  nowMs: number,
  maxSkewMs = MAX_SKEW_MS,
): boolean {
  if (typeof header !== 'string') return false;
  const match = SIGNED.exec(header);
  if (!match) return false;
  const t = Number(match[1]);
  if (!Number.isSafeInteger(t) || Math.abs(nowMs - t * 1000) > maxSkewMs) return false;
  const given = Buffer.from(match[2]!, 'hex');
  const expected = mac(secret, method, pathAndQuery, t);
  return given.length === expected.length && timingSafeEqual(given, expected);
}
