// What the mirror saved its upstreams (issue 15, item 7): real pulls (skopeo) through the
// mirror from the real upstream; /status.json and /metrics say how many upstream bytes and
// pulls the second pull did not cost, per UTC day, and the days survive a restart.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { StatusData } from '../../src/server/status-page.js';
import { get } from '../fixtures/http-client.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';

const DAY = 86_400_000;
let upstream: RealUpstream;
let content: SeededContent;
const work = mkdtempSync(join(tmpdir(), 'savings-'));
let copies = 0;

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function pull(mirror: TestMirror, ref: string): Promise<void> {
  await skopeoCopy(`docker://${mirror.host}/${ref}`, `dir:${join(work, `copy-${++copies}`)}`, ['--override-arch', 'amd64', '--override-os', 'linux']);
}

async function status(mirror: TestMirror): Promise<StatusData> {
  const res = await get(`${mirror.url}/status.json`);
  expect(res.status).toBe(200);
  return JSON.parse(res.body.toString()) as StatusData;
}

function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (wanted.every((w) => line.includes(w))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('what the mirror saved', () => {
  it('a second pull of an image saves its blob bytes and one pull; the days survive a restart', async () => {
    const clock = new ManualClock(Date.UTC(2026, 2, 10, 12));
    const storage = join(work, 'storage');
    const app = content.app.content;
    const blobBytes = app.config.size + app.layers.reduce((n, l) => n + l.size, 0);
    let mirror = await startMirror({ upstreamUrl: upstream.url, storage, clock });
    try {
      await pull(mirror, 'team/app:v1');
      const cold = await status(mirror);
      expect(cold.saved.today.bytes).toBe(0);
      expect(upstream.count({ kind: 'blob' })).toBeGreaterThanOrEqual(app.layers.length + 1);

      upstream.resetCounts();
      await pull(mirror, 'team/app:v1');
      // The second pull cost the upstream nothing…
      expect(upstream.count({ kind: 'blob' })).toBe(0);
      expect(upstream.count({ method: 'GET', kind: 'manifest' })).toBe(0);
      // …and the mirror says so: every blob byte of it, and its pull.
      const warm = await status(mirror);
      expect(warm.saved.today.day).toBe('2026-03-10');
      expect(warm.saved.today.bytes).toBe(blobBytes);
      expect(warm.saved.today.pulls).toBeGreaterThanOrEqual(1);
      expect(warm.saved.today.byReason.cache?.bytes).toBe(blobBytes);
      expect(warm.saved.today.byReason['tag-fresh']?.pulls).toBe(1);
      expect(warm.saved.last30Days).toEqual({ bytes: warm.saved.today.bytes, pulls: warm.saved.today.pulls });
      expect(warm.saved.daily).toHaveLength(30);
      expect(warm.saved.daily.at(-1)).toEqual({ day: '2026-03-10', bytes: blobBytes, pulls: warm.saved.today.pulls });
      expect(warm.saved.byUpstream).toEqual([{ upstream: 'docker.io', bytes: blobBytes, pulls: warm.saved.today.pulls }]);
      // Each upstream's pulls left (the fixture counts down from 5000 on manifest GETs), in the
      // shape per-credential entries will take.
      expect(warm.pullQuota).toEqual([{ upstream: 'docker.io', credential: 'anonymous', remaining: expect.any(Number), limit: 5000, updatedAt: '2026-03-10T12:00:00.000Z' }]);
      expect(warm.pullQuota[0]!.remaining).toBeLessThan(5000);
      const metrics = (await get(`${mirror.url}/metrics`)).body.toString();
      expect(metricValue(metrics, 'mirror_saved_bytes_total', { upstream: 'docker.io' })).toBe(blobBytes);
      expect(metricValue(metrics, 'mirror_saved_bytes_total', { reason: 'cache' })).toBe(blobBytes);
      expect(metricValue(metrics, 'mirror_saved_pulls_total', { upstream: 'docker.io', reason: 'tag-fresh' })).toBe(1);

      // A multi-arch image: its index and its platform manifest are one pull, not two.
      await pull(mirror, 'library/alpine:3.19');
      const before = (await status(mirror)).saved.today.pulls;
      await pull(mirror, 'library/alpine:3.19');
      expect((await status(mirror)).saved.today.pulls).toBe(before + 1);
      const todayBytes = (await status(mirror)).saved.today.bytes;

      // The next day, after a restart: yesterday is still there, today starts at zero.
      await mirror.stop({ keepStorage: true });
      clock.advance(DAY);
      mirror = await startMirror({ upstreamUrl: upstream.url, storage, clock });
      const restarted = await status(mirror);
      expect(restarted.saved.today).toMatchObject({ day: '2026-03-11', bytes: 0, pulls: 0 });
      expect(restarted.saved.daily.at(-2)).toMatchObject({ day: '2026-03-10', bytes: todayBytes });
      await pull(mirror, 'team/app:v1');
      const nextDay = await status(mirror);
      expect(nextDay.saved.today.bytes).toBe(blobBytes);
      // A day later the tag was stale: checked with a HEAD (free on Docker Hub), still one pull saved.
      expect(nextDay.saved.today.byReason.revalidated?.pulls).toBe(1);
      expect(nextDay.saved.last30Days.bytes).toBe(todayBytes + blobBytes);
    } finally {
      await mirror.stop();
      rmSync(storage, { recursive: true, force: true });
    }
  });
});
