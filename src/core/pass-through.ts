// When the cache's disk cannot take a blob: the download is not started, and the waiting
// client is served straight from the upstream's response instead (verified, not stored).

import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { DigestVerifier } from '../oci/digest.js';
import type { Digest } from '../oci/reference.js';
import type { UpstreamResponse } from '../upstream/client.js';
import type { Route } from '../upstream/selector.js';
import { upstreamError } from '../upstream/status-errors.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { BlobResult } from './results.js';

/** Thrown by a download's admission check: no room; carries the upstream's open response. */
export class NoRoomForBlob extends Error {
  readonly code = 'ENOSPC';
  /** The response went to one client already; the next one asks the upstream again. */
  claimed = false;
  constructor(
    readonly response: UpstreamResponse,
    readonly size: number | undefined,
    /** The most bytes the blob may have (see DownloadSource.maxSize). */
    readonly maxSize: number = Infinity,
  ) {
    super('not enough free space in the cache for this blob');
  }
}

/**
 * Stream the upstream's bytes to this client without storing them. The last chunk is held
 * back until the digest matches, as for a cached download. Ranges are refused.
 */
export async function passThrough(upstreams: Upstreams, route: Route, digest: Digest, full: NoRoomForBlob, logger: Logger, storagePath: string): Promise<BlobResult> {
  logger.warn({ digest: digest.value, size: full.size, storage: storagePath }, 'cache disk is full: passing the blob through without storing it');
  let response = full.response;
  if (full.claimed) {
    // Another client took that response: ask again.
    response = await upstreams.request(route, 'blob', { method: 'GET', path: `/v2/${route.repository}/blobs/${digest.value}` });
    if (response.status !== 200) throw await upstreamError(route, response, 'blob', digest.value);
  }
  full.claimed = true;
  const body = response.body;
  return {
    digest: digest.value,
    size: full.size,
    outcome: 'miss',
    open: (start, end) => {
      if (start !== 0 || (end !== undefined && full.size !== undefined && end < full.size - 1)) {
        body.destroy();
        const refused = new Readable({ read() {} });
        refused.destroy(new Error('ranges are not served while the cache disk is full'));
        return refused;
      }
      return Readable.from(verifyWhileStreaming(body, digest, full.maxSize));
    },
  };
}

/** Pass bytes on as they come but hold the last chunk until the digest matches; never more than `maxSize`. */
async function* verifyWhileStreaming(body: Readable, digest: Digest, maxSize: number): AsyncGenerator<Buffer> {
  const verifier = new DigestVerifier(digest);
  let held: Buffer | undefined;
  let received = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    received += chunk.length;
    if (received > maxSize) {
      body.destroy();
      throw new Error(`upstream sent more than the ${maxSize} bytes ${digest.value} may have`);
    }
    verifier.update(chunk);
    if (held) yield held;
    held = chunk;
  }
  if (verifier.finish() !== digest.value) throw new Error(`upstream content does not match ${digest.value}`);
  if (held) yield held;
}
