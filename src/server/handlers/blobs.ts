import type { ServerResponse } from 'node:http';
import { finished, type Readable } from 'node:stream';
import { finished as responseFinished } from 'node:stream/promises';
import type { Mirror } from '../../mirror.js';
import { RegistryError } from '../../oci/errors.js';
import { parseDigest } from '../../oci/reference.js';
import type { RequestContext } from '../request-context.js';
import { multipartByteranges } from '../../http/byteranges.js';
import { parseRanges, type ByteRange } from '../../http/range.js';
import type { BlobResult } from '../../core/results.js';
import { selectUpstream } from './select-upstream.js';
import { isRecycling } from '../../http/recycled-chunks.js';

/**
 * GET/HEAD /v2/<name>/blobs/<digest>, with Range (206/416), one range or several
 * (multipart/byteranges). Cold blobs stream while they download; a range of a cold blob is
 * served as soon as its bytes have arrived.
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
    const ranges = parseRanges(req.headers.range, blob.size);
    if (ranges === 'unsatisfiable') {
      throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', {
        headers: { 'content-range': `bytes */${blob.size}` },
        detail: { range: req.headers.range, size: blob.size },
      });
    }
    if (ranges && ranges.length > 1) {
      await serveMultipart(mirror, ctx, blob, blob.size, ranges);
      return;
    }
    const range = ranges?.[0];
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
  await sendBody(mirror, ctx, blob, async () => {
    await copyPart(source, res, (n) => {
      ctx.bytes += n;
    });
    res.end();
    await responseFinished(res);
  });
}

/**
 * Stream a body with `send`, then count the bytes served. A client that went away is normal;
 * a failed download must cut the connection (the only honest signal once headers are sent).
 */
async function sendBody(mirror: Mirror, ctx: RequestContext, blob: BlobResult, send: () => Promise<void>): Promise<void> {
  const { res } = ctx;
  try {
    await send();
  } catch (err) {
    if (!res.destroyed) res.destroy(err instanceof Error ? err : undefined);
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ERR_STREAM_PREMATURE_CLOSE') {
      mirror.logger.warn({ reqId: ctx.id, digest: blob.digest, err: (err as Error).message }, 'blob response cut short');
    }
  } finally {
    mirror.metrics.bytesServed.inc({ source: blob.outcome === 'hit' ? 'cache' : 'upstream' }, ctx.bytes);
  }
}

/**
 * 206 multipart/byteranges: one part per range, each streamed through `blob.open` in turn
 * (from the store, or from the running download as soon as its bytes are there) into the
 * response without ending it, so backpressure holds and no part is ever held in memory.
 */
async function serveMultipart(mirror: Mirror, ctx: RequestContext, blob: BlobResult, size: number, ranges: ByteRange[]): Promise<void> {
  const { req, res } = ctx;
  const body = multipartByteranges(ranges, size, 'application/octet-stream');
  res.statusCode = 206;
  res.setHeader('Content-Type', body.contentType);
  res.setHeader('Content-Length', body.contentLength);
  if (req.method === 'HEAD' || !blob.open) {
    res.end();
    return;
  }
  const open = blob.open;
  await sendBody(mirror, ctx, blob, async () => {
    for (const part of body.parts) {
      if (res.destroyed) throw prematureClose();
      res.write(part.head);
      const { start, end } = part.range;
      const sent = await copyPart(open(start, end), res, (n) => {
        ctx.bytes += n;
      });
      // A short part would shift the framing and leave the client waiting for the rest.
      if (sent !== end - start + 1) throw new Error(`part ${start}-${end} ended after ${sent} bytes`);
    }
    res.end(body.tail);
  });
}

/**
 * Copy `source` into `res` without ending it: pauses the source while the response's buffer
 * is full, destroys it if the client goes away, and removes every listener it added once done
 * (unlike `pipeline(source, res, { end: false })`, which leaves three per call on the
 * response: a thousand parts would pile up thousands). A source that reads into pooled
 * buffers gets each chunk back once its write has completed (cache/chunk-pool.ts); a write
 * that fails keeps its chunk out of the pool. Resolves with the bytes copied.
 */
function copyPart(source: Readable, res: ServerResponse, onBytes: (n: number) => void): Promise<number> {
  const recycling = isRecycling(source) ? source : undefined;
  return new Promise((resolve, reject) => {
    let sent = 0;
    let settled = false;
    const onData = (chunk: Buffer) => {
      sent += chunk.length;
      onBytes(chunk.length);
      const more = recycling
        ? res.write(chunk, (err) => {
            if (!err) recycling.recycle(chunk);
          })
        : res.write(chunk);
      if (!more) source.pause();
    };
    const onDrain = () => source.resume();
    const settle = (err: Error | undefined) => {
      if (settled) return;
      settled = true;
      source.off('data', onData);
      res.off('drain', onDrain);
      stopSource();
      stopResponse();
      if (err) {
        source.destroy();
        reject(err);
      } else {
        resolve(sent);
      }
    };
    const stopSource = finished(source, (err) => settle(err ?? undefined));
    // Until the tail is written the response only finishes by closing early.
    const stopResponse = finished(res, (err) => settle(err ?? prematureClose()));
    res.on('drain', onDrain);
    source.on('data', onData);
  });
}

function prematureClose(): Error {
  return Object.assign(new Error('client went away'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}
