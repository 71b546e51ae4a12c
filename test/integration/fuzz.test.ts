// Hostile and malformed traffic against the mirror in front of a real upstream (CNCF
// distribution with Bearer token auth): thousands of requests generated deterministically
// from a seeded PRNG, then raw malformed HTTP over plain sockets, then a check that the
// seeded image is still served correctly (cache not corrupted, upstream not marked down).
//
// What must hold:
//   - no response with status >= 500, ever;
//   - every 4xx to a /v2 path (other than HEAD) is application/json with an OCI error
//     envelope {"errors":[{"code":"…",…}]};
//   - raw malformed HTTP gets a 400 or a closed connection, never a 5xx (that rule, not the
//     envelope rule, also covers requests whose target has raw non-ASCII bytes: Node's
//     parser refuses those with a bare 400 before the mirror sees them);
//   - afterwards, the seeded image is pulled correctly (manifest digest, blob bytes), and a
//     tag never asked for before (so only the upstream can answer) is served too.
// On failure the message groups the failing requests by class (the label each generated
// request carries) with counts and three examples each; 503s from the mirror's own circuit
// breaker are told apart from a class's own failures.
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMirror, type TestMirror } from '../fixtures/mirror.js';
import { buildImage, smallLayer, type Image } from '../fixtures/oci-images.js';
import { startRealUpstream, type RealUpstream } from '../fixtures/real-upstream.js';

const SEED = 0x5eed_f422;
const CONCURRENCY = 16;
const REQUEST_TIMEOUT_MS = 5_000;
/** Each phase stops sending new requests after this long (what is left is reported): the file ends well within 2 minutes. */
const HTTP_PHASE_BUDGET_MS = 45_000;
const RAW_PHASE_BUDGET_MS = 20_000;
const MIN_REQUESTS = 5_000;

const REPO = 'library/alpine';
const TAG = '3.19';
/** Pushed with the same content but never named by the fuzz: pulling it needs the upstream. */
const UNTOUCHED_TAG = 'fuzz-untouched-final-check';
const ALL_MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

// ------------------------------------------------------------------ deterministic PRNG

/** mulberry32: 32-bit state, good enough to generate test inputs reproducibly. */
class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  str(length: number, alphabet: string): string {
    let s = '';
    for (let i = 0; i < length; i++) s += alphabet[Math.floor(this.next() * alphabet.length)]!;
    return s;
  }
  hex(length: number): string {
    return this.str(length, '0123456789abcdef');
  }
  bytes(length: number): Buffer {
    const b = Buffer.alloc(length);
    for (let i = 0; i < length; i++) b[i] = Math.floor(this.next() * 256);
    return b;
  }
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }
}

const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const ALNUM = `${LOWER}0123456789`;

// ------------------------------------------------------------------ generated requests

interface Probe {
  /** The request class; failures are grouped by it. */
  label: string;
  method: string;
  /** Sent exactly as written (percent-encoding is part of the input). */
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
}

interface Outcome {
  status?: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  error?: string;
}

interface Seeded {
  manifestDigest: string;
  layerDigest: string;
  configDigest: string;
}

function isV2Path(path: string): boolean {
  const p = path.split('?')[0]!;
  return p === '/v2' || p.startsWith('/v2/');
}

/** A lowercase alphanumeric string: a valid one-component repository name of that length. */
function component(rng: Rng, length: number): string {
  return rng.str(1, LOWER) + rng.str(length - 1, ALNUM);
}

/** A valid multi-component name, each component built from valid separators. */
function validName(rng: Rng): string {
  const parts: string[] = [];
  for (let i = rng.int(1, 3); i > 0; i--) {
    let c = component(rng, rng.int(1, 8));
    if (rng.chance(0.3)) c += rng.pick(['.', '_', '__', '-', '--']) + component(rng, rng.int(1, 6));
    parts.push(c);
  }
  return parts.join('/');
}

function sha256Hex(rng: Rng): string {
  return `sha256:${rng.hex(64)}`;
}

/** The read endpoints of a repository name (already in URL form). */
function endpointFor(rng: Rng, name: string): string {
  return rng.pick([
    () => `/v2/${name}/manifests/latest`,
    () => `/v2/${name}/manifests/${component(rng, rng.int(1, 12))}`,
    () => `/v2/${name}/manifests/${sha256Hex(rng)}`,
    () => `/v2/${name}/blobs/${sha256Hex(rng)}`,
    () => `/v2/${name}/tags/list`,
  ])();
}

function readMethod(rng: Rng): string {
  return rng.chance(0.8) ? 'GET' : 'HEAD';
}

function generate(rng: Rng, s: Seeded): Probe[] {
  const groups: Probe[][] = [];
  const add = (label: string, count: number, make: (i: number) => Omit<Probe, 'label'>) => {
    const list: Probe[] = [];
    for (let i = 0; i < count; i++) list.push({ label, ...make(i) });
    groups.push(list);
  };
  const get = (path: string, headers: Record<string, string> = {}) => ({ method: readMethod(rng), path, headers });

  // ---- repository names
  add('name/1-component 248-255 chars (>255 with library/)', 96, (i) => get(endpointFor(rng, component(rng, 248 + (i % 8)))));
  add('name/1-component 246-247 chars (<=255 with library/)', 24, (i) => get(endpointFor(rng, component(rng, 246 + (i % 2)))));
  add('name/2-component 246-255 chars', 60, (i) => {
    const total = 246 + (i % 10);
    const first = rng.int(1, 40);
    return get(endpointFor(rng, `${component(rng, first)}/${component(rng, total - first - 1)}`));
  });
  add('name/library/ + 238-247 chars (246-255 total)', 40, (i) => get(endpointFor(rng, `library/${component(rng, 238 + (i % 10))}`)));
  add('name/256-300 chars', 135, (i) => {
    const total = 256 + (i % 45);
    const name = rng.chance(0.5) ? component(rng, total) : `${component(rng, 10)}/${component(rng, total - 11)}`;
    return get(endpointFor(rng, name));
  });
  add('name/uppercase', 60, () => {
    const n = validName(rng);
    const at = rng.int(0, n.length - 1);
    const upper = n.slice(0, at) + (/[a-z]/.test(n[at]!) ? n[at]!.toUpperCase() : 'X') + n.slice(at + 1);
    return get(endpointFor(rng, rng.chance(0.2) ? upper.toUpperCase() : upper));
  });
  add('name/dot-dot segments', 60, () =>
    get(endpointFor(rng, rng.pick([`../${validName(rng)}`, `${validName(rng)}/..`, `${validName(rng)}/../${validName(rng)}`, `library/..`, `..`, `a..b`, `%2e%2e/${validName(rng)}`, `.%2e/etc/passwd`]))),
  );
  add('name/double slash', 60, () => get(endpointFor(rng, rng.pick([`${validName(rng)}//${validName(rng)}`, `/${validName(rng)}`, `${validName(rng)}/`, `library//alpine`, `//`]))));
  add('name/percent-encoded slash', 60, () =>
    get(endpointFor(rng, rng.pick([`library%2Falpine`, `library%2falpine`, `${validName(rng)}%2F${validName(rng)}`, `%2F${validName(rng)}`, `library%252Falpine`]))),
  );
  add('name/percent-encoded NUL', 60, () => {
    const n = validName(rng);
    const at = rng.int(0, n.length);
    return get(endpointFor(rng, rng.pick([`${n.slice(0, at)}%00${n.slice(at)}`, `${n}%00`, `%00`, `library/alpine%00.evil`])));
  });
  add('name/unicode (percent-encoded UTF-8)', 60, () => {
    const word = rng.pick(['alpïne', 'аlpine' /* Cyrillic a */, 'библиотека/alpine', '中文/镜像', 'emoji😀', 'ａｌｐｉｎｅ', 'alpine\u200b', 'straße']);
    return get(endpointFor(rng, encodeURIComponent(word).replace(/%2F/g, '/')));
  });
  add('name/raw latin-1 bytes (malformed HTTP)', 40, () => get(endpointFor(rng, `${component(rng, 4)}${rng.pick(['é', 'ÿ', '\u00a0', 'ß', '\u0085'])}${component(rng, 3)}`)));
  add('name/leading or trailing separator', 100, () => {
    const c = component(rng, rng.int(2, 10));
    return get(endpointFor(rng, rng.pick([`-${c}`, `${c}-`, `_${c}`, `${c}_`, `.${c}`, `${c}.`, `library/-${c}`, `library/${c}.`, `${c}/-`, `__${c}`])));
  });
  add('name/invalid separator run', 60, () => {
    const a = component(rng, 3);
    const b = component(rng, 3);
    return get(endpointFor(rng, `${a}${rng.pick(['___', '..', '.-', '-.', '_-', '._', '__.', '+', '~', '%20', ':', '@', ';', ','])}${b}`));
  });
  add('name/empty', 20, () => get(rng.pick(['/v2//manifests/latest', `/v2//blobs/${s.layerDigest}`, '/v2//tags/list', '/v2///manifests/latest'])));
  add('name/host-like first component', 60, () =>
    get(endpointFor(rng, `${rng.pick(['evil.example.com', 'localhost', '127.0.0.1:5000', '169.254.169.254', '[::1]', 'localhost:1', 'registry-1.docker.io', 'index.docker.io', 'docker.io', 'ghcr.io'])}/${validName(rng)}`)),
  );
  add('name/random valid (unknown upstream)', 150, () => get(endpointFor(rng, validName(rng))));

  // ---- digests (manifests and blobs endpoints)
  const digestName = () => rng.pick([REPO, 'alpine', validName(rng)]);
  const digestPath = (d: string) => `/v2/${digestName()}/${rng.pick(['manifests', 'blobs'])}/${d}`;
  add('digest/md5 or other unknown algorithm', 60, () =>
    get(digestPath(rng.pick([`md5:${rng.hex(32)}`, `sha1:${rng.hex(40)}`, `sha384:${rng.hex(96)}`, `blake3:${rng.hex(64)}`, `crc32:${rng.hex(8)}`, `sha256+b64u:${rng.str(43, ALNUM)}`]))),
  );
  add('digest/sha256 wrong length', 60, () => get(digestPath(`sha256:${rng.hex(rng.pick([1, 32, 63, 65, 66, 128, rng.int(2, 200)]))}`)));
  add('digest/sha256 uppercase hex', 50, () => get(digestPath(`sha256:${rng.hex(64).toUpperCase()}`)));
  add('digest/sha256 non-hex', 50, () => get(digestPath(`sha256:${rng.hex(63)}${rng.pick(['g', 'z', '_', '-', '=', 'Z'])}`)));
  add('digest/sha512 wrong length', 50, () => get(digestPath(`sha512:${rng.hex(rng.pick([64, 127, 129, 256]))}`)));
  add('digest/sha512 valid, unknown', 40, () => get(digestPath(`sha512:${rng.hex(128)}`)));
  add('digest/empty parts', 50, () => get(digestPath(rng.pick(['sha256:', ':', `:${rng.hex(64)}`, 'sha256::', `sha256:${rng.hex(64)}:`, '::::', `SHA256:${rng.hex(64)}`, `sha256 :${rng.hex(64)}`.replace(' ', '%20')]))));
  add('digest/huge', 30, () => get(digestPath(`sha256:${rng.hex(rng.int(1000, 4000))}`)));
  add('digest/percent-encoded', 40, () =>
    get(digestPath(rng.pick([`sha256%3A${s.layerDigest.slice(7)}`, `sha256%3a${rng.hex(64)}`, `sha256%00:${rng.hex(64)}`, `sha256:%${rng.hex(2)}${rng.hex(62)}`, `sha256:${rng.hex(64)}%00`, `sha256%3A%2E%2E%2F%2E%2E`]))),
  );
  add('digest/path traversal', 30, () => get(digestPath(rng.pick(['sha256:../../../../etc/passwd', 'sha256:..%2F..%2Fetc%2Fpasswd', `sha256:${rng.hex(64)}/..`]))));

  // ---- tags
  const tagPath = (t: string) => `/v2/${rng.pick([REPO, 'alpine'])}/manifests/${t}`;
  const TAG_CHARS = `${ALNUM}ABCXYZ._-`;
  add('tag/128 chars (valid, unknown)', 30, () => get(tagPath(rng.str(1, ALNUM) + rng.str(127, TAG_CHARS))));
  add('tag/129+ chars', 60, () => get(tagPath(rng.str(1, ALNUM) + rng.str(rng.int(128, 600), TAG_CHARS))));
  add('tag/leading . or -', 60, () => get(tagPath(`${rng.pick(['.', '-', '..', '-.'])}${rng.str(rng.int(0, 20), TAG_CHARS)}`)));
  add('tag/illegal characters', 80, () => {
    const t = rng.str(rng.int(1, 10), TAG_CHARS);
    const bad = rng.pick(['!', '$', '&', "'", '(', ')', '*', '+', ',', ';', '=', '@', '~', '[', ']', '%20', '%00', '%0A', '%25', '%2F', '%3F', '%23', '"', '<', '>', '\\', '^', '`', '{', '|', '}']);
    return get(tagPath(rng.chance(0.5) ? `${t}${bad}` : `${bad}${t}`));
  });
  add('tag/unicode', 40, () => get(tagPath(encodeURIComponent(rng.pick(['läst', 'latest\u0000', '版本', '💥', 'v1\u202e', 'ǅ'])))));
  add('tag/query-like and encoded', 40, () => get(tagPath(rng.pick(['latest%3Fx%3D1', 'latest%2F..%2F..', '%2e', '%2e%2e', '%', '%zz', '%E0%A4%A', 'latest%', '3.19%00']))));

  // ---- one kind of object asked for as another
  const xName = () => rng.pick([REPO, 'alpine']);
  add('cross/layer digest asked as manifest', 160, () => ({
    method: readMethod(rng),
    path: `/v2/${xName()}/manifests/${s.layerDigest}`,
    headers: rng.chance(0.5) ? { accept: ALL_MANIFEST_TYPES } : ({} as Record<string, string>),
  }));
  add('cross/config digest asked as manifest', 60, () => ({ method: readMethod(rng), path: `/v2/${xName()}/manifests/${s.configDigest}`, headers: {} }));
  add('cross/manifest digest asked as blob', 80, () => ({
    method: readMethod(rng),
    path: `/v2/${xName()}/blobs/${s.manifestDigest}`,
    headers: rng.chance(0.3) ? { range: `bytes=${rng.int(0, 50)}-${rng.int(0, 400)}` } : ({} as Record<string, string>),
  }));

  // ---- Range
  const ranges: [string, () => string][] = [
    ['non-numeric', () => `bytes=${rng.pick(['abc', 'a-b', '0-z', 'x-', '-x', 'NaN-1', '1e3-2e3', '0x10-0x20'])}`],
    ['end before start', () => `bytes=${rng.int(5, 400)}-${rng.int(0, 4)}`],
    ['huge numbers', () => rng.pick([`bytes=99999999999999999999999-`, `bytes=0-${'9'.repeat(rng.int(20, 400))}`, `bytes=${'9'.repeat(rng.int(16, 30))}-${'9'.repeat(31)}`, `bytes=-${'9'.repeat(rng.int(16, 40))}`, `bytes=${2 ** 53}-${2 ** 53 + 1}`])],
    ['zero suffix', () => rng.pick(['bytes=-0', 'bytes=-00', 'bytes= -0', 'bytes=-0000000'])],
    ['100-part multi-range', () => `bytes=${Array.from({ length: 100 }, (_, i) => `${i * 3}-${i * 3 + rng.int(0, 2)}`).join(',')}`],
    ['other units', () => rng.pick([`items=0-1`, `bits=0-7`, `Bytes=0-1`, `BYTES=0-10`, `bytes 0-10`, `bytes:0-10`, `=0-1`, `0-10`, `none`])],
    ['empty or separators only', () => rng.pick(['bytes=', 'bytes=-', 'bytes=,', 'bytes=,,,', 'bytes=--', 'bytes==0-1', ' ', ''])],
    ['negative and spaces', () => rng.pick(['bytes=-5--1', 'bytes=0 - 10', 'bytes = 0-10', 'bytes=\t0-10', 'bytes=0-10 ', 'bytes=+1-+5', 'bytes=-1-5'])],
  ];
  for (const [kind, make] of ranges) {
    add(`range/${kind}`, 50, () => {
      const path = rng.pick([
        `/v2/${REPO}/blobs/${s.layerDigest}`,
        `/v2/alpine/blobs/${s.layerDigest}`,
        `/v2/${REPO}/blobs/${s.configDigest}`,
        `/v2/${REPO}/blobs/${sha256Hex(rng)}`,
        `/v2/${REPO}/manifests/${TAG}`,
      ]);
      return { method: readMethod(rng), path, headers: { range: make() } };
    });
  }

  // ---- query strings
  const qBase = () => rng.pick([`/v2/${REPO}/tags/list`, `/v2/alpine/tags/list`, `/v2/${REPO}/manifests/${TAG}`, `/v2/${REPO}/blobs/${s.layerDigest}`, `/v2/${validName(rng)}/tags/list`]);
  add('query/ns unknown host', 50, () => get(`${qBase()}?ns=${rng.pick(['evil.example.com', 'localhost', '127.0.0.1', 'quay.io', 'x'.repeat(300), '169.254.169.254', 'docker.io.evil.com', 'DOCKER.IO.', 'docker%2Eio'])}`));
  add('query/ns garbage', 40, () => get(`${qBase()}?ns=${rng.pick(['%00', '%', '%zz', '%E2%82', 'docker.io%00', 'docker.io&ns=ghcr.io', '%F0%9F%98%80', '..', '%2F%2F'])}`));
  add('query/n huge', 40, () => get(`${qBase()}?n=${rng.pick(['99999999999999999999999', String(2 ** 53 + 1), '1' + '0'.repeat(rng.int(10, 400)), '4294967296', '2147483648'])}`));
  add('query/n negative or not a number', 40, () => get(`${qBase()}?n=${rng.pick(['-1', '-0', '1.5', '1e3', 'abc', '0x10', '%201', '%2B1', 'Infinity', 'NaN'])}`));
  add('query/last garbage', 50, () =>
    get(`${qBase()}?${rng.chance(0.5) ? 'n=2&' : ''}last=${rng.pick(['%00', '-bad', '.dot', 'a'.repeat(rng.int(129, 2000)), '%FF%FE', 'a%20b', '%2F..%2F', '💥'].map((x) => (x === '💥' ? encodeURIComponent(x) : x)))}`),
  );
  add('query/repeated params', 50, () => get(`${qBase()}?${Array.from({ length: rng.int(2, 200) }, () => rng.pick(['n=1', 'n=2', 'last=a', 'ns=docker.io', 'n=', 'last=', 'ns='])).join('&')}`));
  add('query/invalid percent-encoding', 50, () => get(`${qBase()}?${rng.pick(['%', '%%', '%zz=1', 'n=%', 'last=%G0', 'n=%FF', '%E0%A4%A', 'ns=%', '&&&', '=', '==&=='])}`));
  add('query/huge query string', 20, () => get(`${qBase()}?${rng.pick(['x', 'n', 'last'])}=${rng.str(rng.int(4000, 12000), ALNUM)}`));

  // ---- headers
  const hBase = () => rng.pick([`/v2/${REPO}/manifests/${TAG}`, `/v2/alpine/manifests/${TAG}`, `/v2/${REPO}/blobs/${s.layerDigest}`, `/v2/${REPO}/tags/list`, '/v2/', `/v2/${REPO}/manifests/${s.manifestDigest}`]);
  add('header/huge Accept', 60, () => {
    const types: string[] = [];
    const target = rng.int(2000, 12000);
    while (types.join(', ').length < target) types.push(rng.pick([`application/vnd.${rng.str(8, LOWER)}+json`, ALL_MANIFEST_TYPES, '*/*;q=0', `text/${rng.str(5, LOWER)};q=0.${rng.int(0, 9)}`, 'application/json']));
    return { method: readMethod(rng), path: hBase(), headers: { accept: types.join(', ') } };
  });
  add('header/garbage Accept', 60, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: { accept: rng.pick([',,,,', ';;;', '*/*;q=abc', 'application/vnd.oci.image.index.v1+json;q=-1', '/', 'a/b/c', ';q=1', '\u00ff\u00fe', '*;*', 'application/json;' + 'x'.repeat(500)]) },
  }));
  add('header/Authorization Basic garbage', 60, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: { authorization: rng.pick(['Basic !!!', 'Basic ', 'Basic', 'Basic ====', `Basic ${rng.bytes(48).toString('base64')}`, `Basic ${Buffer.from(':').toString('base64')}`, `Basic ${Buffer.from('admin:' + 'x'.repeat(2000)).toString('base64')}`, 'basic Og==']) },
  }));
  add('header/Authorization Bearer 8 KiB junk', 60, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: { authorization: `Bearer ${rng.str(8192, `${ALNUM}ABCDEFGHIJKLMNOPQRSTUVWXYZ._-~+/=`)}` },
  }));
  add('header/Authorization other schemes', 40, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: { authorization: rng.pick(['Bearer', 'Bearer ', 'Negotiate abc', 'Digest username="a"', 'AWS4-HMAC-SHA256 Credential=x', 'x', '\u00ff', 'Bearer a.b.c']) },
  }));
  add('header/peer marker and forwarding junk', 40, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: { 'x-registry-mirror-peer': rng.pick(['1', 'true', '', 'x'.repeat(1000)]), 'x-forwarded-for': rng.pick(['1.2.3.4', 'garbage', '::1, 127.0.0.1']), 'x-forwarded-proto': 'gopher' },
  }));
  add('header/odd Host and conditional headers', 40, () => ({
    method: readMethod(rng),
    path: hBase(),
    headers: {
      host: rng.pick(['evil.example.com', 'localhost:0', '[::1', 'a'.repeat(300), '127.0.0.1:99999']),
      'if-none-match': rng.pick(['*', '"x"', 'garbage', `"${s.manifestDigest}"`]),
      'if-modified-since': rng.pick(['yesterday', 'Thu, 01 Jan 1970 00:00:00 GMT', '0']),
      'accept-encoding': rng.pick(['zstd', 'gzip;q=2', 'br, *', 'identity;q=0']),
    },
  }));

  // ---- methods on every endpoint
  const endpoints = [
    '/v2/', '/v2', `/v2/${REPO}/manifests/${TAG}`, `/v2/${REPO}/manifests/${s.manifestDigest}`, `/v2/${REPO}/blobs/${s.layerDigest}`,
    `/v2/${REPO}/blobs/uploads/`, `/v2/${REPO}/blobs/uploads/${rng.hex(32)}`, `/v2/${REPO}/tags/list`, '/v2/_catalog',
    `/v2/${REPO}/referrers/${s.manifestDigest}`, '/', '/status.json', '/metrics', '/healthz', '/readyz',
  ];
  for (const method of ['PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE']) {
    add(`method/${method}`, endpoints.length * 4, (i) => {
      const withBody = (method === 'PUT' || method === 'POST' || method === 'PATCH') && i % 2 === 0;
      const body = withBody ? (rng.chance(0.2) ? rng.bytes(rng.int(64 * 1024, 256 * 1024)) : Buffer.from(JSON.stringify({ schemaVersion: 2, junk: rng.hex(16) }))) : undefined;
      return {
        method,
        path: endpoints[i % endpoints.length]!,
        headers: body ? { 'content-type': rng.pick(['application/octet-stream', 'application/vnd.oci.image.manifest.v1+json', 'text/plain']), 'content-length': String(body.length) } : ({} as Record<string, string>),
        body,
      };
    });
  }

  // ---- paths outside /v2 and unknown /v2 endpoints
  add('path/outside /v2', 150, () =>
    get(rng.pick([
      '/', '/status.json', '/metrics', '/healthz', '/readyz', '/v1/', '/v1/_ping', '/v3/', '/v2x', '/v2.0/', '//v2/', '/V2/', '/favicon.ico', '/robots.txt',
      '/.env', '/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/admin', '/api/v1/pods', '/_/health', '/healthz/../metrics', '/metrics?x=%zz',
      `/${rng.str(rng.int(1, 2000), ALNUM + '/._-~%')}`, '/status.json?' + 'a'.repeat(5000), '/index.html', '/?ns=evil.example.com', '/*', '/%00',
    ])),
  );
  add('path/unknown /v2 endpoint', 100, () =>
    get(rng.pick([
      `/v2/${REPO}`, `/v2/${REPO}/`, `/v2/${REPO}/manifests`, `/v2/${REPO}/manifests/`, `/v2/${REPO}/blobs`, `/v2/${REPO}/blobs/`, `/v2/${REPO}/tags`,
      `/v2/${REPO}/tags/list/`, `/v2/${REPO}/tags/list/x`, `/v2/${REPO}/manifests/${TAG}/x`, `/v2/${REPO}/foo/bar`, '/v2/_catalog?n=-1', '/v2/_catalog?n=99999999999999999999',
      `/v2/${REPO}/referrers/${rng.hex(10)}`, `/v2/${REPO}/blobs/uploads/${rng.hex(8)}/../..`, '/v2/../v2/', '/v2/./', `/v2/./${REPO}/manifests/${TAG}`, '/v2/%2e%2e/', '/v2//', '/v2/?',
    ])),
  );
  add('path/absolute-form, asterisk, no leading slash', 30, () => get(rng.pick(['http://evil.example.com/v2/', `http://127.0.0.1/v2/${REPO}/manifests/${TAG}`, '*', 'v2/', '?x'])));

  // ---- random mutations of valid URLs
  const MUTATION_CHARS = `${ALNUM}ABCDEFGHIJKLMNOPQRSTUVWXYZ/._-:~%@!$&'()*+,;=?#[]{}|\\^\`"<>é\u00ff`;
  const mutate = (url: string): string => {
    let u = url;
    for (let k = rng.int(1, 4); k > 0; k--) {
      const at = rng.int(4, Math.max(4, u.length - 1));
      switch (rng.int(0, 5)) {
        case 0: u = u.slice(0, at) + rng.str(1, MUTATION_CHARS) + u.slice(at); break; // insert
        case 1: u = u.slice(0, at) + u.slice(at + 1); break; // delete
        case 2: u = u.slice(0, at) + rng.str(1, MUTATION_CHARS) + u.slice(at + 1); break; // replace
        case 3: u = u.slice(0, at) + u.slice(at, at + rng.int(1, 20)).repeat(rng.int(2, 5)) + u.slice(at); break; // repeat a run
        case 4: u = u.slice(0, at) + `%${rng.hex(2).toUpperCase()}` + u.slice(at); break; // percent byte
        default: u = u.slice(0, at) + '/' + u.slice(at); break; // extra segment
      }
    }
    return u;
  };
  add('mutate/manifest by tag URL', 500, () => get(mutate(`/v2/${REPO}/manifests/${TAG}`), rng.chance(0.3) ? { accept: ALL_MANIFEST_TYPES } : {}));
  add('mutate/manifest by digest URL', 250, () => get(mutate(`/v2/${REPO}/manifests/${s.manifestDigest}`)));
  add('mutate/blob URL', 350, () => get(mutate(`/v2/${REPO}/blobs/${s.layerDigest}`)));
  add('mutate/tags URL', 200, () => get(mutate(`/v2/${REPO}/tags/list?n=2&last=a`)));

  // Bursts: each class in runs of 8 consecutive requests, the runs shuffled together.
  const chunks: Probe[][] = [];
  for (const g of groups) for (let i = 0; i < g.length; i += 8) chunks.push(g.slice(i, i + 8));
  return rng.shuffle(chunks).flat();
}

// ------------------------------------------------------------------ HTTP client

function send(agent: http.Agent, port: number, p: Probe): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const chunks: Buffer[] = [];
    let kept = 0;
    let status: number | undefined;
    let headers: http.IncomingHttpHeaders = {};
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ status, headers, body: Buffer.concat(chunks), error });
    };
    let req: http.ClientRequest;
    try {
      req = http.request({ host: '127.0.0.1', port, method: p.method, path: p.path, headers: p.headers, agent }, (res) => {
        status = res.statusCode;
        headers = res.headers;
        res.on('data', (c: Buffer) => {
          if (kept < 64 * 1024) {
            chunks.push(c);
            kept += c.length;
          }
        });
        res.on('end', () => finish());
        res.on('error', (e) => finish(`response error: ${e.message}`));
        res.on('aborted', () => finish('response aborted'));
      });
    } catch (e) {
      // The client library refused to send it: a harness bug, reported as such.
      resolve({ headers: {}, body: Buffer.alloc(0), error: `harness could not send: ${(e as Error).message}` });
      return;
    }
    const timer = setTimeout(() => {
      req.destroy(new Error(`no complete response within ${REQUEST_TIMEOUT_MS} ms`));
    }, REQUEST_TIMEOUT_MS);
    req.on('error', (e: NodeJS.ErrnoException) => finish(`${e.code ?? 'error'}: ${e.message}`));
    req.end(p.body);
  });
}

const BREAKER_REASON = 'status 503 from the open circuit breaker';

/** The mirror's own 503 for an upstream its breaker has marked down (Retry-After, "marked down"). */
function fromBreaker(o: Outcome): boolean {
  return o.status === 503 && o.headers['retry-after'] !== undefined && (o.body.length === 0 || o.body.includes('marked down'));
}

/**
 * A request-target that is not HTTP: bytes outside visible ASCII (RFC 9112 §3.2, RFC 3986),
 * or neither origin-form (/…), absolute-form (http://…) nor asterisk-form (*).
 */
function malformedTarget(path: string): boolean {
  return /[^\x21-\x7e]/.test(path) || !/^(\/|\*$|https?:\/\/)/.test(path);
}

/** What is wrong with this response, or undefined. */
function judge(p: Probe, o: Outcome): string | undefined {
  // Malformed at the HTTP layer: Node's parser refuses it before the mirror sees it, with a
  // bare 400, or (on a kept-alive connection that already carried a response) by closing it.
  // That is what the raw-HTTP rule asks for: a 400 or a closed connection.
  const malformed = malformedTarget(p.path);
  if (o.status === undefined) return malformed && /ECONNRESET|socket hang up/.test(o.error ?? '') ? undefined : `no response (${o.error})`;
  const status = o.status;
  if (status >= 500) return fromBreaker(o) ? BREAKER_REASON : `status ${status}`;
  if (o.error !== undefined) return `response cut short (${o.error})`;
  if (malformed && !o.headers['x-request-id']) return status === 400 ? undefined : `malformed request-target answered ${status}`;
  if (status >= 400 && status < 500 && isV2Path(p.path) && p.method !== 'HEAD') return envelopeProblem(o.headers, o.body);
  return undefined;
}

function envelopeProblem(headers: http.IncomingHttpHeaders, body: Buffer): string | undefined {
  const type = String(headers['content-type'] ?? '');
  if (!/^application\/json\s*(;|$)/i.test(type)) return `4xx with Content-Type ${JSON.stringify(type)}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return '4xx body is not JSON';
  }
  const errors = (parsed as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(errors) || errors.length === 0) return '4xx body has no non-empty errors array';
  if (!errors.every((e) => !!e && typeof e === 'object' && typeof (e as { code?: unknown }).code === 'string' && (e as { code: string }).code !== '')) {
    return '4xx errors[] entry without a string code';
  }
  return undefined;
}

// ------------------------------------------------------------------ reporting

const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}…(${s.length} chars)` : s);
const printable = (s: string) => s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);

function showPath(path: string): string {
  const p = printable(path);
  return p.length > 160 ? `${p.slice(0, 110)}…${p.slice(-40)} (${path.length} chars)` : p;
}

function errorCodes(body: Buffer): string | undefined {
  try {
    const errors = (JSON.parse(body.toString('utf8')) as { errors?: { code?: unknown }[] }).errors;
    return Array.isArray(errors) ? errors.map((e) => String(e?.code)).join(',') : undefined;
  } catch {
    return undefined;
  }
}

function tally(values: string[]): string {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([v, n]) => `${v} ×${n}`).join(', ');
}

interface Failure {
  label: string;
  reason: string;
  /** A one-line description of the request and what came back. */
  example: string;
  status: string;
  code: string | undefined;
}

function report(title: string, failures: Failure[], sentByLabel: Map<string, number>): string {
  const byLabel = new Map<string, Failure[]>();
  for (const f of failures) byLabel.set(f.label, [...(byLabel.get(f.label) ?? []), f]);
  const own = (list: Failure[]) => list.filter((f) => f.reason !== BREAKER_REASON);
  const lines = [`${title}: ${failures.length} failing responses in ${byLabel.size} request classes`];
  const breaker = failures.length - own(failures).length;
  if (breaker > 0) {
    const only = [...byLabel.values()].filter((list) => own(list).length === 0).length;
    lines.push(
      `(${breaker} of them are the mirror's own 503 "upstream … is marked down after repeated failures": once its circuit breaker opened, ` +
        `every request that needed the upstream failed; ${only} classes failed only that way. Classes with failures of their own come first.)`,
    );
  }
  const ordered = [...byLabel].sort((a, b) => own(b[1]).length - own(a[1]).length || b[1].length - a[1].length);
  for (const [label, list] of ordered) {
    lines.push('');
    lines.push(`■ ${label}: ${list.length} of ${sentByLabel.get(label) ?? '?'} failed`);
    lines.push(`    why: ${tally(list.map((f) => f.reason))}`);
    lines.push(`    status/code: ${tally(list.map((f) => `${f.status}${f.code ? ` ${f.code}` : ''}`))}`);
    // Examples of the class's own failures first.
    const examples = [...own(list), ...list.filter((f) => f.reason === BREAKER_REASON)].slice(0, 3);
    for (const f of examples) lines.push(`    e.g. ${f.example}`);
  }
  return lines.join('\n');
}

function describeProbe(p: Probe): string {
  const headers = Object.entries(p.headers)
    .filter(([k]) => k !== 'content-length')
    .map(([k, v]) => `${k}: ${clip(printable(v), 60)}`);
  const body = p.body ? ` [body ${p.body.length} bytes]` : '';
  return `${p.method} ${showPath(p.path)}${headers.length ? ` {${headers.join('; ')}}` : ''}${body}`;
}

function describeOutcome(o: Outcome): string {
  if (o.status === undefined) return `no response: ${o.error}`;
  const reqId = o.headers['x-request-id'] ? '' : ' (no X-Request-Id: not from the mirror\'s handler)';
  const body = o.body.toString('utf8').slice(0, 200);
  return `${o.status}${reqId} ${body ? printable(body) : '(empty body)'}`;
}

// ------------------------------------------------------------------ raw sockets

interface RawCase {
  label: string;
  /** The bytes, written in these pieces. */
  writes: Buffer[];
  /** Pause between pieces. */
  gapMs?: number;
  /**
   * reject: malformed; a 400 (or, for an oversized head, 431) or a closed connection.
   * answer: well-formed if odd; any status below 500, with the OCI envelope on /v2 4xx.
   */
  expect: 'reject' | 'answer';
  /** Extra statuses acceptable for `reject` (431 for an oversized request head). */
  alsoAccept?: number[];
  /** The request target, for the envelope rule on `answer` cases. */
  target?: string;
}

type RawOutcome =
  | { kind: 'response'; status: number; headers: Record<string, string>; body: Buffer; raw: string }
  | { kind: 'closed'; detail: string }
  | { kind: 'hung' };

function rawExchange(port: number, c: RawCase): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = Buffer.alloc(0);
    let settled = false;
    const timers: NodeJS.Timeout[] = [];
    const done = (o: RawOutcome) => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      socket.destroy();
      resolve(o);
    };
    const parsed = (): RawOutcome | undefined => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const head = data.subarray(0, end).toString('latin1').split('\r\n');
      const m = /^HTTP\/\d\.\d (\d{3})/.exec(head[0] ?? '');
      if (!m) return { kind: 'response', status: 0, headers: {}, body: Buffer.alloc(0), raw: data.toString('latin1').slice(0, 200) };
      const headers: Record<string, string> = {};
      for (const line of head.slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const body = data.subarray(end + 4);
      const length = headers['content-length'] !== undefined ? Number(headers['content-length']) : 0;
      if (body.length < length) return undefined;
      return { kind: 'response', status: Number(m[1]), headers, body: body.subarray(0, length), raw: data.toString('latin1').slice(0, 200) };
    };
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const o = parsed();
      if (o) done(o);
    });
    const closed = (detail: string) => {
      if (data.length > 0) {
        const o = parsed();
        done(o ?? { kind: 'response', status: 0, headers: {}, body: Buffer.alloc(0), raw: data.toString('latin1').slice(0, 200) });
      } else done({ kind: 'closed', detail });
    };
    socket.on('end', () => closed('FIN'));
    socket.on('close', () => closed('closed'));
    socket.on('error', (e: NodeJS.ErrnoException) => closed(e.code ?? e.message));
    socket.on('connect', async () => {
      for (const [i, piece] of c.writes.entries()) {
        if (settled || socket.destroyed) return;
        socket.write(piece);
        if (c.gapMs && i < c.writes.length - 1) await new Promise((r) => setTimeout(r, c.gapMs));
      }
      // Nothing yet after a while: say we are done sending, and give the server a moment more.
      if (settled) return;
      timers.push(
        setTimeout(() => {
          if (!settled && !socket.destroyed) socket.end();
          timers.push(setTimeout(() => done({ kind: 'hung' }), 1500));
        }, 2000),
      );
    });
  });
}

function rawCases(rng: Rng, s: Seeded): RawCase[] {
  const cases: RawCase[] = [];
  const b = (s: string) => Buffer.from(s, 'latin1');
  const targets = ['/v2/', `/v2/${REPO}/manifests/${TAG}`, `/v2/${REPO}/blobs/${s.layerDigest}`, `/v2/${REPO}/tags/list`];
  const reject = (label: string, text: string | Buffer, extra: Partial<RawCase> = {}) =>
    cases.push({ label: `raw/${label}`, writes: [typeof text === 'string' ? b(text) : text], expect: 'reject', ...extra });
  for (const t of targets) {
    const ok = (extraHeaders = '') => `GET ${t} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extraHeaders}\r\n`;
    reject('bad request line', `GET ${t} HTTP/1.1 extra\r\nHost: x\r\n\r\n`);
    reject('bad request line', `GET ${t}\tHTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('bad request line', `GET\r\n\r\n`);
    reject('bad request line', `${t} HTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('bad request line', `GET ${t} HTP/1.1\r\nHost: x\r\n\r\n`);
    reject('bad request line', `GET ${t} HTTP/1.x\r\nHost: x\r\n\r\n`);
    reject('bad request line', `GET ${t.slice(0, 4)}\u0000${t.slice(4)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('bad request line', `get ${t} HTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('bad request line', `G\u00c9T ${t} HTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('unknown method', `FOO ${t} HTTP/1.1\r\nHost: x\r\n\r\n`);
    reject('unsupported HTTP version', `GET ${t} HTTP/2.0\r\nHost: x\r\n\r\n`);
    reject('unsupported HTTP version', `GET ${t} HTTP/3.7\r\nHost: x\r\n\r\n`);
    reject('HTTP/0.9', `GET ${t}\r\n`);
    reject('HTTP/0.9', `GET ${t}\r\n\r\n`);
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nNoColonHere\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\n: empty-name\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nBad Name: x\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nX-Ctl: a\u0001b\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nX-Nul: a\u0000b\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nX-\u00e9: 1\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nX-Bare-CR: a\rb\r\n\r\n'));
    reject('bad header syntax', ok().replace('\r\n\r\n', '\r\nAccept : x\r\n\r\n'));
    reject('missing Host', `GET ${t} HTTP/1.1\r\n\r\n`);
    reject('absurd Content-Length', ok('Content-Length: 99999999999999999999999\r\n'));
    reject('absurd Content-Length', ok('Content-Length: -1\r\n'));
    reject('absurd Content-Length', ok('Content-Length: abc\r\n'));
    reject('absurd Content-Length', ok('Content-Length: 1, 2\r\n'));
    reject('absurd Content-Length', ok('Content-Length: 1\r\nContent-Length: 2\r\n'));
    reject('absurd Content-Length', ok('Content-Length: 0x10\r\n'));
    reject('absurd Content-Length', ok('Content-Length: 5\r\nTransfer-Encoding: chunked\r\n'));
    reject('bad Transfer-Encoding', ok('Transfer-Encoding: chunked, identity\r\n'));
    reject('bad Transfer-Encoding', ok('Transfer-Encoding: gzip\r\n'));
    reject('oversized request head', ok(`X-Big: ${'a'.repeat(20_000)}\r\n`), { alsoAccept: [431] });
    reject('oversized request head', `GET ${t}?${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, { alsoAccept: [431] });
    reject('oversized request head', ok(Array.from({ length: 3000 }, (_, i) => `X-${i}: y\r\n`).join('')), { alsoAccept: [431] });
    // Well-formed, if unusual: answered like any request.
    const answer = (label: string, writes: Buffer[], gapMs?: number) => cases.push({ label: `raw/${label}`, writes, gapMs, expect: 'answer', target: t });
    answer('request split into tiny writes', [...b(ok())].map((x) => Buffer.from([x])), 2);
    answer('request split into tiny writes', (b(ok('Accept: */*\r\n')).toString('latin1').match(/[\s\S]{1,3}/g) ?? []).map(b), 1);
    answer('request split into tiny writes', [b(`GET ${t} HT`), b('TP/1.1\r\nHo'), b('st: x\r'), b('\n\r'), b('\n')], 20);
    answer('Content-Length without a body on GET', [b(ok('Content-Length: 1000000000\r\n'))]);
    answer('HTTP/1.0 without Host', [b(`GET ${t} HTTP/1.0\r\n\r\n`)]);
    answer('absolute-form target', [b(`GET http://evil.example.com${t} HTTP/1.1\r\nHost: evil.example.com\r\n\r\n`)]);
  }
  // Not HTTP at all, and HTTP/2 on an HTTP/1 port.
  reject('not HTTP: TLS ClientHello', Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), rng.bytes(200)]));
  reject('not HTTP: HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
  reject('not HTTP: CONNECT', 'CONNECT evil.example.com:443 HTTP/1.1\r\nHost: evil.example.com:443\r\n\r\n');
  reject('not HTTP: blank lines', '\r\n\r\n\r\n\r\n');
  for (let i = 0; i < 40; i++) {
    // Random bytes that cannot start a request (a method starts with a letter).
    const junk = rng.bytes(rng.int(1, 300));
    junk[0] = rng.pick([0x00, 0x16, 0x20, 0x7f, 0xff, 0x2f, 0x31]);
    reject('random bytes', junk);
  }
  for (let i = 0; i < 20; i++) {
    // Control characters (not HTAB) are not allowed in a field value (RFC 9110 §5.5).
    const controls = [...Array(32).keys()].filter((x) => x !== 0x09 && x !== 0x0a && x !== 0x0d).concat(0x7f);
    const junk = Buffer.from(Array.from({ length: rng.int(1, 100) }, () => rng.pick(controls)));
    reject('control characters in a header value', Buffer.concat([b(`GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a`), junk, b('\r\n\r\n')]));
  }
  for (let i = 0; i < 10; i++) {
    // A malformed request, in tiny writes.
    const text = b(`GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: ${rng.pick(['-5', 'zz', '1 1'])}\r\n\r\n`);
    cases.push({ label: 'raw/malformed request split into tiny writes', writes: [...text].map((x) => Buffer.from([x])), gapMs: 1, expect: 'reject' });
  }
  return cases;
}

function judgeRaw(c: RawCase, o: RawOutcome): string | undefined {
  if (o.kind === 'hung') return 'neither answered nor closed (3.5 s, after our FIN)';
  if (o.kind === 'closed') return undefined;
  if (o.status >= 500) return `status ${o.status}`;
  if (o.status === 0) return 'unparseable response';
  if (c.expect === 'reject') return o.status === 400 || c.alsoAccept?.includes(o.status) ? undefined : `malformed request answered ${o.status}`;
  // A response from the mirror's handler (it sets X-Request-Id) to a /v2 path: the envelope rule.
  if (o.status >= 400 && o.headers['x-request-id'] && c.target && isV2Path(c.target)) return envelopeProblem(o.headers, o.body);
  return undefined;
}

function describeRaw(c: RawCase): string {
  const bytes = Buffer.concat(c.writes);
  const text = printable(bytes.toString('latin1'));
  const shown = text.length > 160 ? `${text.slice(0, 120)}…${text.slice(-30)} (${bytes.length} bytes)` : text;
  return `«${shown}»${c.writes.length > 1 ? ` in ${c.writes.length} writes` : ''}`;
}

// ------------------------------------------------------------------ the test

let upstream: RealUpstream;
let mirror: TestMirror;
let seeded: Seeded;
let port: number;
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

beforeAll(async () => {
  upstream = await startRealUpstream();
  const image: Image = buildImage({ format: 'oci', layers: [smallLayer([{ path: 'etc/alpine-release', content: '3.19.0\n' }])] });
  await upstream.push(REPO, TAG, image);
  await upstream.push(REPO, UNTOUCHED_TAG, image);
  seeded = {
    manifestDigest: image.manifest.digest,
    layerDigest: image.layers[0]!.digest,
    configDigest: image.config.digest,
  };
  mirror = await startMirror({ upstreamUrl: upstream.url });
  port = Number(new URL(mirror.url).port);
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.stop();
});

async function pull(path: string, headers: Record<string, string> = {}): Promise<Outcome> {
  const agent = new http.Agent({ keepAlive: false });
  try {
    return await send(agent, port, { label: 'check', method: 'GET', path, headers });
  } finally {
    agent.destroy();
  }
}

describe('hostile and malformed requests', () => {
  it('baseline: the seeded image is served (and so cached) before the fuzz', async () => {
    const manifest = await pull(`/v2/${REPO}/manifests/${TAG}`, { accept: ALL_MANIFEST_TYPES });
    expect([manifest.status, manifest.headers['docker-content-digest']]).toEqual([200, seeded.manifestDigest]);
    for (const digest of [seeded.layerDigest, seeded.configDigest]) {
      const blob = await pull(`/v2/${REPO}/blobs/${digest}`);
      expect(blob.status).toBe(200);
      expect(sha256(blob.body)).toBe(digest);
    }
  });

  it(`HTTP: at least ${MIN_REQUESTS} generated requests get no 5xx, and /v2 4xx are OCI error envelopes`, async () => {
    const rng = new Rng(SEED);
    const probes = generate(rng, seeded);
    expect(probes.length).toBeGreaterThanOrEqual(MIN_REQUESTS);
    const sentByLabel = new Map<string, number>();
    const failures: Failure[] = [];
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const started = performance.now();
    let next = 0;
    let sent = 0;
    let envelopes = 0;
    const statuses: string[] = [];
    const worker = async () => {
      for (;;) {
        if (performance.now() - started > HTTP_PHASE_BUDGET_MS) return;
        const i = next++;
        if (i >= probes.length) return;
        const p = probes[i]!;
        const o = await send(agent, port, p);
        sent++;
        sentByLabel.set(p.label, (sentByLabel.get(p.label) ?? 0) + 1);
        statuses.push(o.status === undefined ? 'none' : String(o.status));
        if (o.status !== undefined && o.status >= 400 && o.status < 500 && isV2Path(p.path) && p.method !== 'HEAD' && o.headers['x-request-id']) envelopes++;
        const reason = judge(p, o);
        if (reason) {
          failures.push({
            label: p.label,
            reason,
            example: `${describeProbe(p)} → ${describeOutcome(o)}`,
            status: o.status === undefined ? 'none' : String(o.status),
            code: errorCodes(o.body),
          });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    agent.destroy();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(
      `fuzz HTTP phase: ${sent} of ${probes.length} generated requests sent in ${seconds} s (${sentByLabel.size} classes), ${failures.length} failing; ` +
        `statuses: ${tally(statuses)}; ${envelopes} /v2 4xx envelopes checked`,
    );
    // The harness itself: the traffic really was hostile and really was answered.
    expect(envelopes, 'too few /v2 4xx responses were checked: is the harness sending what it means to?').toBeGreaterThan(1_000);
    const summary = `${sent} requests in ${seconds} s, ${sentByLabel.size} classes`;
    expect(failures.length, `${report(`HTTP fuzz (${summary})`, failures, sentByLabel)}\n`).toBe(0);
    expect(sent, `the phase ran out of time after ${sent} of ${probes.length} requests`).toBe(probes.length);
  }, 60_000);

  it('raw malformed HTTP gets a 400 or a closed connection, never a 5xx', async () => {
    const rng = new Rng(SEED ^ 0x7a7);
    const cases = rawCases(rng, seeded);
    const sentByLabel = new Map<string, number>();
    const failures: Failure[] = [];
    let next = 0;
    let sent = 0;
    const started = performance.now();
    const worker = async () => {
      for (;;) {
        if (performance.now() - started > RAW_PHASE_BUDGET_MS) return;
        const i = next++;
        if (i >= cases.length) return;
        const c = cases[i]!;
        const o = await rawExchange(port, c);
        sent++;
        sentByLabel.set(c.label, (sentByLabel.get(c.label) ?? 0) + 1);
        const reason = judgeRaw(c, o);
        if (reason) {
          const got = o.kind === 'response' ? `${o.status} «${printable(o.raw)}»` : o.kind === 'closed' ? `closed (${o.detail})` : 'no answer, still open';
          failures.push({ label: c.label, reason, example: `${describeRaw(c)} → ${got}`, status: o.kind === 'response' ? String(o.status) : o.kind, code: o.kind === 'response' ? errorCodes(o.body) : undefined });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(`fuzz raw phase: ${sent} of ${cases.length} raw exchanges in ${seconds} s (${sentByLabel.size} classes), ${failures.length} failing`);
    expect(failures.length, `${report(`raw HTTP (${sent} exchanges in ${seconds} s)`, failures, sentByLabel)}\n`).toBe(0);
    expect(sent, `the phase ran out of time after ${sent} of ${cases.length} exchanges`).toBe(cases.length);
  }, 40_000);

  it('the seeded image is still served afterwards: cache intact, upstream not marked down', async () => {
    const manifestOk = (o: Outcome) =>
      o.status !== 200 ? `status ${o.status}` : o.headers['docker-content-digest'] !== seeded.manifestDigest ? `Docker-Content-Digest ${o.headers['docker-content-digest']}` : sha256(o.body) !== seeded.manifestDigest ? 'body does not hash to its digest' : undefined;
    const blobOk = (digest: string) => (o: Outcome) => (o.status !== 200 ? `status ${o.status}` : sha256(o.body) !== digest ? `bytes hash to ${sha256(o.body)}` : undefined);
    const accept = { accept: ALL_MANIFEST_TYPES };
    const checks: [string, string, (o: Outcome) => string | undefined, Record<string, string>][] = [
      // Cached by the baseline: the hostile traffic must not have corrupted or dropped them.
      ['manifest by tag (cached)', `/v2/${REPO}/manifests/${TAG}`, manifestOk, accept],
      ['manifest by tag, short name (cached)', `/v2/alpine/manifests/${TAG}`, manifestOk, accept],
      ['manifest by digest (cached)', `/v2/${REPO}/manifests/${seeded.manifestDigest}`, manifestOk, accept],
      ['layer blob (cached)', `/v2/${REPO}/blobs/${seeded.layerDigest}`, blobOk(seeded.layerDigest), {}],
      ['config blob (cached)', `/v2/${REPO}/blobs/${seeded.configDigest}`, blobOk(seeded.configDigest), {}],
      // Never asked for before: only the upstream can answer it.
      ['manifest by a tag never requested (needs the upstream)', `/v2/${REPO}/manifests/${UNTOUCHED_TAG}`, manifestOk, accept],
    ];
    const results = await Promise.all(checks.map(([, path, , headers]) => pull(path, headers)));
    const problems: string[] = [];
    checks.forEach(([what, path, ok], i) => {
      const o = results[i]!;
      const wrong = o.status === undefined ? `no response: ${o.error}` : ok(o);
      if (wrong) problems.push(`${what}: GET ${path} → ${wrong}; ${describeOutcome(o)}`);
    });
    const status = await pull('/status.json');
    let breakers = '';
    try {
      breakers = (JSON.parse(status.body.toString('utf8')) as { upstreams: { name: string; breaker: string }[] }).upstreams.map((u) => `${u.name}: ${u.breaker}`).join(', ');
    } catch {
      breakers = `unreadable /status.json (${status.status})`;
    }
    expect(problems, `after the fuzz (breakers: ${breakers}):\n${problems.join('\n')}\n`).toEqual([]);
  }, 30_000);
});
