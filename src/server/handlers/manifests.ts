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
  // The hot path: one writeHead with every header, no per-header bookkeeping.
  const headers: Record<string, string | number> = {
    'Content-Type': result.mediaType,
    'Content-Length': result.bytes.length,
    'Docker-Content-Digest': result.digest,
    ETag: `"${result.digest}"`,
  };
  if (result.warning) headers.Warning = result.warning;
  res.writeHead(200, headers);
  if (ctx.req.method === 'HEAD') {
    res.end();
    return;
  }
  ctx.bytes = result.bytes.length;
  res.end(result.bytes);
}
