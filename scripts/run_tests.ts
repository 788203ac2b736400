#!/usr/bin/env node
/**
 * Runs the test files (`npm test`'s last step) in a few `node --test` processes side by side,
 * each taking every Nth file and running them one after another in that process
 * (`--test-isolation=none`): the files share what they load once per process (modules, the
 * fixture's tokenizer and exports, random checkpoints), which separate processes would each
 * build again. Usage: run_tests.js [--shards N] [file ...] (default: every *.test.js in dist).
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';

const root = join(new URL('.', import.meta.url).pathname, '..');
const args = process.argv.slice(2);
let shards = 4;
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--shards') shards = Number(args[++i]);
  else files.push(args[i]);
}
if (!Number.isInteger(shards) || shards < 1) {
  console.error('--shards takes a whole number of at least 1');
  process.exit(2);
}

/** Every compiled test file under dist, in a stable order. */
function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.test.js'))
    .map((e) => relative(process.cwd(), join(e.parentPath, e.name)))
    .sort();
}

const list = files.length > 0 ? files : testFiles(root);
const env = { ...process.env, NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? join(root, '.compile-cache') };
const totals = new Map<string, number>();
const started = Date.now();

function runShard(k: number): Promise<number> {
  const child = spawn(process.execPath, ['--test', '--test-isolation=none', `--test-shard=${k}/${shards}`, ...list], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const prefix = shards > 1 ? `[${k}/${shards}] ` : '';
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      // Each shard's closing counts are summed below rather than printed N times.
      const count = /^ℹ (tests|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(line);
      if (count) totals.set(count[1], (totals.get(count[1]) ?? 0) + Number(count[2]));
      else if (!/^ℹ (suites|duration_ms) /.test(line)) console.log(prefix + line);
    });
  }
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      console.log(
        `${prefix}finished in ${((Date.now() - started) / 1000).toFixed(0)} s${code ? ` (exit code ${code})` : signal ? ` (${signal})` : ''}`,
      );
      resolve(code ?? (signal ? 1 : 0));
    }),
  );
}

const codes = await Promise.all(Array.from({ length: shards }, (_, i) => runShard(i + 1)));
for (const [name, n] of totals) console.log(`ℹ ${name} ${n}`);
console.log(`ℹ duration_ms ${Date.now() - started}`);
process.exitCode = codes.some((c) => c !== 0) ? 1 : 0;
