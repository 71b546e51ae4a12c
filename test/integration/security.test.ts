// Client authentication under attack (issue 13): the header that marks a request between
// replicas is an HMAC signature, not a password anyone can send; and a flood of wrong
// passwords (bcrypt is slow by design) does not stall the mirror's other requests.
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashRing } from '../../src/cluster/ring.js';
import { startFakeUpstream, type FakeUpstream } from '../fixtures/fake-upstream.js';
import { get, sha256 } from '../fixtures/http-client.js';
import { addTinyImage } from '../fixtures/images-fake.js';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { freePort } from '../fixtures/real-upstream.js';

let upstream: FakeUpstream;
const work = mkdtempSync(join(tmpdir(), 'security-'));
const htpasswd = join(work, 'htpasswd');
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

beforeAll(async () => {
  upstream = await startFakeUpstream({ auth: true });
  // Cost 8: each check is real bcrypt work, a flood of them is still bounded in time.
  writeFileSync(htpasswd, `ops:${bcrypt.hashSync('right-pass', 8).replace(/^\$2b\$/, '$2y$')}\n`);
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The wire format of a replica's request signature, written out independently of the mirror's code. */
function peerSignature(secret: string, method: string, pathAndQuery: string, unixSeconds: number): string {
  const sig = createHmac('sha256', secret).update(`v1\n${method}\n${pathAndQuery}\n${unixSeconds}`).digest('hex');
  return `v1 t=${unixSeconds} sig=${sig}`;
}

describe('requests between replicas with client auth on', () => {
  const secret = 'a-cluster-secret-of-some-length';
  let mirror: TestMirror;
  const path = '/v2/team/clustered/manifests/v1';

  beforeAll(async () => {
    addTinyImage(upstream, 'team/clustered', 'v1', 'security-peers');
    const port = await freePort();
    const self = `http://127.0.0.1:${port}`;
    mirror = await startMirror({
      upstreamUrl: upstream.url,
      document: { listen: `127.0.0.1:${port}`, auth: { htpasswd }, cluster: { self, peers: [self], secret } },
    });
  });
  afterAll(async () => {
    await mirror?.stop();
  });

  it('refuses a cluster block without a secret when client auth is on, naming the key', async () => {
    const port = await freePort();
    const self = `http://127.0.0.1:${port}`;
    await expect(
      startMirror({ upstreamUrl: upstream.url, document: { listen: `127.0.0.1:${port}`, auth: { htpasswd }, cluster: { self, peers: [self] } } }),
    ).rejects.toThrow(/cluster\.secret/);
  });

  it('answers 401 to a made-up peer header, the bare secret (the old format) and bad signatures', async () => {
    const forged = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': 'x' } });
    expect(forged.status).toBe(401);
    expect(JSON.parse(forged.body.toString()).errors[0].code).toBe('UNAUTHORIZED');
    const bare = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': secret } });
    expect(bare.status).toBe(401);
    // Signed, but with another secret, for another path, or too long ago.
    const now = Math.floor(Date.now() / 1000);
    const wrongSecret = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': peerSignature('another-secret-of-length', 'GET', path, now) } });
    expect(wrongSecret.status).toBe(401);
    const otherPath = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': peerSignature(secret, 'GET', '/v2/team/other/manifests/v1', now) } });
    expect(otherPath.status).toBe(401);
    const stale = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': peerSignature(secret, 'GET', path, now - 600) } });
    expect(stale.status).toBe(401);
  });

  it("serves a request signed with the cluster's secret without client credentials, by hand or by a fellow replica", async () => {
    const signed = await get(`${mirror.url}${path}`, { headers: { 'x-registry-mirror-peer': peerSignature(secret, 'GET', path, Math.floor(Date.now() / 1000)) } });
    expect(signed.status).toBe(200);
    const manifest = JSON.parse(signed.body.toString());
    expect(manifest.schemaVersion).toBe(2);
    const withQuery = `${path}?ns=docker.io`;
    const signedQuery = await get(`${mirror.url}${withQuery}`, { headers: { 'x-registry-mirror-peer': peerSignature(secret, 'GET', withQuery, Math.floor(Date.now() / 1000)) } });
    expect(signedQuery.status).toBe(200);

    // And a fellow replica's own signed requests: a client pulls through the replica that does
    // not own the layer, which reads it from the owner without any client credentials.
    const { layer } = addTinyImage(upstream, 'team/shared', 'v1', 'security-two-replicas');
    const ports = [await freePort(), await freePort()];
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const owner = new HashRing(urls).owner(layer)!;
    const pair: TestMirror[] = [];
    try {
      for (const [i, port] of ports.entries()) {
        pair.push(
          await startMirror({ upstreamUrl: upstream.url, document: { listen: `127.0.0.1:${port}`, auth: { htpasswd }, cluster: { self: urls[i], peers: urls, secret } } }),
        );
      }
      const [other, owning] = pair[0]!.url === owner ? [pair[1]!, pair[0]!] : [pair[0]!, pair[1]!];
      upstream.reset();
      const blob = await get(`${other.url}/v2/team/shared/blobs/${layer}`, { headers: { authorization: basic('ops', 'right-pass') } });
      expect(blob.status).toBe(200);
      expect(sha256(blob.body)).toBe(layer);
      expect(other.logs.filter((l) => l.msg.startsWith('peer unavailable'))).toEqual([]);
      expect(owning.accessLog().filter((l) => l.path === `/v2/team/shared/blobs/${layer}`).map((l) => l.status)).toEqual([200]);
      expect(upstream.count({ method: 'GET', path: new RegExp(layer), authorized: true })).toBe(1);
    } finally {
      for (const m of pair) await m.stop();
    }
  });
});

describe('a flood of wrong passwords', () => {
  it('does not hold back /healthz and clients whose password is right', async () => {
    addTinyImage(upstream, 'team/flooded', 'v1', 'security-flood');
    const mirror = await startMirror({ upstreamUrl: upstream.url, document: { auth: { htpasswd } } });
    try {
      const right = basic('ops', 'right-pass');
      // The legitimate client logged in before the flood began.
      expect((await get(`${mirror.url}/v2/`, { headers: { authorization: right } })).status).toBe(200);

      const events: string[] = [];
      const statuses = { wrong: [] as number[], probe: [] as number[] };
      // 20 clients, each sending 5 different wrong passwords one after another.
      const flood = Promise.all(
        Array.from({ length: 20 }, async (_, client) => {
          for (let attempt = 0; attempt < 5; attempt++) {
            const r = await get(`${mirror.url}/v2/team/flooded/manifests/v1`, { headers: { authorization: basic('ops', `guess-${client}-${attempt}`) } });
            statuses.wrong.push(r.status);
            events.push('wrong');
          }
        }),
      );
      // Meanwhile, one after another: /healthz and the right password, 10 times each.
      const probes = (async () => {
        for (let i = 0; i < 10; i++) {
          const health = await get(`${mirror.url}/healthz`);
          statuses.probe.push(health.status);
          events.push('probe');
          const pull = await get(`${mirror.url}/v2/team/flooded/manifests/v1`, { headers: { authorization: right } });
          statuses.probe.push(pull.status);
          events.push('probe');
        }
      })();
      await Promise.all([flood, probes]);

      // Everyone was answered: the wrong passwords with 401 (or 429 when too many checks wait).
      expect(statuses.probe).toEqual(Array(20).fill(200));
      expect(statuses.wrong).toHaveLength(100);
      for (const s of statuses.wrong) expect([401, 429]).toContain(s);
      expect(statuses.wrong.filter((s) => s === 401).length).toBeGreaterThan(0);
      // Order: every probe was answered before the flood of wrong passwords was, indeed
      // before half of it was (each probe waited for no password check).
      expect(events.lastIndexOf('probe')).toBeLessThan(events.lastIndexOf('wrong'));
      const wrongBeforeLastProbe = events.slice(0, events.lastIndexOf('probe')).filter((e) => e === 'wrong').length;
      expect(wrongBeforeLastProbe).toBeLessThan(50);
    } finally {
      await mirror.stop();
    }
  });

  it('answers 429 with Retry-After, quickly, once too many password checks are waiting', async () => {
    const mirror = await startMirror({ upstreamUrl: upstream.url, document: { auth: { htpasswd } } });
    try {
      const events: number[] = [];
      // 100 different wrong passwords at once: more than the checks allowed to wait.
      const answers = await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          const r = await get(`${mirror.url}/v2/`, { headers: { authorization: basic('ops', `burst-${i}`) } });
          events.push(r.status);
          return r;
        }),
      );
      const busy = answers.filter((r) => r.status === 429);
      expect(busy.length).toBeGreaterThan(0);
      expect(answers.filter((r) => r.status === 401).length).toBeGreaterThan(0);
      expect(answers.length).toBe(busy.length + answers.filter((r) => r.status === 401).length);
      for (const r of busy) {
        expect(r.headers['retry-after']).toBe('1');
        expect(JSON.parse(r.body.toString()).errors[0].code).toBe('TOOMANYREQUESTS');
      }
      // Refused without waiting for a check: the first 429 came before the last 401.
      expect(events.indexOf(429)).toBeLessThan(events.lastIndexOf(401));
      expect((await get(`${mirror.url}/v2/`, { headers: { authorization: basic('ops', 'right-pass') } })).status).toBe(200);
    } finally {
      await mirror.stop();
    }
  });
});
