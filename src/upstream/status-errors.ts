// An upstream's non-success answer, turned into the OCI error the mirror's client sees.
// One table for every caller: manifests, blobs, tags, existence checks.

import { readLimited } from '../http/body.js';
import { headerValue } from '../http/headers.js';
import { parseErrorBody, RegistryError } from '../oci/errors.js';
import type { UpstreamResponse } from './client.js';
import type { Route } from './selector.js';

export type UpstreamCallKind = 'manifest' | 'blob' | 'tags' | 'ping';

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
    default:
      return new RegistryError('UNAVAILABLE', `upstream ${upstream} answered ${response.status}`, {
        status: response.status >= 500 ? (response.status === 503 ? 503 : 502) : 502,
        detail,
      });
  }
}

/** Upstream trouble (unreachable, 5xx, 429, auth trouble) as opposed to an authoritative answer. */
export function isUpstreamTrouble(err: unknown): boolean {
  if (!(err instanceof RegistryError)) return true;
  return err.code === 'UNAVAILABLE' || err.code === 'TOOMANYREQUESTS' || err.code === 'DENIED' || err.code === 'UNAUTHORIZED' || err.status >= 500;
}
