import type { Mirror } from '../../mirror.js';
import type { Route } from '../../upstream/router.js';
import type { RequestContext } from '../app.js';

/** Route a request's repository name to its upstream (containerd's ?ns=, a host prefix, or the default). */
export function routeRequest(mirror: Mirror, ctx: RequestContext, name: string): Route {
  const route = mirror.router.route(name, ctx.rawQuery ? ctx.query.get('ns') : null);
  ctx.upstream = route.upstream.name;
  ctx.repository = route.repository;
  // The distribution spec's proxying section: a mirror that scopes by ns says so.
  if (route.namespace) ctx.res.setHeader('OCI-Namespace', route.namespace);
  return route;
}
