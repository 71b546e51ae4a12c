import type { Mirror } from '../../mirror.js';
import { RegistryError } from '../../oci/errors.js';
import { MediaType } from '../../oci/media-types.js';
import { parseDigest } from '../../oci/reference.js';
import { referrersIndex, referrersPage, type ReferrersQuery } from '../../oci/referrers.js';
import type { RequestContext } from '../request-context.js';
import { selectUpstream } from './select-upstream.js';

/** A filter is a media type: short, and only a few of them. */
const MAX_ARTIFACT_TYPE_LENGTH = 255;
const MAX_ARTIFACT_TYPES = 16;

/**
 * GET/HEAD /v2/<name>/referrers/<digest>?artifactType=&n=&last= — an OCI image index of the
 * manifests that refer to <digest>, filtered (`OCI-Filters-Applied`), paged with a `Link` back
 * at the mirror.
 */
export async function handleReferrers(mirror: Mirror, ctx: RequestContext, name: string, digest: string): Promise<void> {
  const route = selectUpstream(mirror, ctx, name);
  const subject = parseDigest(digest);
  const query = referrersQueryOf(ctx.rawQuery ? ctx.query : new URLSearchParams());
  const result = await mirror.referrers(route, subject, { client: ctx.client });
  ctx.outcome = result.outcome;
  const page = referrersPage(result.descriptors, query);
  const body = referrersIndex(page.manifests);
  const headers: Record<string, string | number> = { 'Content-Type': MediaType.OciIndex, 'Content-Length': Buffer.byteLength(body) };
  if (page.filtered) headers['OCI-Filters-Applied'] = 'artifactType';
  if (result.warning) headers.Warning = result.warning;
  if (page.next) {
    // RFC 8288, aimed at the mirror: the same filter, and ns, on the next page.
    const params = new URLSearchParams(page.next);
    for (const type of query.artifactTypes) params.append('artifactType', type);
    const ns = ctx.rawQuery ? ctx.query.get('ns') : null;
    if (ns) params.set('ns', ns);
    headers.Link = `</v2/${name}/referrers/${subject.value}?${params}>; rel="next"`;
  }
  ctx.res.writeHead(200, headers);
  if (ctx.req.method === 'HEAD') {
    ctx.res.end();
    return;
  }
  ctx.bytes = Buffer.byteLength(body);
  ctx.res.end(body);
}

function referrersQueryOf(query: URLSearchParams): ReferrersQuery {
  const nText = query.get('n');
  let n: number | undefined;
  if (nText !== null && nText !== '') {
    if (!/^\d{1,9}$/.test(nText)) throw new RegistryError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400, detail: { n: nText } });
    n = Number(nText);
  }
  const lastText = query.get('last');
  const last = lastText ? parseDigest(lastText).value : undefined;
  const artifactTypes = [...new Set(query.getAll('artifactType').filter((t) => t !== ''))];
  if (artifactTypes.length > MAX_ARTIFACT_TYPES || artifactTypes.some((t) => t.length > MAX_ARTIFACT_TYPE_LENGTH)) {
    throw new RegistryError('UNSUPPORTED', `at most ${MAX_ARTIFACT_TYPES} artifactType filters of at most ${MAX_ARTIFACT_TYPE_LENGTH} characters`, { status: 400 });
  }
  return { artifactTypes, n, last };
}
