// Pull events (issue 15, item 8): one event per image pull, with who (address, user), what
// (upstream, repository, tag and digest), how (outcome, status) and bytes, to a JSON-lines
// file and to a real webhook on loopback. Pulls by skopeo from the real upstream, and the
// dockerd/containerd way (HEAD by tag, then GET by digest) over raw HTTP.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PullEvent } from '../../src/server/pull-events.js';
import { startMirror } from '../fixtures/mirror.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';
import { seedStandardContent, type SeededContent } from '../fixtures/seed.js';
import { skopeoCopy } from '../fixtures/skopeo-client.js';
import { waitFor } from '../fixtures/wait.js';

let upstream: RealUpstream;
let content: SeededContent;
const work = mkdtempSync(join(tmpdir(), 'pull-events-'));

beforeAll(async () => {
  upstream = await startRealUpstream();
  content = await seedStandardContent(upstream);
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

function readEvents(file: string): PullEvent[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as PullEvent);
}

/** A webhook on loopback that records every POST. */
async function startReceiver() {
  const posts: { url: string; headers: http.IncomingHttpHeaders; events: PullEvent[] }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      posts.push({ url: req.url ?? '', headers: req.headers, events: JSON.parse(Buffer.concat(chunks).toString()) as PullEvent[] });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    posts,
    events: () => posts.flatMap((p) => p.events),
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** One request from a chosen local address (127.0.0.2 is loopback too, but not 127.0.0.1). */
function request(url: string, options: { method?: string; headers?: Record<string, string>; localAddress?: string } = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: options.method ?? 'GET', headers: options.headers, localAddress: options.localAddress, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('pull events', () => {
  it('skopeo pulls: one event each (a multi-arch pull too) with tag and digest, in the file and at the webhook', async () => {
    const receiver = await startReceiver();
    const file = join(work, 'skopeo-events.jsonl');
    const mirror = await startMirror({
      upstreamUrl: upstream.url,
      document: {
        events: {
          file,
          webhook: { url: `${receiver.url}/hooks/pulls?source=mirror`, headers: { authorization: 'Bearer hook-token' }, flushInterval: '50ms' },
        },
      },
    });
    try {
      const platform = ['--override-arch', 'amd64', '--override-os', 'linux'];
      await skopeoCopy(`docker://${mirror.host}/library/alpine:3.19`, `dir:${join(work, 'a1')}`, platform);
      await skopeoCopy(`docker://${mirror.host}/team/app@${content.app.digest}`, `dir:${join(work, 'a2')}`, platform);
      await skopeoCopy(`docker://${mirror.host}/library/alpine:3.19`, `dir:${join(work, 'a3')}`, platform);
      await waitFor(() => readEvents(file).length >= 3, 10_000, 'three events in the file');
      const events = readEvents(file);
      expect(events).toHaveLength(3);
      const common = { upstream: 'docker.io', client: '127.0.0.1', user: null, status: 200 };
      expect(events[0]).toMatchObject({
        ...common, repository: 'library/alpine', tag: '3.19', digest: content.alpine.digest, kind: 'index',
        mediaType: content.alpine.mediaType, outcome: 'miss', bytes: content.alpine.content.manifest.bytes.length,
      });
      expect(events[1]).toMatchObject({
        ...common, repository: 'team/app', tag: null, digest: content.app.digest, kind: 'image', outcome: 'miss',
        bytes: content.app.content.manifest.bytes.length,
      });
      expect(events[2]).toMatchObject({ ...common, repository: 'library/alpine', tag: '3.19', digest: content.alpine.digest, outcome: 'hit' });
      for (const e of events) expect(new Date(e.time).toISOString()).toBe(e.time);
      // The access log shows the platform manifest GET that made no event of its own.
      const amd64 = content.alpine.content.images[0]!.manifest.digest;
      expect(mirror.accessLog().filter((l) => l.path === `/v2/library/alpine/manifests/${amd64}`)).toHaveLength(2);

      // The same events reached the webhook, with its headers and query.
      await waitFor(() => receiver.events().length >= 3, 10_000, 'three events at the webhook');
      expect(receiver.events()).toEqual(events);
      for (const post of receiver.posts) {
        expect(post.url).toBe('/hooks/pulls?source=mirror');
        expect(post.headers.authorization).toBe('Bearer hook-token');
        expect(post.headers['content-type']).toBe('application/json');
      }
    } finally {
      await mirror.stop();
      await receiver.stop();
    }
  });

  it('the dockerd way (HEAD by tag, GET by digest) is one event with the tag; user from client auth, address from a trusted proxy only', async () => {
    const htpasswd = join(work, 'htpasswd');
    writeFileSync(htpasswd, `ops:${bcrypt.hashSync('ops-password', 4)}\n`);
    const file = join(work, 'dockerd-way.jsonl');
    const mirror = await startMirror({
      upstreamUrl: upstream.url,
      document: { auth: { htpasswd }, trustedProxies: ['127.0.0.1', '10.0.0.0/8'], events: { file } },
    });
    try {
      const authorization = `Basic ${Buffer.from('ops:ops-password').toString('base64')}`;
      const debian = content.debian;
      const accept = [debian.mediaType, 'application/vnd.docker.distribution.manifest.v2+json'].join(', ');
      // Through the load balancer (127.0.0.1, trusted), which appended the client's address
      // after a hop of its own (10.1.2.3, trusted) and whatever the client claimed.
      const viaProxy = { authorization, accept, 'x-forwarded-for': '192.0.2.66, 203.0.113.7, 10.1.2.3' };
      const head = await request(`${mirror.url}/v2/library/debian/manifests/bookworm`, { method: 'HEAD', headers: viaProxy });
      expect(head.status).toBe(200);
      expect(head.headers['docker-content-digest']).toBe(debian.digest);
      expect((await request(`${mirror.url}/v2/library/debian/manifests/${debian.digest}`, { headers: viaProxy })).status).toBe(200);
      const platform = debian.content.images[0]!.manifest.digest;
      expect((await request(`${mirror.url}/v2/library/debian/manifests/${platform}`, { headers: viaProxy })).status).toBe(200);
      // Straight from a client that is no trusted proxy: its X-Forwarded-For is ignored.
      const direct = { authorization, accept, 'x-forwarded-for': '203.0.113.99' };
      expect((await request(`${mirror.url}/v2/library/busybox/manifests/1.36`, { headers: direct, localAddress: '127.0.0.2' })).status).toBe(200);
      // A pull of a tag that does not exist is an event too (who tried to pull what).
      expect((await request(`${mirror.url}/v2/library/busybox/manifests/no-such-tag`, { headers: direct, localAddress: '127.0.0.2' })).status).toBe(404);

      await waitFor(() => readEvents(file).length >= 3, 10_000, 'three events');
      const events = readEvents(file);
      expect(events).toHaveLength(3);
      expect(events[0]).toMatchObject({
        client: '203.0.113.7', user: 'ops', repository: 'library/debian', tag: 'bookworm', digest: debian.digest, kind: 'index', outcome: 'hit', status: 200,
      });
      expect(events[1]).toMatchObject({ client: '127.0.0.2', user: 'ops', repository: 'library/busybox', tag: '1.36', digest: content.busybox.digest, kind: 'image', status: 200 });
      expect(events[2]).toMatchObject({ client: '127.0.0.2', user: 'ops', repository: 'library/busybox', tag: 'no-such-tag', digest: null, kind: null, status: 404, bytes: 0 });
    } finally {
      await mirror.stop();
    }
  });
});
