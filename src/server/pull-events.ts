// What one image pull is, seen from the manifest requests, and the event it produces
// ("who pulled what, when").
//
// A pull starts with one manifest GET: by tag (skopeo, podman), or by digest when that is
// the top-level request (dockerd and containerd resolve the tag with a HEAD first, then GET
// the digest; `docker pull repo@sha256:…`). A multi-arch pull then GETs the platform
// manifest by digest: that GET is part of the same pull, not a new one. So, per client
// (address and user) and repository, for a few minutes:
//   - a HEAD by tag remembers which tag its digest came from, so the GET of that digest
//     that follows is the pull's start and carries the tag;
//   - a GET of an index remembers its platform manifests, so their GETs start no pull.
// One event per pull, at its first manifest GET. Its bytes are that manifest's; the blobs
// pulled afterwards are not added up (out of scope: they would need the pull's end). A HEAD
// that is not followed by a GET (the client already has the image) is no pull. Docker Hub
// counts the same way: manifest GETs, an index and its platform manifest as one pull.

import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import { INDEX_MEDIA_TYPES } from '../oci/media-types.js';
import { parseManifest } from '../oci/manifest.js';
import type { RequestContext } from './request-context.js';

/** The start of an image pull: what it asked for and what it got. */
export interface PullStart {
  /** The tag the client asked for, or the one its earlier HEAD resolved to this digest. */
  tag: string | undefined;
  /** The manifest served (for a failed GET by digest: the digest asked for). */
  digest: string | undefined;
  kind: 'index' | 'image' | undefined;
  /** The GET named a tag (not a digest). */
  byTag: boolean;
}

/** One pull, as written to the events file and POSTed to the webhook. */
export interface PullEvent {
  time: string;
  client: string | null;
  user: string | null;
  upstream: string;
  repository: string;
  tag: string | null;
  digest: string | null;
  mediaType: string | null;
  kind: 'index' | 'image' | null;
  /** hit, miss, coalesced, revalidated, stale (negative, …), or error. */
  outcome: string;
  status: number;
  /** The manifest's bytes sent. */
  bytes: number;
  requestId: string;
}

/** How long a HEAD's tag and an index's platform manifests are remembered for the client's next GETs. */
const PULL_WINDOW_MS = 5 * 60_000;

type Mark = { tag: string } | 'platform';

export class PullTracker {
  private readonly marks: LRUCache<string, Mark>;
  /** An index's platform manifests, by the index's digest (immutable: parsed once). */
  private readonly platforms = new LRUCache<string, string[]>({ max: 1024 });

  constructor(clock: Clock, maxEntries = 20_000) {
    this.marks = new LRUCache({ max: maxEntries, ttl: PULL_WINDOW_MS, ttlAutopurge: false, perf: clock });
  }

  /** A manifest request was answered: the pull it starts, if it starts one. */
  observe(ctx: RequestContext, status: number): PullStart | undefined {
    if (ctx.fromPeer || !ctx.upstream || !ctx.repository) return undefined;
    const method = ctx.req.method;
    const reference = ctx.path.slice(ctx.path.lastIndexOf('/') + 1);
    const byTag = !reference.includes(':');
    const scope = `${ctx.client ?? ''}\u0000${ctx.user ?? ''}\u0000${ctx.upstream}\u0000${ctx.repository}\u0000`;
    const manifest = status === 200 ? ctx.manifest : undefined;
    if (method === 'HEAD') {
      if (byTag && manifest) this.marks.set(scope + manifest.digest, { tag: reference });
      return undefined;
    }
    if (method !== 'GET') return undefined;
    let tag = byTag ? reference : undefined;
    if (!byTag) {
      const mark = this.marks.get(scope + reference);
      if (mark === 'platform') return undefined;
      if (mark) tag = mark.tag;
    }
    let kind: PullStart['kind'];
    if (manifest) {
      kind = INDEX_MEDIA_TYPES.has(manifest.mediaType) ? 'index' : 'image';
      if (kind === 'index') for (const child of this.platformsOf(manifest)) this.marks.set(scope + child, 'platform');
    }
    return { tag, digest: manifest?.digest ?? (byTag ? undefined : reference), kind, byTag };
  }

  private platformsOf(manifest: { digest: string; mediaType: string; bytes: Buffer }): string[] {
    let children = this.platforms.get(manifest.digest);
    if (!children) {
      try {
        children = parseManifest(manifest.bytes, manifest.mediaType).manifests.map((d) => d.digest);
      } catch {
        children = [];
      }
      this.platforms.set(manifest.digest, children);
    }
    return children;
  }
}

export function pullEvent(ctx: RequestContext, pull: PullStart, status: number, at: number): PullEvent {
  return {
    time: new Date(at).toISOString(),
    client: ctx.client ?? null,
    user: ctx.user ?? null,
    upstream: ctx.upstream!,
    repository: ctx.repository!,
    tag: pull.tag ?? null,
    digest: pull.digest ?? null,
    mediaType: status === 200 ? ctx.manifest?.mediaType ?? null : null,
    kind: pull.kind ?? null,
    outcome: ctx.outcome ?? 'error',
    status,
    bytes: ctx.bytes,
    requestId: ctx.id,
  };
}
