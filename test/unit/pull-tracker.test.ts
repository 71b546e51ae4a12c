// Which manifest requests start an image pull (pull-events.ts), on hand-made request contexts.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { PullTracker } from '../../src/server/pull-events.js';
import type { RequestContext } from '../../src/server/request-context.js';

const INDEX = 'application/vnd.oci.image.index.v1+json';
const IMAGE = 'application/vnd.oci.image.manifest.v1+json';
const d = (c: string) => `sha256:${c.repeat(64)}`;
const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: IMAGE, digest: d('a'), size: 1 }, { mediaType: IMAGE, digest: d('b'), size: 1 }] }));

function ctx(method: string, reference: string, served?: { digest: string; mediaType: string; bytes: Buffer }, client = '10.0.0.1'): RequestContext {
  return {
    req: { method } as RequestContext['req'], res: {} as RequestContext['res'], id: 'x', commonHeaders: [], registryApi: true, started: 0,
    path: `/v2/library/alpine/manifests/${reference}`, rawQuery: '', query: new URLSearchParams(), bytes: 0, fromPeer: false, client,
    upstream: 'docker.io', repository: 'library/alpine', manifest: served,
  };
}

describe('what starts an image pull', () => {
  it('a GET by tag; not the platform manifest GET that follows an index; a HEAD lends its tag to the GET of its digest', () => {
    const tracker = new PullTracker(new ManualClock());
    const served = { digest: d('i'), mediaType: INDEX, bytes: index };
    expect(tracker.observe(ctx('GET', '3.19', served), 200)).toEqual({ tag: '3.19', digest: d('i'), kind: 'index', byTag: true });
    expect(tracker.observe(ctx('GET', d('a'), { digest: d('a'), mediaType: IMAGE, bytes: Buffer.from('{}') }), 200)).toBeUndefined();
    // Another client asking for the same platform manifest starts its own pull (by digest).
    expect(tracker.observe(ctx('GET', d('a'), { digest: d('a'), mediaType: IMAGE, bytes: Buffer.from('{}') }, '10.0.0.2'), 200)).toMatchObject({ tag: undefined, digest: d('a'), kind: 'image' });
    // HEAD by tag, then GET by digest (dockerd, containerd).
    expect(tracker.observe(ctx('HEAD', 'edge', { digest: d('e'), mediaType: IMAGE, bytes: Buffer.from('{}') }, '10.0.0.3'), 200)).toBeUndefined();
    expect(tracker.observe(ctx('GET', d('e'), { digest: d('e'), mediaType: IMAGE, bytes: Buffer.from('{}') }, '10.0.0.3'), 200)).toEqual({ tag: 'edge', digest: d('e'), kind: 'image', byTag: false });
    // A failed GET still names what was asked for.
    expect(tracker.observe(ctx('GET', 'missing'), 404)).toEqual({ tag: 'missing', digest: undefined, kind: undefined, byTag: true });
    expect(tracker.observe(ctx('GET', d('f')), 404)).toEqual({ tag: undefined, digest: d('f'), kind: undefined, byTag: false });
  });

  it('remembers for a few minutes only', () => {
    const clock = new ManualClock();
    const tracker = new PullTracker(clock);
    tracker.observe(ctx('GET', '3.19', { digest: d('i'), mediaType: INDEX, bytes: index }), 200);
    clock.advance(6 * 60_000);
    // Much later, a GET of the platform manifest by digest is a pull of its own.
    expect(tracker.observe(ctx('GET', d('b'), { digest: d('b'), mediaType: IMAGE, bytes: Buffer.from('{}') }), 200)).toMatchObject({ tag: undefined, digest: d('b') });
  });
});
