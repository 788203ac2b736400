import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from './support/runner.js';

// Three replicas behind HAProxy, one restarted and one killed under load
// (scripts/cluster_test.ts, `npm run cluster:test`), in a short version.
const haproxy = !spawnSync('haproxy', ['-v']).error;
const required = process.env.QWEN3_SERVE_REQUIRE_HAPROXY === '1';

test('three replicas behind HAProxy: a SIGTERM restart and a SIGKILL under load lose no request a client cannot retry', {
  skip: !haproxy && !required ? 'HAProxy is not installed: apt-get install haproxy to run this test (CI does)' : false,
}, async () => {
  assert.ok(haproxy, 'QWEN3_SERVE_REQUIRE_HAPROXY is set but haproxy is not installed');
  const out = join(tempDir(), 'cluster');
  const script = new URL('../scripts/cluster_test.js', import.meta.url).pathname;
  const child = spawn(
    process.execPath,
    [script, '--requests', '40', '--concurrency', '6', '--output-len', '96', '--input-len', '16', '--port-base', '18200', '--out', out],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? 1)));
  assert.equal(code, 0, stderr);
  const result = JSON.parse(readFileSync(`${out}.json`, 'utf8')) as {
    sent: number;
    completed: number;
    failures: Record<string, number>;
    events: Record<string, number>;
    sessions: { atDown: number; atExit: number };
  };
  assert.equal(result.sent, 40);
  assert.ok(result.events.r1Down < result.events.r1Exit, 'HAProxy stopped routing to the draining replica before it stopped answering');
  assert.equal(result.sessions.atExit, result.sessions.atDown);
  for (const kind of Object.keys(result.failures)) assert.ok(['HTTP 502', 'HTTP 503', 'network', 'stream cut'].includes(kind), kind);
});
