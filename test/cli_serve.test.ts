import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { tempDir } from './support/runner.js';
import { healthOf, spawnServer, until } from './support/server.js';

const CLI = new URL('../src/cli.js', import.meta.url).pathname;

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
}

test('every command prints its help', () => {
  for (const cmd of ['serve', 'export', 'generate', 'bench']) {
    const r = run([cmd, '--help']);
    assert.equal(r.status, 0, cmd);
    assert.match(r.stdout, new RegExp(`Usage: qwen3-serve ${cmd}`));
  }
  assert.match(run(['--help']).stdout, /serve[\s\S]*export[\s\S]*generate[\s\S]*bench/);
});

test('invalid serve flags, values and environment variables exit 2 naming them', () => {
  const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
    [['--port', 'eighty'], {}, /--port/],
    [['--port', '70000'], {}, /--port/],
    [['--device', 'tpu'], {}, /--device/],
    [['--kv-dtype', 'fp8'], {}, /--kv-dtype/],
    [['--kv-cache-memory', 'lots'], {}, /--kv-cache-memory/],
    [['--max-num-seqs', '0'], {}, /--max-num-seqs/],
    [['--frobnicate'], {}, /frobnicate/],
    [['--model', 'a=./no-such-x', '--model', 'a=./no-such-y'], {}, /"a" is given twice/],
    [[], { QWEN3_SERVE_PORT: '-3' }, /QWEN3_SERVE_PORT/],
    [[], { QWEN3_SERVE_LOG_PROMPTS: 'perhaps' }, /QWEN3_SERVE_LOG_PROMPTS/],
  ];
  for (const [args, env, pattern] of cases) {
    const r = run(['serve', ...args], env);
    assert.equal(r.status, 2, `${args.join(' ')} ${JSON.stringify(env)}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
  }
  const gen = run(['generate', '--prompt', 'x', '--temperature', 'hot']);
  assert.equal(gen.status, 2);
  assert.match(gen.stderr, /--temperature/);
  const bench = run(['bench', '--concurrency', 'many']);
  assert.equal(bench.status, 2);
  assert.match(bench.stderr, /--concurrency/);
});

test('npm start with nothing configured serves the demo model: a streamed chat completion, then a clean SIGTERM', async () => {
  const cache = tempDir('qwen3-serve-start-');
  const child = spawn(process.execPath, [CLI, '--port', '0', '--host', '127.0.0.1', '--threads', '1', '--log-level', 'info'], {
    env: { ...process.env, QWEN3_SERVE_CACHE: cache },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  try {
    const started = Date.now();
    let url = '';
    while (!url && Date.now() - started < 60_000) {
      url = /serving qwen3-demo-random on cpu at (http:\/\/[\d.:]+)\/v1/.exec(log)?.[1] ?? '';
      await sleep(100);
    }
    assert.ok(url, `the server started within 60 s:\n${log}`);
    assert.match(log, /demo model with random weights/);
    // Qwen3's own context, so an agent's first request fits (README: "Use it with coding agents").
    assert.match(log, /"max_model_len":40960/);
    assert.match(log, /--model/);
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'qwen3-demo-random', messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 8, stream: true }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const body = await res.text();
    assert.match(body, /"role":"assistant"/);
    assert.match(body, /data: \[DONE\]\n\n$/);
    // SIGTERM: a request in flight still completes, then the process exits 0.
    const inflight = fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Hi', max_tokens: 40, ignore_eos: true }),
    });
    await until(async () => (await healthOf(url)).running === 1, 'the completion to run');
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    const done = (await (await inflight).json()) as { usage: { completion_tokens: number } };
    assert.equal(done.usage.completion_tokens, 40);
    assert.equal(await exited, 0);
  } finally {
    child.kill('SIGKILL');
  }
});

test('SIGTERM under load with a short --shutdown-timeout: requests end cleanly at the deadline and the process exits 0, every time', async () => {
  const { fixtureExport } = await import('./support/engine.js');
  const dir = await fixtureExport('fast');
  for (let round = 0; round < 3; round++) {
    const { url, child, out } = await spawnServer([
      '--model',
      dir,
      '--shutdown-timeout',
      '1',
      '--max-model-len',
      '8192',
      '--max-num-batched-tokens',
      '32',
    ]);
    try {
      // Long prompts keep the engine prefilling (in 32-token chunks) past the deadline.
      const streams = Array.from({ length: 6 }, (_, i) =>
        fetch(`${url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            prompt: Array.from({ length: 3000 }, (_, j) => 1000 + ((i * 7 + j) % 5000)),
            max_tokens: 4000,
            ignore_eos: true,
            stream: true,
          }),
        }).then((r) => r.text()),
      );
      // SIGTERM once the engine holds all six (a busy machine may take a while to get them there).
      for (;;) {
        const health = (await (await fetch(`${url}/health`)).json()) as { running: number; waiting: number };
        if (health.running + health.waiting === streams.length) break;
        await sleep(20);
      }
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      const bodies = await Promise.all(streams);
      for (const body of bodies) {
        assert.match(body, /data: \[DONE\]\n\n$/, 'each stream ends normally');
        assert.doesNotMatch(body, /"error"/, 'with its tokens, not an error');
        assert.match(body, /"finish_reason":"(stop|length)"/);
      }
      assert.equal(await exited, 0, out.log);
      assert.doesNotMatch(out.log, /terminate called|Napi::Error/);
    } finally {
      child.kill('SIGKILL');
    }
  }
});

test('a --model that is neither a directory nor a reachable Hub repo is one line and exit 2', () => {
  // A relative path with a typo looks like a repo id (org/name); the Hub is unreachable here.
  const r = run(['serve', '--model', 'models/Qwen3-typo', '--cache-dir', tempDir('qwen3-serve-typo-')], { HF_ENDPOINT: 'http://127.0.0.1:9' });
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /there is no directory .*models\/Qwen3-typo.*Hub could not be reached/);
  const missing = run(['serve', '--model', './no/such/dir/here', '--cache-dir', tempDir('qwen3-serve-typo-')]);
  assert.equal(missing.status, 2, missing.stderr);
  assert.equal(missing.stderr.trim().split('\n').length, 1, missing.stderr);
  assert.match(missing.stderr, /there is no directory/);
});

test('SIGTERM drains: /health and new requests get 503 with Retry-After at once, streams in flight finish, then exit 0', async () => {
  const { fixtureExport } = await import('./support/engine.js');
  const { url, child, out } = await spawnServer(['--model', await fixtureExport('fast'), '--max-model-len', '4096']);
  try {
    const streams = Array.from({ length: 3 }, () =>
      fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'Hello', max_tokens: 500, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
      }).then((r) => r.text()),
    );
    await until(async () => (await healthOf(url)).running === 3, 'the three streams to run');
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    // The signal arrives asynchronously; from then on /health answers 503.
    await until(async () => (await fetch(`${url}/health`)).status === 503, '/health to turn 503');
    const late = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 1 }),
    });
    assert.equal(late.status, 503);
    assert.ok(Number(late.headers.get('retry-after')) > 0);
    assert.equal(((await late.json()) as { error: { code: string } }).error.code, 'service_unavailable');
    for (const body of await Promise.all(streams)) {
      assert.match(body, /"completion_tokens":500/, 'each stream ran to its end');
      assert.match(body, /data: \[DONE\]\n\n$/);
    }
    assert.equal(await exited, 0, out.log);
  } finally {
    child.kill('SIGKILL');
  }
});

test('--shutdown-delay: with nothing running, the port stays open and /health answers 503 for the delay, then exit 0', async () => {
  const { fixtureExport } = await import('./support/engine.js');
  const { url, child, out } = await spawnServer(['--model', await fixtureExport('fast'), '--max-model-len', '1024', '--shutdown-delay', '2']);
  try {
    const exited = new Promise<number>((r) => child.once('exit', () => r(Date.now())));
    const signalled = Date.now();
    child.kill('SIGTERM');
    await until(async () => (await fetch(`${url}/health`)).status === 503, '/health to turn 503');
    // A balancer checking every second still gets an answer, not a refused connection.
    await sleep(1000);
    assert.equal((await fetch(`${url}/health`)).status, 503);
    assert.ok((await exited) - signalled >= 2000, 'the process waited out the delay');
    assert.equal(child.exitCode, 0, out.log);
  } finally {
    child.kill('SIGKILL');
  }
});
