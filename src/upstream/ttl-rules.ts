// How long a tag is trusted, by repository and tag: an ordered list of rules (`latest` 5
// minutes, semver tags a day, …), the first match wins, the upstream's ttl when none does.
// Asked only when a tag row's expiry is written (a miss or a revalidation), never on a hit.

import type { TtlRuleConfig } from '../config.js';
import { globToRegExp } from '../oci/reference.js';

interface CompiledRule {
  repository: RegExp | undefined;
  tag: RegExp | undefined;
  ttlMs: number;
}

export class TtlRules {
  private readonly rules: CompiledRule[];

  /** The rules were checked by the configuration (globs and regexes compile). */
  constructor(rules: readonly TtlRuleConfig[], private readonly defaultTtlMs: number) {
    this.rules = rules.map((r) => ({
      repository: r.repository === undefined ? undefined : globToRegExp(r.repository),
      // A regex matches anywhere in the tag unless it is anchored; a glob matches the whole tag.
      tag: r.tagRegex !== undefined ? new RegExp(r.tagRegex) : r.tag !== undefined ? globToRegExp(r.tag) : undefined,
      ttlMs: r.ttlMs,
    }));
  }

  /** `repository` as the upstream names it (`library/alpine` on Docker Hub). */
  ttlFor(repository: string, tag: string): number {
    for (const rule of this.rules) {
      if (rule.repository && !rule.repository.test(repository)) continue;
      if (rule.tag && !rule.tag.test(tag)) continue;
      return rule.ttlMs;
    }
    return this.defaultTtlMs;
  }
}
