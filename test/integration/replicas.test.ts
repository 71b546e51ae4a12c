// Replicas with peers (issue 9): three mirrors on a consistent-hash ring in front of one real
// upstream. Cold pulls spread across the replicas fetch each blob from the upstream once per
// cluster, not once per replica; a replica that is down is routed around.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashRing } from '../../src/cluster/ring.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { bigLayer, buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { freePort, startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';

let upstream: RealUpstream;
let image: Image;
const replicas: TestMirror[] = [];
let urls: string[] = [];
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;


beforeAll(async () => {
  upstream = await startRealUpstream();
  image = buildImage({
    format: 'oci',
    layers: [await bigLayer(48 * 1024 * 1024, 'replicas-48'), ...Array.from({ length: 5 }, (_, i) => smallLayer([{ path: `r/${i}`, content: `replica layer ${i}\n` }]))],
  });
  await upstream.push('team/replicated', '1.0', image);
  const ports = await Promise.all([0, 1, 2].map(() => freePort()));
  urls = ports.map((p) => `http://127.0.0.1:${p}`);
  for (const [i, port] of ports.entries()) {
    replicas.push(
      await startMirror({
        upstreamUrl: upstream.url,
        document: { listen: `127.0.0.1:${port}`, cluster: { self: urls[i], peers: urls, secret: 'cluster-secret-replicas' } },
      }),
    );
  }
  upstream.resetCounts();
});

afterAll(async () => {
  for (const r of replicas) await r.stop().catch(() => undefined);
  await upstream?.stop();
});

describe('a replica set with peers', () => {
  it('spreads ownership of digests over the replicas', () => {
    const ring = new HashRing(urls);
    const owners = new Set([image.config, ...image.layers].map((b) => ring.owner(b.digest)));
    expect(owners.size).toBeGreaterThan(1);
  });

  it('20 concurrent cold pulls spread across three replicas make one upstream GET per blob', async () => {
    const blobs = [image.config, ...image.layers];
    const pulls = Array.from({ length: 20 }, async (_, i) => {
      const replica = replicas[i % replicas.length]!;
      const m = await get(`${replica.url}/v2/team/replicated/manifests/1.0`);
      expect(m.status).toBe(200);
      for (const blob of blobs) {
        const r = await get(`${replica.url}/v2/team/replicated/blobs/${blob.digest}`);
        expect(r.status).toBe(200);
        expect(sha(r.body)).toBe(blob.digest);
      }
    });
    await Promise.all(pulls);
    for (const blob of blobs) {
      expect([blob.digest, upstream.count({ kind: 'blob', method: 'GET', status: 200, path: new RegExp(blob.digest) })]).toEqual([blob.digest, 1]);
    }
  });

  it('a replica that is down is routed around: its blobs come from the upstream instead', async () => {
    const extra = smallLayer([{ path: 'down/owner', content: `owned by a stopped replica ${Date.now()}\n` }]);
    // Find a layer owned by replica 2, then stop replica 2.
    const ring = new HashRing(urls);
    let layer = extra;
    for (let i = 0; ring.owner(layer.digest) !== urls[2]; i++) layer = smallLayer([{ path: 'down/owner', content: `owned by a stopped replica ${i}\n` }]);
    await upstream.push('team/replicated', '2.0', buildImage({ format: 'oci', layers: [layer] }));
    await replicas[2]!.stop();
    const r = await get(`${replicas[0]!.url}/v2/team/replicated/blobs/${layer.digest}`);
    expect(r.status).toBe(200);
    expect(sha(r.body)).toBe(layer.digest);
    expect(replicas[0]!.logs.some((l) => l.msg === 'peer unavailable; fetching from the upstream instead')).toBe(true);
  });

});
