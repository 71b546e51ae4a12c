import type { Mirror } from '../../mirror.js';
import { parseManifestReference } from '../../oci/reference.js';
import type { RequestContext } from '../request-context.js';
import { selectUpstream } from './select-upstream.js';

/** GET/HEAD /v2/<name>/manifests/<tag|digest>: the stored bytes, exactly as received. */
export async function handleManifest(mirror: Mirror, ctx: RequestContext, name: string, reference: string): Promise<void> {
  const route = selectUpstream(mirror, ctx, name);
  const ref = parseManifestReference(reference);
  const result = await mirror.getManifest(route, ref, ctx.req.headers.accept, { client: ctx.client });
  ctx.outcome = result.outcome;
  ctx.manifest = result;
  const { res } = ctx;
  // The hot path: one writeHead with every header as a flat name/value list (nothing was set
  // on the response before: app.ts leaves the common headers to this call).
  const headers = [
    ...ctx.commonHeaders,
    'Docker-Distribution-API-Version',
    'registry/2.0',
    'Content-Type',
    result.mediaType,
    'Content-Length',
    String(result.bytes.length),
    'Docker-Content-Digest',
    result.digest,
    'ETag',
    `"${result.digest}"`,
  ];
  if (result.warning) headers.push('Warning', result.warning);
  res.writeHead(200, headers);
  if (ctx.req.method === 'HEAD') {
    res.end();
    return;
  }
  ctx.bytes = result.bytes.length;
  res.end(result.bytes);
}
