// One request as it passes through the server: what the handlers read and what they set
// for the access log.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { CacheOutcome } from '../core/results.js';

export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  id: string;
  /** Headers every response carries (request id, worker id, Connection: close when draining), as name/value pairs. */
  commonHeaders: string[];
  /** A registry API path: the response carries Docker-Distribution-API-Version. */
  registryApi: boolean;
  started: number;
  path: string;
  /** The raw query string ('' when none); parsed on first use. */
  rawQuery: string;
  readonly query: URLSearchParams;
  /** Set by handlers for the access log. */
  outcome?: CacheOutcome;
  upstream?: string;
  repository?: string;
  bytes: number;
  /** A request from another replica of this cluster (it must not be forwarded again). */
  fromPeer: boolean;
  /**
   * The client's address (from X-Forwarded-For when the peer is a trusted proxy), whose budget
   * of upstream misses its cold requests spend; none for a peer.
   */
  client: string | undefined;
  /** The authenticated user, when client auth is on. */
  user?: string;
  /** Set by the manifest handler: what was answered (pull events). */
  manifest?: { digest: string; mediaType: string; bytes: Buffer };
}

/**
 * The server's RequestContext. A class, not an object literal: a getter written in a literal
 * is a new closure per request, and V8 then gives each context its own hidden class (kept in
 * old space), which holds the request's whole object graph through young-generation
 * collections: under load a quarter of what each request allocated was promoted, the old
 * space grew to four times its live size between full collections, and a worker's RSS with
 * it. On the prototype the getter is shared and every context has the same shape.
 */
export class ServerRequestContext implements RequestContext {
  outcome?: CacheOutcome;
  upstream?: string;
  repository?: string;
  bytes = 0;
  user?: string;
  manifest?: { digest: string; mediaType: string; bytes: Buffer };
  registryApi = false;
  private parsedQuery: URLSearchParams | undefined = undefined;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly id: string,
    readonly commonHeaders: string[],
    readonly started: number,
    readonly path: string,
    readonly rawQuery: string,
    readonly fromPeer: boolean,
    readonly client: string | undefined,
  ) {}

  get query(): URLSearchParams {
    this.parsedQuery ??= new URLSearchParams(this.rawQuery);
    return this.parsedQuery;
  }
}
