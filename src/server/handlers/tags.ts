import type { Mirror } from '../../mirror.js';
import { RegistryError } from '../../oci/errors.js';
import { isValidTag } from '../../oci/reference.js';
import type { RequestContext } from '../request-context.js';
import { selectUpstream } from './select-upstream.js';

/** GET /v2/<name>/tags/list?n=&last= — from the upstream, or the tags we know when it cannot answer. */
export async function handleTags(mirror: Mirror, ctx: RequestContext, name: string): Promise<void> {
  const route = selectUpstream(mirror, ctx, name);
  const nText = ctx.query.get('n');
  let n: number | undefined;
  if (nText !== null && nText !== '') {
    if (!/^\d+$/.test(nText)) throw new RegistryError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400, detail: { n: nText } });
    n = Number(nText);
  }
  const last = ctx.query.get('last') ?? undefined;
  if (last !== undefined && last !== '' && !isValidTag(last)) {
    throw new RegistryError('UNSUPPORTED', 'last must be a tag', { status: 400, detail: { last } });
  }
  // Anything else but ns (an upstream's page token, Quay's next_page) goes to the upstream as is.
  const forward = [...ctx.query].filter(([k]) => k !== 'n' && k !== 'last' && k !== 'ns');
  const list = await mirror.listTags(route, name, { n, last: last || undefined, forward }, { client: ctx.client });
  ctx.outcome = list.outcome;
  const body = JSON.stringify({ name: list.name, tags: list.tags });
  const { res } = ctx;
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  if (list.next !== undefined) {
    // RFC 8288, aimed at the mirror whoever paged: the client's next request comes here.
    const params = new URLSearchParams(list.next);
    const ns = ctx.query.get('ns');
    if (ns) params.set('ns', ns);
    res.setHeader('Link', `</v2/${name}/tags/list?${params}>; rel="next"`);
  }
  ctx.bytes = Buffer.byteLength(body);
  res.end(ctx.req.method === 'HEAD' ? undefined : body);
}
