import type { Mirror } from '../../mirror.js';
import type { Route } from '../../upstream/selector.js';
import type { RequestContext } from '../request-context.js';

/** Select the upstream a request's repository name means (containerd's ?ns=, a host prefix, or the default). */
export function selectUpstream(mirror: Mirror, ctx: RequestContext, name: string): Route {
  const route = mirror.selector.select(name, ctx.rawQuery ? ctx.query.get('ns') : null);
  ctx.upstream = route.upstream.name;
  ctx.repository = route.repository;
  // The distribution spec's proxying section: a mirror that scopes by ns says so.
  if (route.namespace) ctx.res.setHeader('OCI-Namespace', route.namespace);
  return route;
}
