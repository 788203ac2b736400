import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

// ONNX Runtime reads ORT_DISABLE_TELEMETRY when it starts: loading our runtime sets it first, unless the operator chose.
const SESSION = new URL('./session.js', import.meta.url).href;
const probe = (env: NodeJS.ProcessEnv) =>
  execFileSync(
    process.execPath,
    ['--input-type=module', '-e', `await import(${JSON.stringify(SESSION)}); console.log(process.env.ORT_DISABLE_TELEMETRY)`],
    { env, encoding: 'utf8' },
  ).trim();

test('loading the runtime turns ONNX Runtime telemetry off, and keeps an explicit setting', () => {
  const { ORT_DISABLE_TELEMETRY: _, ...env } = process.env;
  assert.equal(probe(env), '1');
  assert.equal(probe({ ...env, ORT_DISABLE_TELEMETRY: '0' }), '0');
});
