import type { Mirror } from '../../mirror.js';
import { RegistryError } from '../../oci/errors.js';
import type { RequestContext } from '../request-context.js';

/** GET /v2/_catalog?n=&last= — the repositories the mirror holds; off with `catalog: false`. */
export function handleCatalog(mirror: Mirror, ctx: RequestContext): void {
  if (!mirror.config.catalog) throw new RegistryError('UNSUPPORTED', 'the catalog is turned off on this mirror', { status: 404 });
  const nText = ctx.query.get('n');
  let n: number | undefined;
  if (nText !== null && nText !== '') {
    if (!/^\d+$/.test(nText)) throw new RegistryError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400, detail: { n: nText } });
    n = Number(nText);
  }
  const last = ctx.query.get('last') || undefined;
  const page = mirror.catalog(n, last);
  const body = JSON.stringify({ repositories: page.repositories });
  const { res } = ctx;
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  if (page.next !== undefined) {
    const params = new URLSearchParams();
    if (n !== undefined) params.set('n', String(n));
    params.set('last', page.next);
    res.setHeader('Link', `</v2/_catalog?${params}>; rel="next"`);
  }
  ctx.bytes = Buffer.byteLength(body);
  res.end(ctx.req.method === 'HEAD' ? undefined : body);
}
