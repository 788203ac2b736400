import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, posix, relative } from 'node:path';
import { test } from 'node:test';

/**
 * The layering of docs/architecture.md, checked on the sources themselves (no build, no
 * model): a request goes http → protocol (openai, anthropic) → serving → engine → runtime,
 * nothing imports upward, the two protocols do not know each other, and no files import
 * each other in a circle.
 */

const SRC = new URL('../../src/', import.meta.url).pathname;

/** One import of one file: where it points (a path under src/, e.g. `engine/types.ts`) and whether only types cross. */
interface Edge {
  from: string;
  to: string;
  specifier: string;
  typeOnly: boolean;
}

/** Folders a folder must not import; a folder not named here has no rule. */
const FORBIDDEN: Record<string, string[]> = {
  runtime: ['openai', 'anthropic', 'serving', 'http'],
  engine: ['openai', 'anthropic', 'serving', 'http'],
  serving: ['openai', 'anthropic', 'http', 'runtime'],
  openai: ['anthropic', 'http', 'runtime'],
  anthropic: ['openai', 'http', 'runtime'],
  text: ['openai', 'anthropic', 'serving', 'http'],
  model: ['openai', 'anthropic', 'serving', 'http'],
  util: ['openai', 'anthropic', 'serving', 'http'],
  export: ['openai', 'anthropic', 'serving', 'http'],
};

/** Serving and protocol code sees the engine only through its public modules. */
const ENGINE_PUBLIC = new Set(['engine/engine.ts', 'engine/types.ts']);
const ENGINE_CLIENTS = new Set(['serving', 'openai', 'anthropic']);

/** `engine` for `engine/types.ts`; files directly in src/ belong to the root, ''. */
function folderOf(file: string): string {
  const i = file.indexOf('/');
  return i < 0 ? '' : file.slice(0, i);
}

// Import clauses hold only names, braces, commas, `*` and `as`/`type`, so these cannot run on into code.
const STATIC_IMPORT = /^[ \t]*import\s+(type\s+)?([\w$\s,{}*]+?)\s*from\s*['"]([^'"]+)['"]/gm;
const SIDE_EFFECT_IMPORT = /^[ \t]*import\s*['"]([^'"]+)['"]/gm;
const RE_EXPORT = /^[ \t]*export\s+(type\s+)?(\*(?:\s+as\s+[\w$]+)?|\{[^}]*\})\s*from\s*['"]([^'"]+)['"]/gm;
const DYNAMIC_IMPORT = /(\bawait\s+)?\bimport\(\s*['"]([^'"]+)['"]\s*\)(\s*\.\s*then\b)?/g;

/** True when every name of a clause such as `{ type A, type B }` is a type (TypeScript then drops the import). */
function namesAreTypes(clause: string): boolean {
  const m = /^\{([^}]*)\}$/.exec(clause.trim());
  if (!m) return false;
  const names = m[1]
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return names.length > 0 && names.every((n) => /^type\s/.test(n));
}

/** Every import and re-export of one source, as (specifier, type-only) pairs. */
function importsOf(source: string): Array<{ specifier: string; typeOnly: boolean }> {
  const out: Array<{ specifier: string; typeOnly: boolean }> = [];
  for (const m of source.matchAll(STATIC_IMPORT)) out.push({ specifier: m[3], typeOnly: Boolean(m[1]) || namesAreTypes(m[2]) });
  for (const m of source.matchAll(SIDE_EFFECT_IMPORT)) out.push({ specifier: m[1], typeOnly: false });
  for (const m of source.matchAll(RE_EXPORT)) out.push({ specifier: m[3], typeOnly: Boolean(m[1]) || namesAreTypes(m[2]) });
  // `await import('x')` loads a module; a bare `import('x').T` names a type.
  for (const m of source.matchAll(DYNAMIC_IMPORT)) out.push({ specifier: m[2], typeOnly: !m[1] && !m[3] });
  return out;
}

/** The file under src/ a relative specifier names (`./x.js` is `x.ts`), or null for packages and files elsewhere. */
function resolve(from: string, specifier: string, exists: (file: string) => boolean): string | null {
  if (!specifier.startsWith('.')) return null;
  const target = posix.normalize(posix.join(posix.dirname(from), specifier));
  if (target.startsWith('..')) return null;
  const base = target.replace(/\.(js|mjs|cjs|ts)$/, '');
  for (const candidate of [`${base}.ts`, `${base}.mts`, `${base}.cts`, `${target}/index.ts`]) if (exists(candidate)) return candidate;
  return null;
}

/** The import graph of a set of sources keyed by their path under src/. */
function importGraph(sources: Map<string, string>): Edge[] {
  const edges: Edge[] = [];
  for (const [from, source] of sources) {
    for (const { specifier, typeOnly } of importsOf(source)) {
      const to = resolve(from, specifier, (f) => sources.has(f));
      if (to !== null) edges.push({ from, to, specifier, typeOnly });
    }
  }
  return edges;
}

/** One line per import that breaks the layering. */
function layerViolations(edges: Edge[]): string[] {
  const out: string[] = [];
  for (const e of edges) {
    const a = folderOf(e.from);
    const b = folderOf(e.to);
    if (FORBIDDEN[a]?.includes(b)) out.push(`src/${e.from} imports '${e.specifier}' (src/${e.to}): ${a}/ must not import ${b}/`);
    else if (ENGINE_CLIENTS.has(a) && b === 'engine' && !ENGINE_PUBLIC.has(e.to)) {
      out.push(`src/${e.from} imports '${e.specifier}' (src/${e.to}): ${a}/ may use only engine/engine.ts and engine/types.ts`);
    }
  }
  return out;
}

/** Strongly connected components of more than one file, or of one file importing itself (Tarjan). */
function tangles(nodes: string[], next: Map<string, string[]>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (next.get(v) ?? []).includes(v)) out.push(scc);
    }
  };
  for (const v of nodes) if (!index.has(v)) visit(v);
  return out;
}

/** A shortest path from `start` to `goal` inside `within` (breadth first), both ends included. */
function path(start: string, goal: string, next: Map<string, string[]>, within: Set<string>): string[] {
  const prev = new Map<string, string | null>([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    if (v === goal) break;
    for (const w of next.get(v) ?? []) {
      if (within.has(w) && !prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  const out: string[] = [];
  for (let v: string | null | undefined = goal; v != null; v = prev.get(v)) out.unshift(v);
  return out;
}

function adjacency(edges: Edge[]): Map<string, string[]> {
  const next = new Map<string, string[]>();
  for (const e of edges) {
    const list = next.get(e.from) ?? [];
    if (!list.includes(e.to)) list.push(e.to);
    next.set(e.from, list);
  }
  return next;
}

/** One line per import cycle, naming its files in order; imports of types only count too (no cycles anywhere). */
function importCycles(edges: Edge[]): string[] {
  const out: string[] = [];
  const show = (cycle: string[]) => cycle.map((f) => `src/${f}`).join(' → ');
  const all = adjacency(edges);
  const nodes = [...new Set(edges.flatMap((e) => [e.from, e.to]))].sort();
  for (const scc of tangles(nodes, all)) {
    const within = new Set(scc);
    const start = [...scc].sort()[0];
    const first = (all.get(start) ?? []).find((w) => within.has(w))!;
    out.push(`cycle: ${show([start, ...path(first, start, all, within)])}`);
  }
  return out;
}

function readSources(root: string): Map<string, string> {
  const sources = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      if (statSync(full).isDirectory()) walk(full);
      else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) sources.set(relative(root, full).split('\\').join('/'), readFileSync(full, 'utf8'));
    }
  };
  walk(root);
  return sources;
}

test('the checker finds forbidden imports and cycles in a made-up tree', () => {
  const tree = new Map([
    ['engine/engine.ts', "import type { X } from '../openai/x.js';\nexport const e = 1;\n"],
    ['engine/core.ts', "import { a } from './a.js';\n"],
    ['engine/a.ts', "import {\n  core,\n} from './core.js';\n"],
    ['runtime/r.ts', "export { s } from '../serving/s.js';\n"],
    ['engine/types.ts', 'export type E = number;\n'],
    ['serving/s.ts', "import { type E } from '../engine/types.js';\nimport { grid } from '../engine/core.js';\n"],
    ['openai/x.ts', "import { m } from '../anthropic/m.js';\nimport type { T } from '../runtime/r.js';\nimport './side.js';\n"],
    ['openai/side.ts', '// import { nothing } from "../http/app.js"\n'],
    ['anthropic/m.ts', "const t: import('../openai/x.js').X = 1;\n"],
    ['http/app.ts', "import { serve } from '../openai/x.js';\nimport { s } from '../serving/s.js';\n"],
  ]);
  const edges = importGraph(tree);
  assert.deepEqual(layerViolations(edges).sort(), [
    "src/anthropic/m.ts imports '../openai/x.js' (src/openai/x.ts): anthropic/ must not import openai/",
    "src/engine/engine.ts imports '../openai/x.js' (src/openai/x.ts): engine/ must not import openai/",
    "src/openai/x.ts imports '../anthropic/m.js' (src/anthropic/m.ts): openai/ must not import anthropic/",
    "src/openai/x.ts imports '../runtime/r.js' (src/runtime/r.ts): openai/ must not import runtime/",
    "src/runtime/r.ts imports '../serving/s.js' (src/serving/s.ts): runtime/ must not import serving/",
    "src/serving/s.ts imports '../engine/core.js' (src/engine/core.ts): serving/ may use only engine/engine.ts and engine/types.ts",
  ]);
  const cycles = importCycles(edges);
  // openai/x.ts ⇄ anthropic/m.ts crosses folders (one way by a type only); engine/core.ts ⇄ engine/a.ts loads modules.
  assert.ok(
    cycles.some((c) => c.includes('src/openai/x.ts') && c.includes('src/anthropic/m.ts')),
    cycles.join('\n'),
  );
  assert.ok(cycles.includes('cycle: src/engine/a.ts → src/engine/core.ts → src/engine/a.ts'), cycles.join('\n'));
  assert.equal(cycles.length, 2, cycles.join('\n'));
});

test('a cycle of type-only imports inside one folder is a cycle too', () => {
  const edges = importGraph(
    new Map([
      ['serving/a.ts', "import type { B } from './b.js';\n"],
      ['serving/b.ts', "import { type A } from './a.js';\n"],
    ]),
  );
  assert.equal(edges.length, 2);
  assert.deepEqual(importCycles(edges), ['cycle: src/serving/a.ts → src/serving/b.ts → src/serving/a.ts']);
});

test('src/ keeps its layers: nothing imports upward, the protocols stay apart, no cycles', () => {
  assert.ok(existsSync(SRC), `no sources at ${SRC}`);
  const sources = readSources(SRC);
  const edges = importGraph(sources);
  // Guards against a checker that reads nothing: the HTTP routes hand bodies to serving modules.
  assert.ok(sources.size > 50, `only ${sources.size} files under ${SRC}`);
  assert.ok(
    edges.some((e) => folderOf(e.from) === 'http' && folderOf(e.to) === 'serving'),
    'found no import of src/serving from src/http',
  );
  const problems = [...layerViolations(edges), ...importCycles(edges)];
  assert.deepEqual(problems, [], `\n${problems.join('\n')}`);
});
