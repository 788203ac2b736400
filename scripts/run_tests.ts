#!/usr/bin/env node
/**
 * Runs the test files in a few processes at once, each running its share of the files one
 * after another (`node --test --test-isolation=none`):
 *   node dist/scripts/run_tests.js [--shards N] [--record] [files...]
 * A process per file, Node's default, builds the 11 MB tokenizer, compiles the modules and
 * starts ONNX Runtime again for every file; a shared process does that once. Files are dealt
 * to the shards by the CPU seconds each took (test/timings.json), the costliest first, so
 * the shards end together; `--record` writes that table again from this run.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const DIST = new URL('../', import.meta.url).pathname;
const TIMINGS = new URL('../../test/timings.json', import.meta.url).pathname;
const FILE_TIMES_REPORTER = new URL('../test/support/file_times_reporter.js', import.meta.url).pathname;

/** Longer than any one test takes on a loaded 2-core machine (the slowest take about a minute). */
const TEST_TIMEOUT_MS = 5 * 60_000;

const COUNT_KEYS = ['tests', 'pass', 'fail', 'cancelled', 'skipped', 'todo'] as const;
type Counts = Record<(typeof COUNT_KEYS)[number], number>;

function testFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (entry === 'node_modules' || entry.startsWith('.')) continue;
    if (statSync(path).isDirectory()) out.push(...testFiles(path));
    else if (entry.endsWith('.test.js')) out.push(path);
  }
  return out.sort();
}

/**
 * Files with hooks outside any describe(): in a shared process such a hook belongs to the
 * whole process, so a `before` would start a file's server when the shard starts and its
 * `after` stop it only when the shard ends.
 */
function unscopedHooks(files: string[]): string[] {
  return files.filter((f) => /^(before|after|beforeEach|afterEach)\(/m.test(readFileSync(f, 'utf8')));
}

/** The costliest first, each file to the shard with the least so far. */
function deal(files: string[], seconds: Record<string, number>, shards: number): string[][] {
  const known = Object.values(seconds).sort((a, b) => a - b);
  const typical = known.length > 0 ? known[Math.floor(known.length / 2)] : 5;
  const cost = (f: string) => seconds[relative(DIST, f)] ?? typical;
  const out = Array.from({ length: shards }, () => ({ total: 0, files: [] as string[] }));
  for (const f of [...files].sort((a, b) => cost(b) - cost(a))) {
    const least = out.reduce((a, b) => (b.total < a.total ? b : a));
    least.total += cost(f);
    least.files.push(f);
  }
  return out.map((s) => s.files).filter((s) => s.length > 0);
}

/** The counts Node's spec reporter ends its output with ("ℹ pass 7"). */
function countsOf(output: string): Counts {
  const counts = Object.fromEntries(COUNT_KEYS.map((k) => [k, 0])) as Counts;
  for (const key of COUNT_KEYS) {
    const m = new RegExp(`^ℹ ${key} (\\d+)$`, 'm').exec(output);
    if (m) counts[key] = Number(m[1]);
  }
  return counts;
}

interface ShardResult {
  ok: boolean;
  counts: Counts;
  wallS: number;
  /** CPU seconds each file took, when recording. */
  fileSeconds: Record<string, number>;
}

function runShard(index: number, files: string[], record: string | null): Promise<ShardResult> {
  const timesFile = record ? join(record, `shard-${index}.json`) : null;
  // A test that never settles fails by name after TEST_TIMEOUT_MS, and a handle a file left open
  // does not keep its shard alive: either would otherwise hang the run until CI's own limit.
  const args = [
    '--test',
    '--test-isolation=none',
    `--test-timeout=${TEST_TIMEOUT_MS}`,
    '--test-force-exit',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
  ];
  if (timesFile) args.push(`--test-reporter=${FILE_TIMES_REPORTER}`, `--test-reporter-destination=${timesFile}`);
  const started = performance.now();
  const child = spawn(process.execPath, [...args, ...files], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  // Whole lines, each marked with its shard, so that the shards' outputs interleave readably.
  const pending = ['', ''];
  const relay = (k: number) => (d: string) => {
    const text = pending[k] + d;
    output += d;
    const cut = text.lastIndexOf('\n') + 1;
    pending[k] = text.slice(cut);
    if (cut > 0) process.stdout.write(text.slice(0, cut).replace(/^(?=.)/gm, `[${index + 1}] `));
  };
  // Decoded as a stream, so a character split between two chunks stays whole.
  child.stdout.setEncoding('utf8').on('data', relay(0));
  child.stderr.setEncoding('utf8').on('data', relay(1));
  return new Promise((resolve) => {
    child.on('close', (code) => {
      for (const rest of pending) if (rest) process.stdout.write(`[${index + 1}] ${rest}\n`);
      const fileSeconds: Record<string, number> = {};
      // A process that died before its reporter finished leaves no times: its files keep none.
      if (timesFile && existsSync(timesFile)) {
        const times = JSON.parse(readFileSync(timesFile, 'utf8') || '{}') as Record<string, number>;
        for (const [file, t] of Object.entries(times)) fileSeconds[relative(DIST, file)] = Math.round(t * 10) / 10;
      }
      resolve({ ok: code === 0, counts: countsOf(output), wallS: (performance.now() - started) / 1000, fileSeconds });
    });
  });
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    record: { type: 'boolean', default: false },
    // One more than the cores: each shard runs its files one at a time and waits on servers and clients part of it.
    shards: { type: 'string', default: String(availableParallelism() + 1) },
  },
});
const files = positionals.length > 0 ? positionals.map((p) => resolve(p)) : testFiles(DIST);
const unscoped = unscopedHooks(files);
if (unscoped.length > 0) {
  process.stderr.write(
    `These test files have hooks outside a describe(); wrap each file's tests in one:\n${unscoped.map((f) => `  ${relative(process.cwd(), f)}`).join('\n')}\n`,
  );
  process.exit(2);
}
let seconds: Record<string, number> = {};
try {
  seconds = JSON.parse(readFileSync(TIMINGS, 'utf8')) as Record<string, number>;
} catch {
  // No table (or an unreadable one): every file counts the same.
}
const shards = deal(files, seconds, Math.max(1, Number(values.shards)));
const recordDir = values.record ? mkdtempSync(join(tmpdir(), 'qwen3-serve-test-times-')) : null;
const started = performance.now();
const results = await Promise.all(shards.map((s, i) => runShard(i, s, recordDir)));
const wallS = (performance.now() - started) / 1000;

const total = Object.fromEntries(COUNT_KEYS.map((k) => [k, results.reduce((s, r) => s + r.counts[k], 0)])) as Counts;
process.stdout.write(`\n${COUNT_KEYS.map((k) => `ℹ ${k} ${total[k]}`).join('\n')}\n`);
process.stdout.write(
  `ℹ files ${files.length} in ${shards.length} ${shards.length === 1 ? 'process' : 'processes'}: ${results.map((r) => `${r.wallS.toFixed(0)} s`).join(', ')}\n`,
);
process.stdout.write(`ℹ duration ${wallS.toFixed(1)} s\n`);
const failed = results.flatMap((r, i) => (r.ok ? [] : [i + 1]));
if (failed.length > 0) process.stdout.write(`\n✖ failed in process ${failed.join(', ')}: see the lines marked so above\n`);
if (recordDir) {
  // Some files: their rows replace theirs in the table. All: the table is this run's alone.
  const table = Object.assign(positionals.length > 0 ? { ...seconds } : {}, ...results.map((r) => r.fileSeconds)) as Record<string, number>;
  writeFileSync(TIMINGS, `${JSON.stringify(Object.fromEntries(Object.entries(table).sort()), null, 2)}\n`);
  rmSync(recordDir, { recursive: true, force: true });
  process.stdout.write(`wrote ${relative(process.cwd(), TIMINGS)}\n`);
}
process.exitCode = failed.length > 0 || total.fail > 0 || total.cancelled > 0 ? 1 : 0;
