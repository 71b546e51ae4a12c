import { describe, expect, it } from 'vitest';
import { buildConfig, ConfigError } from '../../src/config.js';

function problems(doc: unknown, opts: Parameters<typeof buildConfig>[1] = {}): string[] {
  try {
    buildConfig(doc, opts);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('configuration', () => {
  it('defaults to Docker Hub on :5000 with the cache in ./data', () => {
    const c = buildConfig({}, {});
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 5000 });
    expect(c.storage.path).toBe('./data');
    expect(c.upstreams).toEqual([expect.objectContaining({ name: 'docker.io', url: 'https://registry-1.docker.io', ttlMs: 600_000, libraryPrefix: true })]);
    expect(Object.isFrozen(c.upstreams[0])).toBe(true);
  });

  it('reports every bad key with its path at once', () => {
    const found = problems({ listen: 'nowhere', storage: { path: '', maxSize: 'huge' }, ttl: '5 fortnights', upstreams: { 'docker.io': { url: 'ftp://x', colour: 'red' } }, bogus: 1 });
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^listen: /),
        expect.stringMatching(/^storage\.path: /),
        expect.stringMatching(/^storage\.maxSize: /),
        expect.stringMatching(/^ttl: /),
        expect.stringMatching(/^upstreams\.docker\.io\.url: /),
        expect.stringMatching(/^upstreams\.docker\.io: unknown key "colour"/),
        expect.stringMatching(/^\(root\): unknown key "bogus"/),
      ]),
    );
  });

  it('substitutes ${ENV} and says which variable is missing', () => {
    const env = { HUB_TOKEN: 's3cret' };
    const c = buildConfig({ upstreams: { 'docker.io': { url: 'https://registry-1.docker.io', username: 'me', password: '${HUB_TOKEN}' } } }, { env });
    expect(c.upstreams[0]!.credentials).toEqual([{ name: 'me', username: 'me', password: 's3cret' }]);
    expect(problems({ upstreams: { 'docker.io': { url: 'https://x', username: 'me', password: '${NOPE}' } } })).toEqual(
      expect.arrayContaining([expect.stringMatching(/upstreams\.docker\.io\.password: environment variable NOPE is not set/)]),
    );
  });

  it('takes a list of credentials, each labelled by its name or user name, secrets from ${ENV}', () => {
    const env = { HUB_A: 'secret-a', HUB_B: 'secret-b' };
    const credentials = [
      { username: 'alice', password: '${HUB_A}' },
      { name: 'ci-robot', username: 'bob', password: '${HUB_B}' },
    ];
    const c = buildConfig({ upstreams: { 'docker.io': { url: 'https://registry-1.docker.io', credentials } } }, { env });
    expect(c.upstreams[0]!.credentials).toEqual([
      { name: 'alice', username: 'alice', password: 'secret-a' },
      { name: 'ci-robot', username: 'bob', password: 'secret-b' },
    ]);
    expect(buildConfig({}, {}).upstreams[0]!.credentials).toEqual([]);
    // Said once, as unset (not also as an empty password).
    expect(problems({ upstreams: { 'docker.io': { url: 'https://x', credentials } } }, { env: { HUB_A: 'a' } })).toEqual([
      'upstreams.docker.io.credentials.1.password: environment variable HUB_B is not set',
    ]);
    const twice = [{ username: 'alice', password: 'a' }, { username: 'alice', password: 'b' }];
    expect(problems({ upstreams: { 'docker.io': { url: 'https://x', credentials: twice } } })).toEqual([expect.stringMatching(/credentials\.1\.name: "alice" is used twice/)]);
    expect(problems({ upstreams: { 'docker.io': { url: 'https://x', credentials: [{ username: 'anonymous', password: 'a' }] } } })).toEqual([
      expect.stringMatching(/credentials\.0\.name: "anonymous" names requests without credentials/),
    ]);
    expect(problems({ upstreams: { 'docker.io': { url: 'https://x', username: 'me', password: 'p', credentials: [{ username: 'alice', password: 'a' }] } } })).toEqual([
      expect.stringMatching(/upstreams\.docker\.io: username\/password and credentials are two forms of one setting/),
    ]);
  });

  it('applies file < MIRROR_* env < flags', () => {
    const doc = { listen: '127.0.0.1:6000', ttl: '1h', storage: { path: '/file' } };
    const env = { MIRROR_STORAGE: '/env', MIRROR_PORT: '7000', MIRROR_TTL: '2h' };
    const c = buildConfig(doc, { env, overrides: { storage: '/flag', upstream: 'http://127.0.0.1:9999/' } });
    expect(c.storage.path).toBe('/flag');
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 7000 });
    expect(c.upstreams[0]!.ttlMs).toBe(7_200_000);
    expect(c.upstreams[0]!.url).toBe('http://127.0.0.1:9999');
    expect(c.upstreams[0]!.name).toBe('docker.io');
  });

  it('--ttl overrides per-upstream TTLs too', () => {
    const c = buildConfig({ upstreams: { 'docker.io': { url: 'https://a', ttl: '1h' }, 'ghcr.io': { url: 'https://ghcr.io', ttl: '5m' } } }, { overrides: { ttl: '0' } });
    expect(c.upstreams.map((u) => u.ttlMs)).toEqual([0, 0]);
  });

  it('shared bucket eviction: defaults, and a recent-use window shorter than two heartbeats is refused', () => {
    const s3 = { bucket: 'b' };
    expect(buildConfig({ storage: { driver: 's3', s3 } }, {}).storage.shared).toEqual({ replicaId: undefined, heartbeatMs: 60_000, recentUseMs: 600_000, replicaExpiryMs: 7 * 86_400_000 });
    expect(buildConfig({ storage: { driver: 's3', s3: { ...s3, replicaId: 'mirror-1', heartbeat: '5s', recentUse: '10s' } } }, {}).storage.shared).toMatchObject({ replicaId: 'mirror-1', heartbeatMs: 5000, recentUseMs: 10_000 });
    expect(problems({ storage: { driver: 's3', s3: { ...s3, heartbeat: '1m', recentUse: '90s', replicaExpiry: '2m', replicaId: 'a/b' } } })).toEqual([
      expect.stringMatching(/^storage\.s3\.replicaId: letters, digits/),
    ]);
    expect(problems({ storage: { driver: 's3', s3: { ...s3, heartbeat: '1m', recentUse: '90s', replicaExpiry: '2m' } } })).toEqual([
      expect.stringMatching(/^storage\.s3\.recentUse: must be at least two heartbeats/),
      expect.stringMatching(/^storage\.s3\.replicaExpiry: must be at least three heartbeats/),
    ]);
  });

  it('pull events and trusted proxies: defaults, secrets from the environment, and what it refuses', () => {
    const off = buildConfig({}, {});
    expect(off.trustedProxies).toEqual([]);
    expect(off.events).toEqual({ file: undefined, webhook: undefined });
    const c = buildConfig(
      { trustedProxies: ['10.0.0.0/8', '192.0.2.1', 'fd00::/8'], events: { file: '/var/log/pulls.jsonl', webhook: { url: 'https://hooks.example/p?k=1', headers: { authorization: 'Bearer ${HOOK_TOKEN}' } } } },
      { env: { HOOK_TOKEN: 't0k' } },
    );
    expect(c.trustedProxies).toEqual(['10.0.0.0/8', '192.0.2.1', 'fd00::/8']);
    expect(c.events.webhook).toEqual({
      url: 'https://hooks.example/p?k=1', headers: { authorization: 'Bearer t0k' },
      batchSize: 100, queueSize: 10_000, flushIntervalMs: 1000, timeoutMs: 10_000, backoffMs: 1000, maxBackoffMs: 60_000,
    });
    expect(problems({ trustedProxies: ['10.0.0.0/33', 'proxy.internal', '::1/129'] })).toEqual([
      expect.stringMatching(/^trustedProxies\.0: not an IP address or CIDR/),
      expect.stringMatching(/^trustedProxies\.1: /),
      expect.stringMatching(/^trustedProxies\.2: /),
    ]);
    expect(problems({ events: { webhook: { url: 'ftp://x' } } })).toEqual([expect.stringMatching(/^events\.webhook\.url: not an http\(s\) URL/)]);
    expect(problems({ events: { webhook: { url: 'http://x', batchSize: 50, queueSize: 10 } } })).toEqual([expect.stringMatching(/^events\.webhook\.batchSize: must not be above/)]);
  });

  it('refuses a default upstream that is not configured', () => {
    expect(problems({ defaultUpstream: 'quay.io' })).toEqual([expect.stringMatching(/^defaultUpstream: /)]);
  });

  describe('cluster.secret', () => {
    const cluster = { self: 'http://10.0.0.1:5000', peers: ['http://10.0.0.1:5000', 'http://10.0.0.2:5000'] };
    const secret = 'sixteen-chars-ok';

    it('is required when client auth is on, naming the key and why', () => {
      const found = problems({ listen: '127.0.0.1:5000', auth: { htpasswd: '/etc/mirror/htpasswd' }, cluster });
      expect(found).toEqual([expect.stringMatching(/^cluster\.secret: required when client auth \(auth\.htpasswd\) is on/)]);
      expect(() => buildConfig({ listen: '127.0.0.1:5000', auth: { htpasswd: '/x' }, cluster }, {})).toThrow(ConfigError);
    });

    it('is required when listen is not a loopback address (the default 0.0.0.0 included)', () => {
      expect(problems({ cluster })).toEqual([expect.stringMatching(/^cluster\.secret: required when listen \(0\.0\.0\.0\) is not a loopback address/)]);
      expect(problems({ listen: '10.0.0.1:5000', cluster })).toEqual([expect.stringMatching(/^cluster\.secret: required/)]);
      expect(problems({ listen: '[::]:5000', cluster })).toEqual([expect.stringMatching(/^cluster\.secret: required/)]);
    });

    it('may be left out on a loopback address without client auth', () => {
      for (const listen of ['127.0.0.1:5000', '127.5.6.7:5000', '[::1]:5000', 'localhost:5000']) {
        expect([listen, problems({ listen, cluster })]).toEqual([listen, []]);
      }
      expect(problems({ listen: '128.0.0.1:5000', cluster })).toHaveLength(1);
    });

    it('must be long enough, and is kept', () => {
      expect(problems({ cluster: { ...cluster, secret: 'short' } })).toEqual([expect.stringMatching(/^cluster\.secret: must be at least 16 characters/)]);
      const c = buildConfig({ auth: { htpasswd: '/x' }, cluster: { ...cluster, secret } }, {});
      expect(c.cluster?.secret).toBe(secret);
      expect(problems({ cluster: { ...cluster, secret: '${CLUSTER_SECRET}' } }, { env: { CLUSTER_SECRET: secret } })).toEqual([]);
    });
  });
});
