import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { FIXTURE_DIR, tempDir } from './support/runner.js';

const CLI = new URL('../src/cli.js', import.meta.url).pathname;
const EXPORT_SCRIPT = new URL('../scripts/export_onnx.js', import.meta.url).pathname;

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, ...env } });
}

test('qwen3-serve --help lists the commands; export --help lists its flags', () => {
  const top = run([CLI, '--help']);
  assert.equal(top.status, 0);
  assert.match(top.stdout, /export/);
  const exp = run([CLI, 'export', '--help']);
  assert.equal(exp.status, 0);
  for (const flag of ['--model', '--out', '--dtype', '--block-size', '--layout', '--device', '--force']) assert.match(exp.stdout, new RegExp(flag));
});

test('bad flags and values exit 2 with a message naming them', () => {
  const unknown = run([CLI, 'export', '--bogus']);
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /--bogus/);
  const badDtype = run([CLI, 'export', '--model', 'x', '--out', 'y', '--dtype', 'int3']);
  assert.equal(badDtype.status, 2);
  assert.match(badDtype.stderr, /--dtype/);
  const badBlock = run([CLI, 'export', '--model', 'x', '--out', 'y', '--dtype', 'int4', '--block-size', '48']);
  assert.equal(badBlock.status, 2);
  assert.match(badBlock.stderr, /--block-size/);
  const blockWithoutInt4 = run([CLI, 'export', '--model', 'x', '--out', 'y', '--dtype', 'fp16', '--block-size', '64']);
  assert.equal(blockWithoutInt4.status, 2);
  assert.match(blockWithoutInt4.stderr, /block size applies to int4 weights only/);
  const missing = run([CLI, 'export', '--model', 'x']);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--out/);
  const command = run([CLI, 'frobnicate']);
  assert.equal(command.status, 2);
  assert.match(command.stderr, /unknown command "frobnicate"/);
});

test('the export script exports the fixture and logs plain lines when not on a terminal', () => {
  const out = join(tempDir(), 'export');
  const r = run([EXPORT_SCRIPT, '--model', FIXTURE_DIR, '--out', out, '--dtype', 'fp16', '--layout', 'standard']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /export fp16\/standard: 100%/);
  assert.match(r.stderr, /done/);
  assert.ok(existsSync(join(out, 'onnx', 'model.onnx')) && existsSync(join(out, 'onnx', 'model.onnx_data')));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'qwen3-serve.json']) {
    assert.ok(existsSync(join(out, f)), f);
  }
  const again = run([EXPORT_SCRIPT, '--model', FIXTURE_DIR, '--out', out]);
  assert.equal(again.status, 2, 'an existing output directory is a usage error');
  assert.match(again.stderr, /--force/);
  const bad = run([EXPORT_SCRIPT, '--model', join(out, 'nope'), '--out', join(out, 'x')]);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /does not exist/);
});

test("the README's configuration table is the one the serve flags generate (npm run docs:flags)", async () => {
  const { readmeWithFlagTable } = await import('../src/cli/readme_flags.js');
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  assert.equal(readme, readmeWithFlagTable(readme), 'README.md is out of date: run npm run docs:flags');
});

test('qwen3-serve generate and the server give the same tokens for the same prompt, seed and checkpoint defaults', async () => {
  const { fixtureExport } = await import('./support/engine.js');
  const { startTestServer } = await import('./support/server.js');
  // Defaults the old generate command dropped (min_p, repetition_penalty) change the tokens.
  const dir = tempDir('qwen3-serve-gen-');
  cpSync(await fixtureExport('fast'), dir, { recursive: true });
  const generation = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ ...generation, min_p: 0.05, repetition_penalty: 1.8 }));
  const cli = run([
    CLI,
    'generate',
    '--model',
    dir,
    '--raw',
    '--prompt',
    'Hello there, how',
    '--max-tokens',
    '24',
    '--seed',
    '3',
    '--device',
    'cpu',
    '--threads',
    '1',
  ]);
  assert.equal(cli.status, 0, cli.stderr);
  const server = await startTestServer(dir);
  try {
    const r = await server.client.completions.create({ model: server.model, prompt: 'Hello there, how', max_tokens: 24, seed: 3 });
    assert.ok(r.choices[0].text.length > 0);
    assert.equal(cli.stdout, r.choices[0].text);
  } finally {
    await server.close();
  }
});
