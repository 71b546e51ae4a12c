// The HTTP face: node:http (or https), one handler per registry concept, the OCI error
// envelope rendered in one place, a request id and one access-log line per request,
// and graceful shutdown.

import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { RegistryError } from '../oci/errors.js';
import type { Mirror } from '../mirror.js';
import { NegativeAnswer } from '../core/results.js';
import { PEER_HEADER, verifyPeerRequest } from '../cluster/peer-auth.js';
import { handleBlob } from './handlers/blobs.js';
import { handleCatalog } from './handlers/catalog.js';
import { handleManifest } from './handlers/manifests.js';
import { handleReferrers } from './handlers/referrers.js';
import { handleTags } from './handlers/tags.js';
import { matchApiPath } from './api-paths.js';
import { ServerRequestContext, type RequestContext } from './request-context.js';
import { HtpasswdAuth } from './client-auth.js';
import { renderStatusPage, statusData, type RecentPull } from './status-page.js';
import { TrustedProxies } from '../http/forwarded.js';
import { openEventSinks, type EventSinks } from '../events/sinks.js';
import { PullTracker, pullEvent } from './pull-events.js';
import { recordSaving } from './savings.js';

const API_VERSION_HEADER = 'Docker-Distribution-API-Version';
const READ_METHODS = new Set(['GET', 'HEAD']);
/** Which worker process answered (`workers: N`). */
const WORKER_HEADER = 'X-Mirror-Worker';

export interface MirrorServer {
  server: http.Server;
  url: string;
  /** Stop accepting, let in-flight responses finish until the deadline, then close. */
  close(deadlineMs?: number): Promise<void>;
  /** SIGHUP: TLS certificate and htpasswd file. */
  reload(): void;
}

interface ServerState {
  shuttingDown: boolean;
  auth: HtpasswdAuth | undefined;
  recent: RecentPull[];
  proxies: TrustedProxies;
  pulls: PullTracker;
  events: EventSinks | undefined;
}

/** How long shutdown waits for buffered pull events to be delivered. */
const EVENTS_CLOSE_MS = 5000;

export async function startServer(mirror: Mirror, listen = mirror.config.listen): Promise<MirrorServer> {
  const tls = mirror.config.tls;
  const state: ServerState = {
    shuttingDown: false,
    auth: mirror.config.auth ? new HtpasswdAuth(mirror.config.auth.htpasswd, mirror.config.auth.realm) : undefined,
    recent: [],
    proxies: new TrustedProxies(mirror.config.trustedProxies),
    pulls: new PullTracker(mirror.clock),
    events: openEventSinks(mirror.config.events, { metrics: mirror.metrics, logger: mirror.logger }),
  };
  // A worker of several (`workers: N`): its id on every response, its readiness for the primary's /readyz.
  const workerId = mirror.siblings?.id.toString();
  mirror.siblings?.answerReadiness(async () => (state.shuttingDown ? 'shutting down' : mirror.readiness()));
  const handler = (req: IncomingMessage, res: ServerResponse) => void handleRequest(mirror, req, res, state, workerId);
  const server = tls
    ? https.createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler)
    : http.createServer(handler);
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 70_000;
  // Long blob downloads to slow clients are normal: no overall request timeout.
  server.requestTimeout = 0;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `${tls ? 'https' : 'http'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${address.port}`;

  return {
    server,
    url,
    reload() {
      state.auth?.reload();
      state.events?.reopen();
      if (tls && server instanceof https.Server) server.setSecureContext({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) });
    },
    async close(deadlineMs = 10_000) {
      state.shuttingDown = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), deadlineMs);
      await closed;
      clearTimeout(timer);
      await state.auth?.close();
      await state.events?.close(EVENTS_CLOSE_MS);
    },
  };
}

/**
 * A request from another replica: it skips client auth and is not sent on to the digest's
 * owner. With a secret, only a valid signature of this very request makes it one; anything
 * else is an ordinary client's request. Without a secret (the config allows that only on a
 * loopback address without client auth) the mark only stops forwarding loops.
 */
function isPeerRequest(mirror: Mirror, req: IncomingMessage, state: ServerState): boolean {
  const cluster = mirror.config.cluster;
  const mark = req.headers[PEER_HEADER];
  if (!cluster || mark === undefined) return false;
  if (cluster.secret === undefined) return state.auth === undefined;
  return verifyPeerRequest(mark, cluster.secret, req.method ?? 'GET', req.url ?? '/', mirror.clock.now());
}

let requestCounter = 0;
const requestPrefix = process.pid.toString(36);

async function handleRequest(mirror: Mirror, req: IncomingMessage, res: ServerResponse, state: ServerState, workerId: string | undefined): Promise<void> {
  const rawUrl = req.url ?? '/';
  const q = rawUrl.indexOf('?');
  const path = q >= 0 ? rawUrl.slice(0, q) : rawUrl;
  const fromPeer = isPeerRequest(mirror, req, state);
  const id = `${requestPrefix}-${(++requestCounter).toString(36)}`;
  // Every response's own headers, as name/value pairs: set on the response when a handler
  // starts answering (or an error does), or passed whole to the manifest hit's one writeHead.
  const common = ['X-Request-Id', id];
  if (workerId) common.push(WORKER_HEADER, workerId);
  if (state.shuttingDown) common.push('Connection', 'close');
  const ctx = new ServerRequestContext(
    req,
    res,
    id,
    common,
    performance.now(),
    path,
    q >= 0 ? rawUrl.slice(q + 1) : '',
    fromPeer,
    // A peer replica forwards its own clients' misses: they were counted there.
    fromPeer ? undefined : state.proxies.clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for']),
  );
  res.once('close', () => accessLog(mirror, ctx, state));
  try {
    await dispatch(mirror, ctx, state);
  } catch (err) {
    sendError(mirror, ctx, err);
  }
}

async function dispatch(mirror: Mirror, ctx: RequestContext, state: ServerState): Promise<void> {
  const { req, res } = ctx;
  // The manifest handler passes the common headers to its writeHead itself: no setHeader
  // bookkeeping on the hottest path (Node then takes writeHead's fast path).
  if (!ctx.path.includes('/manifests/')) setCommonHeaders(ctx);
  checkFraming(req, res);
  if (ctx.path === '/healthz') return sendText(res, 200, 'ok\n');
  if (ctx.path === '/readyz') {
    // With workers, ready only when every worker is (the primary asks them all).
    const problem = state.shuttingDown ? 'shutting down' : mirror.siblings ? await mirror.siblings.clusterReadiness() : await mirror.readiness();
    return sendText(res, problem ? 503 : 200, `${problem ?? 'ready'}\n`);
  }
  if (ctx.path === '/metrics') {
    // With workers, the whole mirror's: every worker's registry aggregated by the primary.
    const scrape = mirror.siblings
      ? await mirror.siblings.clusterMetrics()
      : { contentType: mirror.metrics.registry.contentType, text: await mirror.metrics.registry.metrics() };
    res.writeHead(200, { 'Content-Type': scrape.contentType });
    res.end(scrape.text);
    return;
  }
  if (state.auth && !ctx.fromPeer && (ctx.path.startsWith('/v2') || ctx.path === '/' || ctx.path === '/status.json')) {
    const result = await state.auth.check(req.headers.authorization);
    if (!result.ok) {
      // Never the password: the user name and why.
      mirror.logger.warn({ reqId: ctx.id, user: result.user, reason: result.reason, remote: req.socket.remoteAddress }, 'client authentication failed');
      ctx.registryApi = true;
      if (result.busy) throw new RegistryError('TOOMANYREQUESTS', 'too many password checks in progress; try again shortly', { headers: { 'retry-after': '1' } });
      throw new RegistryError('UNAUTHORIZED', 'authentication required', { headers: { 'www-authenticate': state.auth.challenge } });
    }
    ctx.user = result.user;
  }
  if (ctx.path === '/' || ctx.path === '/status.json') {
    const data = statusData(mirror, state.recent);
    const body = ctx.path === '/' ? renderStatusPage(data) : JSON.stringify(data);
    res.writeHead(200, { 'Content-Type': ctx.path === '/' ? 'text/html; charset=utf-8' : 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
    return;
  }
  const api = matchApiPath(ctx.path);
  if (api.kind === 'unknown') throw new RegistryError('NAME_UNKNOWN', 'no such API endpoint', { status: 404, detail: { path: ctx.path } });
  ctx.registryApi = true;
  if (api.kind !== 'manifest') res.setHeader(API_VERSION_HEADER, 'registry/2.0');
  if (!READ_METHODS.has(req.method ?? '') || api.kind === 'upload') {
    throw new RegistryError('UNSUPPORTED', 'this is a read-only pull-through mirror: pushes and deletes are not supported', {
      headers: { allow: 'GET, HEAD' },
      detail: { method: req.method },
    });
  }
  switch (api.kind) {
    case 'base':
      // Clients' credentials (dockerd sends the user's Docker Hub login) are accepted and ignored.
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': '2' });
      res.end(req.method === 'HEAD' ? undefined : '{}');
      return;
    case 'manifest':
      return handleManifest(mirror, ctx, api.name, api.reference);
    case 'blob':
      return handleBlob(mirror, ctx, api.name, api.digest);
    case 'tags':
      return handleTags(mirror, ctx, api.name);
    case 'catalog':
      return handleCatalog(mirror, ctx);
    case 'referrers':
      return handleReferrers(mirror, ctx, api.name, api.digest);
  }
}

/**
 * Requests Node's parser lets through that RFC 9112 says to refuse: another HTTP major
 * version (an `HTTP/2.0` or HTTP/0.9 request line on this socket) and a Transfer-Encoding
 * whose last coding is not chunked (the body's length cannot be known). 400, and the
 * connection is closed: what follows on it cannot be trusted to be a request.
 */
function checkFraming(req: IncomingMessage, res: ServerResponse): void {
  const te = req.headers['transfer-encoding'];
  const badVersion = req.httpVersionMajor !== 1;
  if (!badVersion && (te === undefined || /(?:^|,)\s*chunked\s*$/i.test(te))) return;
  res.setHeader('Connection', 'close');
  throw new RegistryError('UNSUPPORTED', badVersion ? `HTTP/${req.httpVersion} is not supported` : `Transfer-Encoding "${te}" cannot be framed`, { status: 400 });
}

/** The common headers (request id, worker, API version) on the response, for handlers that set headers one by one. */
function setCommonHeaders(ctx: RequestContext): void {
  const { res, commonHeaders } = ctx;
  for (let i = 0; i < commonHeaders.length; i += 2) res.setHeader(commonHeaders[i]!, commonHeaders[i + 1]!);
  if (ctx.registryApi) res.setHeader(API_VERSION_HEADER, 'registry/2.0');
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(mirror: Mirror, ctx: RequestContext, err: unknown): void {
  const { res } = ctx;
  let error: RegistryError;
  // A remembered upstream 404 answered without asking: its own outcome in the log and metrics.
  if (err instanceof NegativeAnswer) ctx.outcome = err.outcome;
  if (err instanceof RegistryError) error = err;
  else {
    mirror.logger.error({ reqId: ctx.id, err }, 'internal error');
    error = new RegistryError('UNKNOWN', 'internal error in the mirror', { detail: { reqId: ctx.id } });
  }
  if (res.headersSent) {
    // Mid-body: the only honest signal left is to cut the connection.
    res.destroy(error);
    return;
  }
  const body = JSON.stringify(error.toJSON());
  setCommonHeaders(ctx);
  res.statusCode = error.status;
  for (const [k, v] of Object.entries(error.headers)) res.setHeader(k, v);
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(ctx.req.method === 'HEAD' ? undefined : body);
}

function accessLog(mirror: Mirror, ctx: RequestContext, state: ServerState): void {
  const ms = Math.round((performance.now() - ctx.started) * 100) / 100;
  const status = ctx.res.statusCode;
  const complete = ctx.res.writableFinished;
  const route = routeLabel(ctx.path);
  mirror.metrics.countRequest(route, status, ctx.outcome ?? 'none');
  const pull = route === 'manifest' ? state.pulls.observe(ctx, status) : undefined;
  if (pull && state.events) state.events.publish(pullEvent(ctx, pull, status, mirror.clock.now()));
  recordSaving(mirror, ctx, route, pull);
  if (ctx.outcome && ctx.upstream && ctx.repository) {
    // An error (a remembered 404) is no pull: kept out of the repository stats, which names
    // clients make up would otherwise grow.
    if (status < 400) mirror.index.recordRequest(ctx.upstream, ctx.repository, ctx.outcome, ctx.bytes, route === 'manifest' && ctx.req.method === 'GET', mirror.clock.now());
    if (route === 'manifest' && ctx.req.method !== 'OPTIONS') {
      const reference = ctx.path.slice(ctx.path.lastIndexOf('/') + 1);
      state.recent.push({ at: mirror.clock.now(), upstream: ctx.upstream, repository: ctx.repository, reference, outcome: ctx.outcome, status });
      if (state.recent.length > 20) state.recent.shift();
    }
  }
  if (!mirror.config.log.access) return;
  mirror.logger.info(
    {
      reqId: ctx.id,
      method: ctx.req.method,
      path: ctx.path,
      ns: ctx.rawQuery ? ctx.query.get('ns') ?? undefined : undefined,
      status,
      outcome: ctx.outcome,
      upstream: ctx.upstream,
      repository: ctx.repository,
      bytes: ctx.bytes,
      ms,
      aborted: complete ? undefined : true,
    },
    'request',
  );
}

function routeLabel(path: string): string {
  if (path.startsWith('/v2/')) {
    if (path.includes('/manifests/')) return 'manifest';
    if (path.includes('/blobs/')) return 'blob';
    if (path.endsWith('/tags/list')) return 'tags';
    if (path.includes('/referrers/')) return 'referrers';
    if (path === '/v2/_catalog') return 'catalog';
    return 'base';
  }
  return path === '/metrics' || path === '/healthz' || path === '/readyz' ? path.slice(1) : 'other';
}
