import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';
import { parseServeConfig, startServer } from '../src/cli/serve_command.js';
import { readManifest } from '../src/export/manifest.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';

// The context a server announces is the one it serves: asked for more than the checkpoint
// has, it refuses to start; cut by the KV budget, it says so with both numbers.
const flags = (model: string, extra: string[]) => [
  '--model',
  model,
  '--port',
  '0',
  '--threads',
  '1',
  '--cache-dir',
  tempDir('qwen3-serve-cache-'),
  ...extra,
];

test('--max-model-len above the checkpoint positions is an error naming both numbers', async () => {
  const model = await fixtureExport('fast');
  const positions = readManifest(model).config.maxPositionEmbeddings;
  const config = parseServeConfig(flags(model, ['--max-model-len', String(positions + 1000)]), {})!;
  await assert.rejects(startServer(config, { logger: pino({ level: 'silent' }) }), (err: Error) => {
    assert.match(err.message, new RegExp(`--max-model-len ${positions + 1000} is more than this model's ${positions} positions`));
    return true;
  });
});

test('a KV budget too small for the whole context lowers max_model_len with a warning naming both numbers', async () => {
  const model = await fixtureExport('fast');
  const positions = readManifest(model).config.maxPositionEmbeddings;
  const lines: string[] = [];
  const sink = new Writable({ write: (chunk, _, done) => (lines.push(String(chunk)), done()) });
  const server = await startServer(parseServeConfig(flags(model, ['--kv-cache-memory', '256KiB']), {})!, { logger: pino({ level: 'info' }, sink) });
  try {
    const served = server.engine.info!.limits.maxModelLen;
    assert.ok(served < positions, `${served} < ${positions}`);
    const warning = lines
      .map((l) => JSON.parse(l) as { level: number; msg: string })
      .find((l) => l.level === 40 && /max_model_len lowered/.test(l.msg));
    assert.ok(warning, lines.join(''));
    assert.match(warning.msg, new RegExp(`from ${positions} to ${served} tokens.*--kv-cache-memory`));
  } finally {
    await server.close();
  }
});

test('a model that cannot fit beside its KV cache is refused at start, naming the numbers', async () => {
  const dir = await fixtureExport('fast');
  const config = parseServeConfig(['--model', dir, '--port', '0', '--threads', '1', '--kv-cache-memory', '65536GiB'], {})!;
  await assert.rejects(
    startServer(config, { logger: pino({ level: 'silent' }) }),
    /the model's weights \(\d+ MiB\) and the KV cache \(--kv-cache-memory, 67108864 MiB\) take \d+ MiB, more than the \d+ MiB of memory available/,
  );
});
