// The upstream side of a blob download: GET the blob (whole, from an offset to resume, or a
// Range segment), and say what the upstream answered: its size, its ETag, whether it
// honoured the range. The download (cache/downloads.ts) decides what to trust.

import { Readable } from 'node:stream';
import type { DownloadSource } from '../cache/download-source.js';
import { headerValue, parseContentLength, parseContentRange } from '../http/headers.js';
import { RegistryError } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import type { UpstreamResponse } from './client.js';
import type { Route } from './selector.js';
import { upstreamError } from './status-errors.js';
import type { Upstreams } from './upstreams.js';

export interface BlobSourceOptions {
  /**
   * Called with the first full answer (offset 0) before the download takes it; may throw to
   * refuse the download (the disk has no room) and hand the response to someone else.
   */
  admit?(response: UpstreamResponse, totalSize: number | undefined): Promise<void>;
}

/** Where a blob download from `route`'s upstream reads its bytes. */
export function upstreamBlobSource(upstreams: Upstreams, route: Route, digest: Digest, options: BlobSourceOptions = {}): DownloadSource {
  const limiter = upstreams.bandwidthOf(route.upstream.name);
  const path = `/v2/${route.repository}/blobs/${digest.value}`;
  const get = (headers: Record<string, string>, signal: AbortSignal | undefined) => upstreams.request(route, 'blob', { method: 'GET', path, headers, signal });
  return {
    segments: route.upstream.segments,
    throttle: limiter ? (bytes) => limiter.take(bytes) : undefined,
    openRange: async (start, end, signal) => {
      const response = await get({ range: `bytes=${start}-${end}` }, signal);
      if (response.status !== 200 && response.status !== 206) throw await rangeError(route, response, digest);
      const range = parseContentRange(response.headers);
      return {
        status: response.status,
        body: response.body,
        range: range && range.total !== undefined ? { start: range.start, end: range.end, total: range.total } : undefined,
        etag: headerValue(response.headers, 'etag'),
      };
    },
    open: async (offset, signal) => {
      const response = await get(offset > 0 ? { range: `bytes=${offset}-` } : {}, signal);
      if (offset > 0 && response.status === 416) throw await rangeError(route, response, digest);
      if (offset > 0 && response.status === 206) {
        const range = parseContentRange(response.headers);
        if (range && range.start === offset) return { body: response.body, totalSize: range.total };
        // A range we did not ask for: take the whole body again and skip what we have.
        await response.body.dump().catch(() => undefined);
        const whole = await get({}, signal);
        if (whole.status !== 200) throw await upstreamError(route, whole, 'blob', digest.value);
        return { body: skipBytes(whole.body, offset), totalSize: parseContentLength(whole.headers) };
      }
      if (response.status !== 200) throw await upstreamError(route, response, 'blob', digest.value);
      const totalSize = parseContentLength(response.headers);
      // An upstream that ignores Range sends it all again: skip what we have.
      if (offset > 0) return { body: skipBytes(response.body, offset), totalSize };
      await options.admit?.(response, totalSize);
      return {
        body: response.body,
        totalSize,
        etag: headerValue(response.headers, 'etag'),
        // Only an explicit "none" rules ranges out; many registries and CDNs do not announce them.
        acceptsRanges: headerValue(response.headers, 'accept-ranges') !== 'none',
      };
    },
  };
}

/** The upstream refused a range the mirror asked for (segments, resumes): its trouble, not the client's. */
async function rangeError(route: Route, response: UpstreamResponse, digest: Digest): Promise<RegistryError> {
  const error = await upstreamError(route, response, 'blob', digest.value);
  if (response.status !== 416) return error;
  return new RegistryError('UNAVAILABLE', `upstream ${route.upstream.name} refused a range of ${digest.value} it announced (416)`, {
    status: 502,
    detail: error.detail,
  });
}

function skipBytes(body: Readable, count: number): Readable {
  let toSkip = count;
  return Readable.from(
    (async function* () {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (toSkip >= chunk.length) {
          toSkip -= chunk.length;
          continue;
        }
        yield toSkip > 0 ? chunk.subarray(toSkip) : chunk;
        toSkip = 0;
      }
    })(),
    { objectMode: false },
  );
}
