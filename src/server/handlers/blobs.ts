import { pipeline } from 'node:stream/promises';
import type { Mirror } from '../../mirror.js';
import { RegistryError } from '../../oci/errors.js';
import { parseDigest } from '../../oci/reference.js';
import type { RequestContext } from '../request-context.js';
import { parseRange } from '../../http/range.js';
import { selectUpstream } from './select-upstream.js';

/**
 * GET/HEAD /v2/<name>/blobs/<digest>, with Range (206/416). Cold blobs stream while they
 * download; a range of a cold blob is served as soon as its bytes have arrived.
 * Never compressed (containerd asks for zstd/gzip; blobs are served as stored).
 */
export async function handleBlob(mirror: Mirror, ctx: RequestContext, name: string, digestText: string): Promise<void> {
  const route = selectUpstream(mirror, ctx, name);
  const digest = parseDigest(digestText);
  const { req, res } = ctx;
  const blob = req.method === 'HEAD'
      ? await mirror.statBlob(route, digest, { client: ctx.client })
      : await mirror.getBlob(route, digest, { fromPeer: ctx.fromPeer, client: ctx.client });
  ctx.outcome = blob.outcome;
  res.setHeader('Docker-Content-Digest', blob.digest);
  res.setHeader('ETag', `"${blob.digest}"`);
  res.setHeader('Accept-Ranges', 'bytes');
  res.setHeader('Content-Type', 'application/octet-stream');
  // Content-addressed: it can never change.
  res.setHeader('Cache-Control', 'public, max-age=31536000, immutable');

  if (blob.redirect && req.method === 'GET') {
    // Bytes flow from the object store to the client; docker, containerd, podman and skopeo follow it.
    res.statusCode = 307;
    res.setHeader('Location', blob.redirect);
    res.setHeader('Content-Length', 0);
    res.end();
    return;
  }
  let start = 0;
  let end: number | undefined;
  if (blob.size !== undefined) {
    const range = parseRange(req.headers.range, blob.size);
    if (range === 'unsatisfiable') {
      throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', {
        headers: { 'content-range': `bytes */${blob.size}` },
        detail: { range: req.headers.range, size: blob.size },
      });
    }
    if (range) {
      start = range.start;
      end = range.end;
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${blob.size}`);
      res.setHeader('Content-Length', end - start + 1);
    } else {
      res.statusCode = 200;
      res.setHeader('Content-Length', blob.size);
    }
  } else {
    res.statusCode = 200;
  }
  if (req.method === 'HEAD' || !blob.open) {
    res.end();
    return;
  }
  const source = blob.open(start, end);
  const fromCache = blob.outcome === 'hit';
  source.on('data', (chunk: Buffer) => {
    ctx.bytes += chunk.length;
  });
  try {
    await pipeline(source, res);
    mirror.metrics.bytesServed.inc({ source: fromCache ? 'cache' : 'upstream' }, ctx.bytes);
  } catch (err) {
    mirror.metrics.bytesServed.inc({ source: fromCache ? 'cache' : 'upstream' }, ctx.bytes);
    // A client that went away is normal; a failed download must cut the connection.
    if (!res.destroyed) res.destroy(err instanceof Error ? err : undefined);
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ERR_STREAM_PREMATURE_CLOSE') {
      mirror.logger.warn({ reqId: ctx.id, digest: blob.digest, err: (err as Error).message }, 'blob response cut short');
    }
  }
}
