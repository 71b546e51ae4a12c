import type { Mirror } from '../../mirror.js';
import { parseManifestReference } from '../../oci/reference.js';
import type { RequestContext } from '../app.js';
import { routeRequest } from './route-request.js';

/** GET/HEAD /v2/<name>/manifests/<tag|digest>: the stored bytes, exactly as received. */
export async function handleManifest(mirror: Mirror, ctx: RequestContext, name: string, reference: string): Promise<void> {
  const route = routeRequest(mirror, ctx, name);
  const ref = parseManifestReference(reference);
  const result = await mirror.getManifest(route, ref, ctx.req.headers.accept);
  ctx.outcome = result.outcome;
  const { res } = ctx;
  res.statusCode = 200;
  res.setHeader('Content-Type', result.mediaType);
  res.setHeader('Content-Length', result.bytes.length);
  res.setHeader('Docker-Content-Digest', result.digest);
  res.setHeader('ETag', `"${result.digest}"`);
  if (result.warning) res.setHeader('Warning', result.warning);
  if (ctx.req.method === 'HEAD') {
    res.end();
    return;
  }
  ctx.bytes = result.bytes.length;
  res.end(result.bytes);
}
