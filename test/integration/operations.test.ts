// Operating it in production (issue 7): metrics, health, graceful shutdown, TLS with
// reload, client authentication, and the status page in a real browser.
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { pseudoRandomBytes, startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { deferred, waitFor } from '../fixtures/wait.js';

const MiB = 1024 * 1024;
let upstream: FakeUpstream;
const work = mkdtempSync(join(tmpdir(), 'ops-'));

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

function metricValue(text: string, name: string, labels: Record<string, string>): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (wanted.every((w) => line.includes(w))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('metrics and health', () => {
  let mirror: TestMirror;
  const clock = new ManualClock();
  afterAll(async () => {
    await mirror?.stop();
  });

  it('counters move as expected after a miss, a hit and a stale serve', async () => {
    mirror = await startMirror({ upstreamUrl: upstream.url, clock, ttl: '1m', document: { retries: { attempts: 0 } } });
    addTinyImage(upstream, 'team/metrics', 'v1', 'metrics');
    const scrape = async () => (await get(`${mirror.url}/metrics`)).body.toString();
    const url = `${mirror.url}/v2/team/metrics/manifests/v1`;
    const miss = await get(url);
    expect(miss.status).toBe(200);
    const hit = await get(url);
    expect(hit.status).toBe(200);
    clock.advance(2 * 60_000);
    upstream.fault = () => ({ status: 503 });
    const stale = await get(url);
    expect(stale.headers.warning).toBeDefined();
    upstream.fault = undefined;
    // Requests are counted when their response closes, with the access line.
    for (const r of [miss, hit, stale]) await mirror.accessFor(r.headers);
    const text = await scrape();
    expect(metricValue(text, 'mirror_http_requests_total', { route: 'manifest', outcome: 'miss' })).toBe(1);
    expect(metricValue(text, 'mirror_http_requests_total', { route: 'manifest', outcome: 'hit' })).toBe(1);
    expect(metricValue(text, 'mirror_http_requests_total', { route: 'manifest', outcome: 'stale' })).toBe(1);
    expect(metricValue(text, 'mirror_stale_served_total', { upstream: 'docker.io' })).toBe(1);
    expect(metricValue(text, 'mirror_upstream_requests_total', { upstream: 'docker.io', kind: 'manifest', status: '503' })).toBe(1);
    expect(text).toContain('mirror_downloads_in_flight 0');
    expect(metricValue(text, 'mirror_cache_objects', {})).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, 'mirror_cache_bytes', {})).toBeGreaterThan(0);
    expect(metricValue(text, 'mirror_upstream_up', { upstream: 'docker.io' })).toBe(1);
  });

  it('/healthz is alive, /readyz flips to 503 while shutting down and in-flight responses finish', async () => {
    expect((await get(`${mirror.url}/healthz`)).status).toBe(200);
    expect((await get(`${mirror.url}/readyz`)).status).toBe(200);
    const bytes = pseudoRandomBytes(4 * MiB, 'shutdown');
    const digest = upstream.addBlob(bytes);
    // The upstream holds the blob after its first MiB until shutdown has begun.
    const gate = deferred();
    upstream.fault = (r) => (r.kind === 'blob' && r.method === 'GET' ? { hold: { afterBytes: 1 * MiB, until: gate.promise } } : undefined);
    // One keep-alive connection: the blob's response is under way on it when shutdown begins,
    // and the readiness check queued behind it goes out on that same connection afterwards.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      let answered = false;
      const inFlight = get(`${mirror.url}/v2/team/metrics/blobs/${digest}`, { agent, onHeaders: () => (answered = true) });
      await waitFor(() => answered, 10_000, 'the blob response to be under way');
      const readyAfterwards = get(`${mirror.url}/readyz`, { agent });
      const closing = mirror.server.close(10_000);
      // The listening socket is closed: a new connection is refused.
      await expect(get(`${mirror.url}/readyz`)).rejects.toThrow(/ECONNREFUSED/);
      gate.resolve();
      const finished = await inFlight;
      expect(finished.status).toBe(200);
      expect(finished.truncated).toBe(false);
      expect(finished.body.equals(bytes)).toBe(true);
      const ready = await readyAfterwards;
      expect(ready.status).toBe(503);
      expect(ready.body.toString()).toBe('shutting down\n');
      expect(ready.headers.connection).toBe('close');
      await closing;
    } finally {
      upstream.fault = undefined;
      agent.destroy();
    }
  });
});

describe('TLS', () => {
  function makeCert(name: string): { cert: string; key: string } {
    const cert = join(work, `${name}.crt`);
    const key = join(work, `${name}.key`);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'pipe' });
    return { cert, key };
  }

  it('serves skopeo over https with a trusted certificate and reloads a new one without dropping connections', async () => {
    const first = makeCert('first');
    const live = { cert: join(work, 'live.crt'), key: join(work, 'live.key') };
    execFileSync('cp', [first.cert, live.cert]);
    execFileSync('cp', [first.key, live.key]);
    addTinyImage(upstream, 'team/secure', 'v1', 'secure');
    const mirror = await startMirror({ upstreamUrl: upstream.url, document: { tls: live } });
    try {
      expect(mirror.url).toMatch(/^https:/);
      const certDir = join(work, 'certs');
      execFileSync('mkdir', ['-p', certDir]);
      execFileSync('cp', [first.cert, join(certDir, 'ca.crt')]);
      await skopeoCopy(`docker://${mirror.host}/team/secure:v1`, `dir:${join(work, 'secure')}`, ['--src-cert-dir', certDir, '--src-tls-verify=true']);

      const fingerprint = () =>
        new Promise<string>((resolve, reject) => {
          const socket = tls.connect({ host: '127.0.0.1', port: Number(mirror.host.split(':')[1]), rejectUnauthorized: false }, () => {
            resolve(socket.getPeerCertificate().fingerprint256);
            socket.end();
          });
          socket.on('error', reject);
        });
      const before = await fingerprint();
      const second = makeCert('second');
      execFileSync('cp', [second.cert, live.cert]);
      execFileSync('cp', [second.key, live.key]);
      mirror.server.reload();
      const after = await fingerprint();
      expect(after).not.toBe(before);
    } finally {
      await mirror.stop();
    }
  });
});

describe('client authentication', () => {
  it('accepts a bcrypt htpasswd user, refuses others with a Basic challenge, and never logs the password', async () => {
    const htpasswd = join(work, 'htpasswd');
    writeFileSync(htpasswd, `ops:${bcrypt.hashSync('s3cret-pass', 10).replace(/^\$2b\$/, '$2y$')}\n`);
    addTinyImage(upstream, 'team/private-mirror', 'v1', 'auth');
    const mirror = await startMirror({ upstreamUrl: upstream.url, document: { auth: { htpasswd } } });
    try {
      const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
      const none = await get(`${mirror.url}/v2/`);
      expect(none.status).toBe(401);
      expect(none.headers['www-authenticate']).toBe('Basic realm="registry-mirror"');
      expect(JSON.parse(none.body.toString()).errors[0].code).toBe('UNAUTHORIZED');
      const wrong = await get(`${mirror.url}/v2/team/private-mirror/manifests/v1`, { headers: { authorization: basic('ops', 'guess') } });
      expect(wrong.status).toBe(401);
      const stranger = await get(`${mirror.url}/v2/`, { headers: { authorization: basic('eve', 's3cret-pass') } });
      expect(stranger.status).toBe(401);
      const ok = await get(`${mirror.url}/v2/team/private-mirror/manifests/v1`, { headers: { authorization: basic('ops', 's3cret-pass') } });
      expect(ok.status).toBe(200);
      expect((await get(`${mirror.url}/healthz`)).status).toBe(200);
      const logs = mirror.logs.map((l) => JSON.stringify(l)).join('\n');
      expect(logs).toContain('client authentication failed');
      // Neither the passwords nor the Basic headers that carried them.
      for (const secret of ['guess', 's3cret-pass', ...['ops:guess', 'ops:s3cret-pass', 'eve:s3cret-pass'].map((c) => Buffer.from(c).toString('base64'))]) {
        expect([secret, logs.includes(secret)]).toEqual([secret, false]);
      }
      // The user's credentials never reach the upstream either.
      for (const r of upstream.requests) expect(r.authorization ?? '').not.toContain(Buffer.from('ops:s3cret-pass').toString('base64'));
    } finally {
      await mirror.stop();
    }
  });
});

describe('status page', () => {
  const chromium = '/usr/bin/chromium';
  it.skipIf(!existsSync(chromium))('renders real data in headless Chromium', async () => {
    const { chromium: launcher } = await import('playwright-core');
    const mirror = await startMirror({ upstreamUrl: upstream.url, document: { storage: { maxSize: '1GiB' } } });
    const browser = await launcher.launch({
      executablePath: chromium,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      const image = addTinyImage(upstream, 'library/nginx', '1.25', 'status-page');
      const pulls = [
        await get(`${mirror.url}/v2/library/nginx/manifests/1.25`),
        await get(`${mirror.url}/v2/library/nginx/manifests/1.25`),
        await get(`${mirror.url}/v2/library/nginx/blobs/${image.layer}`),
      ];
      for (const r of pulls) expect(r.status).toBe(200);
      // What the page shows is recorded when each response closes.
      for (const r of pulls) await mirror.accessFor(r.headers);
      const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
      await page.goto(`${mirror.url}/`);
      expect(await page.title()).toBe('registry-mirror');
      expect(await page.locator('#upstreams').innerText()).toMatch(/docker\.io\s+http:\/\/127\.0\.0\.1:\d+\s+up/);
      expect(await page.locator('#top').innerText()).toContain('docker.io/library/nginx');
      expect(await page.locator('#recent').innerText()).toMatch(/docker\.io\/library\/nginx:1\.25\s+hit/);
      expect(await page.locator('#hits .big').innerText()).toMatch(/^\d+\.\d%$/);
      expect(await page.locator('#cache').innerText()).toContain('of 1.0 GiB');
      const shot = await page.screenshot({ path: process.env.STATUS_SCREENSHOT ?? join(work, 'status.png'), fullPage: true });
      // A rendered page, not a blank one: plenty of distinct bytes in the PNG.
      expect(shot.length).toBeGreaterThan(20_000);
    } finally {
      await browser.close();
      await mirror.stop();
    }
  });
  it.skipIf(!existsSync(chromium))('leads with what the mirror saved: today, 30 days as an inline chart, pulls left; readable without JavaScript', async () => {
    const { chromium: launcher } = await import('playwright-core');
    const DAY = 86_400_000;
    const clock = new ManualClock(Date.UTC(2026, 4, 18, 9));
    const mirror = await startMirror({ upstreamUrl: upstream.url, clock });
    const browser = await launcher.launch({
      executablePath: chromium,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      // Three days of traffic: each day a blob and a tag fetched twice (the second time saved).
      const mib = [3, 1, 2];
      for (const [day, size] of mib.entries()) {
        if (day > 0) clock.advance(DAY);
        const blob = upstream.addBlob(pseudoRandomBytes(size * MiB, `saved-${day}`), ['team/saved']);
        addTinyImage(upstream, 'team/saved', `day${day}`, `saved-${day}`);
        for (let i = 0; i < 2; i++) {
          expect((await get(`${mirror.url}/v2/team/saved/blobs/${blob}`)).status).toBe(200);
          expect((await get(`${mirror.url}/v2/team/saved/manifests/day${day}`)).status).toBe(200);
        }
      }
      const page = await browser.newPage({ viewport: { width: 1100, height: 1000 }, javaScriptEnabled: false });
      await page.goto(`${mirror.url}/`);
      // The page has no script at all, and the savings come first.
      expect(await page.locator('script').count()).toBe(0);
      expect(await page.locator('h2').first().innerText()).toBe('What the mirror saved its upstreams');
      const today = await page.locator('#saved-today').innerText();
      expect(today).toContain('2026-05-20');
      expect(today).toContain('2.0 MiB');
      expect(today).toContain('1 pull not sent upstream');
      expect(today).toMatch(/cache: 2\.0 MiB/);
      expect(today).toMatch(/tag-fresh: 1 pull/);
      expect(await page.locator('#saved-30d').innerText()).toMatch(/6\.0 MiB\s+3 pulls not sent upstream/);
      expect(await page.locator('#quota').innerText()).toMatch(/docker\.io \(anonymous\): unknown/);
      // The charts: 30 bars each, drawn inline; the three days with traffic have height.
      const chart = page.locator('svg#saved-bytes-chart');
      expect((await chart.boundingBox())!.width).toBeGreaterThan(300);
      const bars = chart.locator('rect');
      expect(await bars.count()).toBe(30);
      const heights = await Promise.all(Array.from({ length: 30 }, (_, i) => bars.nth(i).getAttribute('height').then(Number)));
      expect(heights.slice(0, 27).every((h) => h === 0)).toBe(true);
      expect(heights[27]).toBeGreaterThan(heights[29]!);
      expect(heights[29]).toBeGreaterThan(heights[28]!);
      expect(await bars.nth(27).locator('title').textContent()).toBe('2026-05-18: 3.0 MiB');
      expect(await page.locator('svg#saved-pulls-chart rect[height="0.0"]').count()).toBe(27);
      // The figures per day, behind a <details> that opens without script.
      await page.locator('details summary').click();
      expect(await page.locator('#saved-daily').innerText()).toMatch(/2026-05-19\s+1\.0 MiB\s+1/);
      const shot = await page.screenshot({ path: process.env.SAVED_SCREENSHOT ?? join(work, 'saved.png'), fullPage: true });
      expect(shot.length).toBeGreaterThan(20_000);
    } finally {
      await browser.close();
      await mirror.stop();
    }
  });
});
