// An upstream's status as the OCI error the mirror's client sees (issue 13): a 4xx from the
// upstream means the client's request was wrong for it, so the mirror answers a 4xx too.
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config.js';
import type { UpstreamResponse } from '../../src/upstream/client.js';
import { UpstreamRegistry } from '../../src/upstream/registry.js';
import type { Route } from '../../src/upstream/selector.js';
import { statusError, type UpstreamCallKind } from '../../src/upstream/status-errors.js';

const config = buildConfig({ storage: { path: '/nonexistent' }, upstreams: { 'docker.io': { url: 'https://registry-1.docker.io' } } }, {});
const route: Route = { upstream: new UpstreamRegistry(config.upstreams[0]!), repository: 'library/alpine', namespace: undefined };

function mapped(status: number, kind: UpstreamCallKind, body = ''): { code: string; status: number } {
  const response = { status, headers: {}, body: undefined } as unknown as UpstreamResponse;
  const error = statusError(route, response, kind, body);
  return { code: error.code, status: error.status };
}

const ociBody = (code: string) => JSON.stringify({ errors: [{ code, message: 'from upstream' }] });

describe('statusError', () => {
  it.each([
    [400, 'manifest', 'MANIFEST_INVALID', 400],
    [400, 'blob', 'DIGEST_INVALID', 400],
    [400, 'tags', 'NAME_INVALID', 400],
    [405, 'manifest', 'UNSUPPORTED', 405],
    [410, 'manifest', 'MANIFEST_UNKNOWN', 404],
    [410, 'blob', 'BLOB_UNKNOWN', 404],
    [414, 'manifest', 'NAME_INVALID', 400],
    [416, 'blob', 'RANGE_INVALID', 416],
    [422, 'manifest', 'MANIFEST_INVALID', 400],
  ] as const)('upstream %i for a %s is %s (%i)', (status, kind, code, mappedStatus) => {
    expect(mapped(status, kind)).toEqual({ code, status: mappedStatus });
  });

  it('relays the OCI code of a 400 when it names what was wrong', () => {
    expect(mapped(400, 'manifest', ociBody('NAME_INVALID'))).toEqual({ code: 'NAME_INVALID', status: 400 });
    expect(mapped(400, 'blob', ociBody('DIGEST_INVALID'))).toEqual({ code: 'DIGEST_INVALID', status: 400 });
    expect(mapped(400, 'manifest', ociBody('NAME_UNKNOWN'))).toEqual({ code: 'NAME_UNKNOWN', status: 404 });
    // Not a client-error code: mapped by status.
    expect(mapped(400, 'manifest', ociBody('UNKNOWN'))).toEqual({ code: 'MANIFEST_INVALID', status: 400 });
  });

  it('no upstream 4xx becomes a 5xx except a 408 (the upstream timed out the mirror)', () => {
    for (let status = 400; status < 500; status++) {
      for (const kind of ['manifest', 'blob', 'tags', 'ping'] as const) {
        const m = mapped(status, kind);
        if (status === 408) expect(m.status).toBe(502);
        else expect(m.status, `${status} ${kind}`).toBeLessThan(500);
      }
    }
  });

  it('keeps the existing answers for 404, 401/403, 429 and 5xx', () => {
    expect(mapped(404, 'manifest')).toEqual({ code: 'MANIFEST_UNKNOWN', status: 404 });
    expect(mapped(404, 'blob')).toEqual({ code: 'BLOB_UNKNOWN', status: 404 });
    expect(mapped(401, 'manifest')).toEqual({ code: 'DENIED', status: 403 });
    expect(mapped(429, 'manifest')).toEqual({ code: 'TOOMANYREQUESTS', status: 429 });
    expect(mapped(500, 'manifest')).toEqual({ code: 'UNAVAILABLE', status: 502 });
    expect(mapped(503, 'manifest')).toEqual({ code: 'UNAVAILABLE', status: 503 });
  });
});
