// Replicas that share the work: the owner of a digest on the consistent-hash ring
// downloads it from the upstream once for the whole cluster; the other replicas read it
// from the owner (verified again, like any download) and ask the upstream themselves when
// the owner cannot be reached.

import { Agent, request } from 'undici';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { DownloadSource } from '../cache/download-source.js';
import type { Config } from '../config.js';
import { readLimited } from '../http/body.js';
import { parseContentLength, parseContentRange } from '../http/headers.js';
import { parseErrorBody, RegistryError } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import type { Route } from '../upstream/selector.js';
import { PEER_HEADER, signPeerRequest } from './peer-auth.js';
import { HashRing } from './ring.js';

export { PEER_HEADER } from './peer-auth.js';

/** An owner's error body is a small JSON envelope. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

export class Peers {
  private readonly ring: HashRing;
  private readonly agent: Agent;

  constructor(
    private readonly cluster: NonNullable<Config['cluster']>,
    timeouts: Config['timeouts'],
    private readonly logger: Logger,
    private readonly clock: Clock,
  ) {
    this.ring = new HashRing(cluster.peers);
    this.agent = new Agent({ connect: { timeout: 2000 }, headersTimeout: timeouts.headersMs, bodyTimeout: timeouts.bodyIdleMs });
  }

  /** The replica that should download `digest` from the upstream, when it is another one. */
  ownerOf(digest: Digest): string | undefined {
    const owner = this.ring.owner(digest.value);
    return owner && owner !== this.cluster.self ? owner : undefined;
  }

  /**
   * Read a blob from the replica that owns it. If the owner cannot be reached or fails,
   * this replica reads from `fallback` (the upstream) rather than fail the client.
   */
  source(owner: string, route: Route, digest: Digest, fallback: DownloadSource): DownloadSource {
    let useUpstream = false;
    const url = `${owner}/v2/${route.repository}/blobs/${digest.value}?ns=${encodeURIComponent(route.upstream.name)}`;
    const signed = new URL(url);
    // Signed afresh for every request (a resumed download may come much later). Without a
    // secret (only allowed on loopback without client auth) the mark only says "do not ask
    // the owner again".
    const mark = () => (this.cluster.secret === undefined ? '1' : signPeerRequest(this.cluster.secret, 'GET', signed.pathname + signed.search, this.clock.now()));
    return {
      segments: 1,
      open: async (offset, signal) => {
        if (!useUpstream) {
          try {
            const headers: Record<string, string> = { [PEER_HEADER]: mark() };
            if (offset > 0) headers.range = `bytes=${offset}-`;
            const res = await request(url, { method: 'GET', dispatcher: this.agent, headers, signal });
            if (res.statusCode === 200 && offset === 0) return { body: res.body, totalSize: parseContentLength(res.headers) };
            const range = parseContentRange(res.headers);
            if (res.statusCode === 206 && range && range.total !== undefined && range.start === offset) return { body: res.body, totalSize: range.total };
            // The owner's 404 is the upstream's: say so rather than ask again. Only an error
            // body is read, and only so much of it.
            if (res.statusCode === 404) {
              const text = await readLimited(res.body, MAX_ERROR_BODY_BYTES).then((b) => b.toString('utf8'), () => '');
              throw new RegistryError('BLOB_UNKNOWN', `blob unknown to upstream ${route.upstream.name}`, { detail: { via: owner, upstreamError: parseErrorBody(text)[0] } });
            }
            // Anything else (a whole blob for a resume, a 5xx) is not read: the connection goes.
            res.body.destroy();
            throw new Error(`peer ${owner} answered ${res.statusCode}${res.statusCode === 200 ? ' (the whole blob) to a range request' : ''}`);
          } catch (err) {
            if (err instanceof RegistryError || signal?.aborted) throw err;
            this.logger.warn({ digest: digest.value, peer: owner, err: (err as Error).message }, 'peer unavailable; fetching from the upstream instead');
            useUpstream = true;
          }
        }
        return fallback.open(offset, signal);
      },
    };
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }
}
