// Tag TTL rules (issue 15, item 5): the matcher, and how the configuration builds and checks them.
import { describe, expect, it } from 'vitest';
import { buildConfig, ConfigError, type TtlRuleConfig } from '../../src/config.js';
import { UpstreamRegistry } from '../../src/upstream/registry.js';
import { TtlRules } from '../../src/upstream/ttl-rules.js';

const MINUTE = 60_000;
const rule = (r: Partial<TtlRuleConfig> & { ttlMs: number }): TtlRuleConfig => ({ repository: undefined, tag: undefined, tagRegex: undefined, ...r });

function problems(doc: unknown): string[] {
  try {
    buildConfig(doc, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('tag TTL rules', () => {
  it('the first matching rule wins; no match is the default TTL', () => {
    const rules = new TtlRules(
      [
        rule({ repository: 'library/*', tag: 'latest', ttlMs: 5 * MINUTE }),
        rule({ tag: 'latest', ttlMs: 1 * MINUTE }),
        rule({ tagRegex: '^v?[0-9]+\\.[0-9]+\\.[0-9]+$', ttlMs: 1440 * MINUTE }),
        rule({ tag: 'v1.*', ttlMs: 2 * MINUTE }),
      ],
      10 * MINUTE,
    );
    expect(rules.ttlFor('library/alpine', 'latest')).toBe(5 * MINUTE);
    expect(rules.ttlFor('team/app', 'latest')).toBe(1 * MINUTE);
    // Matches the regex rule and the later glob: the earlier one counts.
    expect(rules.ttlFor('team/app', 'v1.2.3')).toBe(1440 * MINUTE);
    expect(rules.ttlFor('team/app', 'v1.2')).toBe(2 * MINUTE);
    expect(rules.ttlFor('team/app', 'edge')).toBe(10 * MINUTE);
  });

  it('`*` stays within a path component, `**` crosses them, `?` is one character', () => {
    const rules = new TtlRules(
      [rule({ repository: 'org/*', ttlMs: 1 }), rule({ repository: 'deep/**', ttlMs: 2 }), rule({ repository: 'app?', ttlMs: 3 })],
      99,
    );
    expect(rules.ttlFor('org/app', 'x')).toBe(1);
    expect(rules.ttlFor('org/team/app', 'x')).toBe(99);
    expect(rules.ttlFor('deep/team/app', 'x')).toBe(2);
    expect(rules.ttlFor('deep/app', 'x')).toBe(2);
    expect(rules.ttlFor('app1', 'x')).toBe(3);
    expect(rules.ttlFor('app12', 'x')).toBe(99);
    // A glob matches the whole name, not a part of it.
    expect(rules.ttlFor('my/org/app', 'x')).toBe(99);
  });

  it('a tag glob matches the whole tag; a regex matches anywhere unless anchored', () => {
    const rules = new TtlRules([rule({ tag: '*-rc*', ttlMs: 1 }), rule({ tagRegex: 'nightly', ttlMs: 2 })], 99);
    expect(rules.ttlFor('a', '1.0-rc1')).toBe(1);
    expect(rules.ttlFor('a', '1.0')).toBe(99);
    expect(rules.ttlFor('a', 'build-nightly-7')).toBe(2);
  });

  it('a rule with neither repository nor tag matches everything (a catch-all)', () => {
    expect(new TtlRules([rule({ ttlMs: 7 })], 99).ttlFor('any/thing', 'tag')).toBe(7);
    expect(new TtlRules([], 99).ttlFor('any/thing', 'tag')).toBe(99);
  });
});

describe('ttlRules and negativeTtl in the configuration', () => {
  it('an upstream tries its own rules first, then the top-level ones, then its ttl', () => {
    const c = buildConfig({
      ttl: '10m',
      ttlRules: [{ tag: 'latest', ttl: '1m' }],
      upstreams: {
        'docker.io': { url: 'https://registry-1.docker.io', ttlRules: [{ repository: 'library/*', tag: 'latest', ttl: '5m' }] },
        'ghcr.io': { url: 'https://ghcr.io', ttl: '1h' },
      },
    }, {});
    const [hub, ghcr] = c.upstreams.map((u) => new UpstreamRegistry(u));
    expect(hub!.ttlFor('library/alpine', 'latest')).toBe(5 * MINUTE);
    expect(hub!.ttlFor('team/app', 'latest')).toBe(1 * MINUTE);
    expect(hub!.ttlFor('team/app', 'v1')).toBe(10 * MINUTE);
    expect(ghcr!.ttlFor('org/app', 'latest')).toBe(1 * MINUTE);
    expect(ghcr!.ttlFor('org/app', 'v1')).toBe(60 * MINUTE);
  });

  it('refuses a bad regex, a bad glob, a rule with both tag and tagRegex, or no ttl, naming the rule', () => {
    const found = problems({
      ttlRules: [{ tagRegex: '([unclosed', ttl: '1m' }],
      upstreams: {
        'docker.io': {
          url: 'https://registry-1.docker.io',
          ttlRules: [
            { repository: 'Library/[abc]', ttl: '1m' },
            { tag: 'latest', tagRegex: 'latest', ttl: '1m' },
            { tag: 'with/slash', ttl: '1m' },
            { tag: 'latest' },
            { tag: 'latest', ttl: 'soon' },
          ],
        },
      },
    });
    expect(found).toEqual(expect.arrayContaining([
      expect.stringMatching(/^ttlRules\.0\.tagRegex: "\(\[unclosed" is not a regular expression/),
      expect.stringMatching(/^upstreams\.docker\.io\.ttlRules\.0\.repository: "Library\/\[abc\]" is not a repository glob/),
      expect.stringMatching(/^upstreams\.docker\.io\.ttlRules\.1: .*tag.*tagRegex/),
      expect.stringMatching(/^upstreams\.docker\.io\.ttlRules\.2\.tag: "with\/slash" is not a tag glob/),
      expect.stringMatching(/^upstreams\.docker\.io\.ttlRules\.3\.ttl: /),
      expect.stringMatching(/^upstreams\.docker\.io\.ttlRules\.4\.ttl: "soon" is not a duration/),
    ]));
    expect(found).toHaveLength(6);
  });

  it('negativeTtl: 30 s by default, per upstream over the top level, 0 = off', () => {
    const c = buildConfig({
      negativeTtl: '1m',
      upstreams: { 'docker.io': { url: 'https://registry-1.docker.io' }, 'ghcr.io': { url: 'https://ghcr.io', negativeTtl: 0 } },
    }, {});
    expect(c.upstreams.map((u) => [u.name, u.negativeTtlMs])).toEqual([['docker.io', 60_000], ['ghcr.io', 0]]);
    expect(buildConfig({}, {}).upstreams[0]!.negativeTtlMs).toBe(30_000);
  });
});
