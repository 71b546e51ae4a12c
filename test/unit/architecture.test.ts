// The shape of src/ (docs/ARCHITECTURE.md): no import cycles, the layers' arrows point one
// way, and every file the map names exists.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SRC = join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** src-relative file → the src-relative files it imports (static, dynamic and type-only). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(SRC)) {
    const text = readFileSync(file, 'utf8');
    const targets: string[] = [];
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g)) {
      const spec = m[1] ?? m[2]!;
      if (!spec.startsWith('.')) continue;
      const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
      if (existsSync(target)) targets.push(relative(SRC, target));
    }
    graph.set(relative(SRC, file), targets);
  }
  return graph;
}

function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, 'active');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'active') found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return found;
}

describe('the shape of src/', () => {
  const graph = importGraph();

  it('finds the imports it checks (the check can fail)', () => {
    expect(graph.get('mirror.ts')).toContain('core/manifest-service.ts');
    expect(cycles(new Map([['a.ts', ['b.ts']], ['b.ts', ['a.ts']]]))).toHaveLength(1);
  });

  it('has no import cycles', () => {
    expect(cycles(graph).map((c) => c.join(' -> '))).toEqual([]);
  });

  // Which top-level parts each part may import (besides itself). The arrows point one way:
  // server and airgap use the core through mirror.ts; the core uses cache and upstream;
  // cache never talks HTTP, upstream never touches the disk; everything may use oci and http.
  const leaves = ['oci', 'http', 'clock.ts', 'config.ts', 'units.ts'];
  const allowed: Record<string, string[]> = {
    oci: [],
    http: [],
    cache: [...leaves],
    upstream: [...leaves, 'metrics.ts', 'cache/download-source.ts'],
    cluster: [...leaves, 'upstream', 'cache/download-source.ts'],
    core: [...leaves, 'metrics.ts', 'cache', 'upstream', 'cluster'],
    'mirror.ts': [...leaves, 'metrics.ts', 'cache', 'upstream', 'cluster', 'core'],
    events: [...leaves, 'metrics.ts'],
    server: [...leaves, 'metrics.ts', 'mirror.ts', 'core/results.ts', 'cluster/peer-auth.ts', 'upstream/selector.ts', 'events'],
    airgap: [...leaves, 'mirror.ts', 'upstream/selector.ts'],
    // The primary builds no mirror: it may not reach mirror.ts, cache or the server.
    workers: [...leaves, 'core/sibling-workers.ts', 'upstream/rate-limiter.ts'],
  };
  const partOf = (file: string) => (file.includes('/') ? file.slice(0, file.indexOf('/')) : file);

  it('imports only along the layers’ arrows', () => {
    const wrong: string[] = [];
    for (const [file, targets] of graph) {
      const rules = allowed[partOf(file)];
      if (!rules) continue;
      for (const target of targets) {
        const ok = partOf(target) === partOf(file) || rules.some((r) => target === r || partOf(target) === r);
        if (!ok) wrong.push(`${file} -> ${target}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('names only files that exist in docs/ARCHITECTURE.md, and every src/ directory', () => {
    const map = readFileSync(join(ROOT, 'docs/ARCHITECTURE.md'), 'utf8');
    const named = [...map.matchAll(/`(src\/[\w./-]+\.ts)`/g)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(20);
    expect(named.filter((f) => !existsSync(join(ROOT, f)))).toEqual([]);
    const dirs = readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => `src/${e.name}/`);
    expect(dirs.filter((d) => !named.some((f) => f.startsWith(d)))).toEqual([]);
  });
});
