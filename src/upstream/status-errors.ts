// An upstream's non-success answer, turned into the OCI error the mirror's client sees.
// One table for every caller: manifests, blobs, tags, existence checks.

import { readLimited } from '../http/body.js';
import { headerValue } from '../http/headers.js';
import { ERROR_CODES, parseErrorBody, RegistryError, type ErrorCode } from '../oci/errors.js';
import type { UpstreamResponse } from './client.js';
import type { Route } from './selector.js';

export type UpstreamCallKind = 'manifest' | 'blob' | 'tags' | 'referrers' | 'ping';

/** An upstream error body is small; more than this is not an error body worth reading. */
const ERROR_BODY_LIMIT = 64 * 1024;

/** Read (at most 64 KiB of) the error body of `response` and map its status to an OCI error. */
export async function upstreamError(route: Route, response: UpstreamResponse, kind: UpstreamCallKind, reference?: string): Promise<RegistryError> {
  const body = await readLimited(response.body, ERROR_BODY_LIMIT).catch(() => Buffer.alloc(0));
  return statusError(route, response, kind, body.toString('utf8'), reference);
}

/** An upstream's status (and OCI error body, relayed in the detail) as the error our client should see. */
export function statusError(route: Route, response: UpstreamResponse, kind: UpstreamCallKind, body: string, reference?: string): RegistryError {
  const upstream = route.upstream.name;
  const relayed = parseErrorBody(body)[0];
  const detail = { upstream, repository: route.repository, reference, status: response.status, upstreamError: relayed };
  switch (response.status) {
    case 404:
      if (kind === 'blob') return new RegistryError('BLOB_UNKNOWN', `blob unknown to upstream ${upstream}`, { detail });
      if (relayed?.code === 'NAME_UNKNOWN') return new RegistryError('NAME_UNKNOWN', `repository ${route.repository} not found at ${upstream}`, { detail });
      return new RegistryError(kind === 'tags' ? 'NAME_UNKNOWN' : 'MANIFEST_UNKNOWN', `${kind} unknown to upstream ${upstream}`, { detail });
    case 401:
    case 403:
      return new RegistryError('DENIED', `upstream ${upstream} denied access to ${route.repository} (it may not exist, or need credentials)`, { detail });
    case 429: {
      const retryAfter = headerValue(response.headers, 'retry-after');
      return new RegistryError('TOOMANYREQUESTS', `upstream ${upstream} is rate-limiting this mirror`, {
        detail,
        headers: retryAfter ? { 'retry-after': retryAfter } : {},
      });
    }
    case 408:
      // The upstream timed out the mirror's own request: its trouble, not the client's.
      return new RegistryError('UNAVAILABLE', `upstream ${upstream} answered ${response.status}`, { status: 502, detail });
    default:
      if (response.status >= 400 && response.status < 500) return clientError(route, response.status, kind, relayed?.code, detail);
      return new RegistryError('UNAVAILABLE', `upstream ${upstream} answered ${response.status}`, {
        status: response.status === 503 ? 503 : 502,
        detail,
      });
  }
}

/** Codes an upstream may relay for a request that was wrong, passed on as they are. */
const RELAYED_CLIENT_CODES = new Set<ErrorCode>([
  'NAME_INVALID', 'NAME_UNKNOWN', 'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'MANIFEST_BLOB_UNKNOWN', 'DIGEST_INVALID', 'BLOB_UNKNOWN', 'SIZE_INVALID', 'RANGE_INVALID', 'UNSUPPORTED',
]);

/**
 * Any other 4xx: the request was wrong for the upstream (a name or reference it refuses, a
 * method, a range, a URL too long), so it is the client's request that failed: a 4xx, never a 5xx.
 */
function clientError(route: Route, status: number, kind: UpstreamCallKind, relayedCode: string | undefined, detail: object): RegistryError {
  const upstream = route.upstream.name;
  const message = `upstream ${upstream} refused the request (${status})`;
  if (relayedCode && RELAYED_CLIENT_CODES.has(relayedCode as ErrorCode)) {
    const code = relayedCode as ErrorCode;
    // Keep the upstream's status where it is a 4xx the code may have (405, 416, 404, 400).
    return new RegistryError(code, message, { detail, status: ERROR_CODES[code].status });
  }
  switch (status) {
    case 405:
      return new RegistryError('UNSUPPORTED', message, { detail });
    case 410:
      return new RegistryError(kind === 'blob' ? 'BLOB_UNKNOWN' : kind === 'tags' ? 'NAME_UNKNOWN' : 'MANIFEST_UNKNOWN', message, { detail });
    case 416:
      return new RegistryError('RANGE_INVALID', message, { detail });
    case 414:
      // The URL is too long for it: the name (or reference) is.
      return new RegistryError('NAME_INVALID', message, { detail });
    default:
      // 400 and the rest: what the client asked for is invalid there.
      if (kind === 'blob') return new RegistryError('DIGEST_INVALID', message, { detail });
      if (kind === 'manifest') return new RegistryError('MANIFEST_INVALID', message, { detail });
      if (kind === 'tags') return new RegistryError('NAME_INVALID', message, { detail });
      return new RegistryError('UNSUPPORTED', message, { status: 400, detail });
  }
}

/** Upstream trouble (unreachable, 5xx, 429, auth trouble) as opposed to an authoritative answer. */
export function isUpstreamTrouble(err: unknown): boolean {
  if (!(err instanceof RegistryError)) return true;
  return err.code === 'UNAVAILABLE' || err.code === 'TOOMANYREQUESTS' || err.code === 'DENIED' || err.code === 'UNAUTHORIZED' || err.status >= 500;
}
