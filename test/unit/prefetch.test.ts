// Layer prefetch, the pure parts (issue 15): what of a manifest is prefetched, how the
// setting resolves per upstream, and the Prefetcher's bounds with scripted downloads (the
// HTTP behaviour is in test/integration/prefetch.test.ts).
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { DownloadLimiter } from '../../src/cache/download-limiter.js';
import type { BlobDownload } from '../../src/cache/downloads.js';
import { buildConfig } from '../../src/config.js';
import type { PrefetchRefusal } from '../../src/core/blob-service.js';
import { prefetchPlan, Prefetcher } from '../../src/core/prefetch.js';
import { MirrorMetrics } from '../../src/metrics.js';
import { parseManifest } from '../../src/oci/manifest.js';
import type { Route } from '../../src/upstream/selector.js';
import { deferred } from '../fixtures/wait.js';

const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
const manifest = (doc: object) => parseManifest(Buffer.from(JSON.stringify(doc)));
const image = (layers: object[]) =>
  manifest({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d(1), size: 10 }, layers });
const layer = (n: number, size = 100, mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip') => ({ mediaType, digest: d(n), size });

describe('prefetchPlan', () => {
  it('an image manifest: its config first, then its layers in order, each digest once', () => {
    const plan = prefetchPlan(image([layer(2), layer(3), layer(2)]), 1000);
    expect(plan.blobs.map((b) => [b.digest.value, b.size])).toEqual([[d(1), 10], [d(2), 100], [d(3), 100]]);
    expect(plan.skipped).toEqual([]);
  });

  it('an index names nothing to prefetch (only the platform manifest a client asks for does)', () => {
    const index = manifest({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d(9), size: 500, platform: { os: 'linux', architecture: 'amd64' } }] });
    expect(prefetchPlan(index, 1000)).toEqual({ blobs: [], skipped: [] });
  });

  it('skips blobs above maxBlobSize, without a size, not distributable by the registry, or with a bad digest', () => {
    const plan = prefetchPlan(
      image([layer(2, 5000), { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d(3) }, layer(4, 100, 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip'), layer(5, 100, 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip'), { mediaType: 'x', digest: 'md5:abc', size: 1 }, layer(6)]),
      1000,
    );
    expect(plan.blobs.map((b) => b.digest.value)).toEqual([d(1), d(6)]);
    expect(plan.skipped).toEqual([
      { digest: d(2), reason: 'too-big' },
      { digest: d(3), reason: 'unknown-size' },
      { digest: d(4), reason: 'not-distributable' },
      { digest: d(5), reason: 'not-distributable' },
      { digest: 'md5:abc', reason: 'invalid-digest' },
    ]);
  });
});

describe('the prefetch setting', () => {
  it('is on by default, 3 at once; per upstream, unset fields inherit the top level', () => {
    const c = buildConfig(
      {
        prefetch: { concurrency: 5 },
        upstreams: { 'docker.io': { url: 'https://registry-1.docker.io' }, 'ghcr.io': { url: 'https://ghcr.io', prefetch: false }, 'quay.io': { url: 'https://quay.io', prefetch: { maxQueued: 7 } } },
      },
      {},
    );
    const of = (name: string) => c.upstreams.find((u) => u.name === name)!.prefetch;
    expect(of('docker.io')).toEqual({ enabled: true, concurrency: 5, maxQueued: 256 });
    expect(of('ghcr.io')).toEqual({ enabled: false, concurrency: 5, maxQueued: 256 });
    expect(of('quay.io')).toEqual({ enabled: true, concurrency: 5, maxQueued: 7 });
    expect(buildConfig({}, {}).upstreams[0]!.prefetch).toEqual({ enabled: true, concurrency: 8, maxQueued: 256 });
    expect(buildConfig({ prefetch: false }, {}).upstreams[0]!.prefetch.enabled).toBe(false);
  });
});

describe('Prefetcher', () => {
  /** Scripted downloads: each started one waits for the test to finish it. */
  function setup(settings: { concurrency: number; maxQueued: number }, limits = { maxConcurrent: 0, maxQueued: 10, queueTimeoutMs: 10_000 }) {
    const route = { upstream: { name: 'u', prefetch: { enabled: true, ...settings } }, repository: 'r' } as unknown as Route;
    const limiter = new DownloadLimiter(limits);
    const running = new Map<string, { finish(): void; release(): void }>();
    const started: string[] = [];
    const metrics = new MirrorMetrics();
    const prefetcher = new Prefetcher({
      limiter,
      metrics,
      logger: pino({ level: 'silent' }),
      maxBlobSize: 1e9,
      blobs: {
        async prefetch(_route, digest, _size, release): Promise<BlobDownload | PrefetchRefusal> {
          if (digest.value === d(99)) return 'cached';
          const done = deferred();
          started.push(digest.value);
          running.set(digest.value, { finish: () => (release(), done.resolve()), release });
          return { finished: done.promise } as unknown as BlobDownload;
        },
      },
    });
    const settle = () => new Promise((r) => setTimeout(r, 0));
    const skipped = async (reason: string) => (await metrics.prefetchSkipped.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;
    return { route, limiter, running, started, prefetcher, settle, skipped };
  }

  it('runs at most `concurrency` per upstream; the next starts when one ends; past maxQueued they are dropped', async () => {
    const t = setup({ concurrency: 2, maxQueued: 3 });
    t.prefetcher.manifestFetched(t.route, image([layer(2), layer(3), layer(4), layer(5), layer(6)]));
    await t.settle();
    // 6 blobs: 2 run, 3 wait, 1 dropped.
    expect(t.started).toEqual([d(1), d(2)]);
    expect(await t.skipped('queue-full')).toBe(1);
    t.running.get(d(1))!.finish();
    await t.settle();
    await t.settle();
    expect(t.started).toEqual([d(1), d(2), d(3)]);
    for (const digest of [d(2), d(3)]) t.running.get(digest)!.finish();
    await t.settle();
    await t.settle();
    expect(t.started).toEqual([d(1), d(2), d(3), d(4), d(5)]);
  });

  it('never queues for a global slot: with none free it waits, and starts when a client download leaves one free', async () => {
    const t = setup({ concurrency: 3, maxQueued: 10 }, { maxConcurrent: 1, maxQueued: 10, queueTimeoutMs: 10_000 });
    const client = await t.limiter.acquire();
    t.prefetcher.manifestFetched(t.route, image([layer(2)]));
    await t.settle();
    expect(t.started).toEqual([]);
    // Nobody took a place in the clients' queue.
    expect(t.limiter.queued).toBe(0);
    client();
    await t.settle();
    expect(t.started).toEqual([d(1)]);
    // One slot, held by the prefetch: the second waits again until it is released.
    t.running.get(d(1))!.finish();
    await t.settle();
    await t.settle();
    expect(t.started).toEqual([d(1), d(2)]);
  });

  it('a blob it need not fetch (cached) gives its global slot back at once', async () => {
    const t = setup({ concurrency: 1, maxQueued: 10 }, { maxConcurrent: 1, maxQueued: 10, queueTimeoutMs: 10_000 });
    const cachedConfig = manifest({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d(99), size: 10 }, layers: [layer(2)] });
    t.prefetcher.manifestFetched(t.route, cachedConfig);
    await t.settle();
    await t.settle();
    expect(t.started).toEqual([d(2)]);
    expect(t.limiter.active).toBe(1);
    t.running.get(d(2))!.finish();
    expect(t.limiter.active).toBe(0);
  });

  it('prefetches nothing when the upstream has it off, nor after close', async () => {
    const t = setup({ concurrency: 2, maxQueued: 3 });
    const off = { ...t.route, upstream: { ...t.route.upstream, name: 'u', prefetch: { enabled: false, concurrency: 2, maxQueued: 3 } } } as unknown as Route;
    t.prefetcher.manifestFetched(off, image([layer(2)]));
    t.prefetcher.close();
    t.prefetcher.manifestFetched(t.route, image([layer(2)]));
    await t.settle();
    expect(t.started).toEqual([]);
  });
});
