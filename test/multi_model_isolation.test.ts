import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { CRASH_PROMPT_IDS, CRASHING_WORKER } from './support/crash_prompt.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';
import { until } from './support/server.js';

describe('test/multi_model_isolation.test', () => {
  // Two chat models in one server, each engine worker booting test/support/crashing_worker.ts:
  // model a's worker dies mid-request while model b streams; b never notices, a answers 503
  // in OpenAI's envelope, then its own engine restarts and a serves again. And a long prompt
  // on a holds up nothing on b.

  const MODELS = ['--model', `a=${FIXTURE_DIR}`, '--model', `b=${FIXTURE_DIR}`, '--max-model-len', '4096'];
  const logLines: Array<{ msg: string; model?: string }> = [];
  let server: RunningServer;
  let client: OpenAI;

  before(async () => {
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const line of String(chunk).split('\n').filter(Boolean)) logLines.push(JSON.parse(line) as { msg: string; model?: string });
        done();
      },
    });
    const config = parseServeConfig(
      [...['--port', '0', '--threads', '1', '--cache-dir', tempDir('qwen3-isolation-'), '--kv-cache-memory', '64MiB', '--no-ui'], ...MODELS],
      {},
    )!;
    server = await startServer(config, { logger: pino({ level: 'info' }, sink), engineWorker: CRASHING_WORKER });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
  });
  after(async () => {
    await server?.close();
  });

  async function post(model: string, prompt: string | readonly number[]) {
    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt, max_tokens: 2 }),
    });
    return { status: res.status, body: (await res.json()) as { error?: { message: string; type: string } } };
  }

  test("model a's engine worker dies mid-request: b streams on untouched, a answers 503 in the envelope, then a's engine alone restarts", async () => {
    assert.equal((await post('a', 'hello')).status, 200);
    const stream = await client.completions.create({
      model: 'b',
      prompt: 'Count to a thousand.',
      max_tokens: 1500,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      ignore_eos: true,
    } as never);
    let bChunks = 0;
    let bFinish: string | null = null;
    let bUsage: OpenAI.CompletionUsage | undefined;
    const bRun = (async () => {
      for await (const chunk of stream as unknown as AsyncIterable<OpenAI.Completion>) {
        if (chunk.choices[0]?.text) bChunks++;
        bFinish = chunk.choices[0]?.finish_reason ?? bFinish;
        bUsage = chunk.usage ?? bUsage;
      }
    })();
    await until(() => bChunks > 0, "b's first token");

    const crashed = await post('a', CRASH_PROMPT_IDS);
    const chunksAtCrash = bChunks;
    assert.equal(crashed.status, 503);
    assert.match(crashed.body.error?.message ?? '', /engine stopped while this request was running/);
    // While a restarts, b takes new requests too.
    assert.equal((await post('b', 'still there?')).status, 200);

    // a comes back: until then each answer is a 503 in the envelope, never a hang or a dropped connection.
    await until(
      async () => {
        const r = await post('a', 'hello again');
        if (r.status !== 200) assert.ok(r.status === 503 && r.body.error?.message, JSON.stringify(r));
        return r.status === 200;
      },
      "a's engine to restart",
      60_000,
    );

    await bRun;
    assert.equal(bFinish, 'length');
    assert.equal(bUsage?.completion_tokens, 1500);
    assert.ok(bChunks > chunksAtCrash, "b's stream went on after a's worker died");
    const restarts = logLines.filter((l) => l.msg === 'engine worker exited; restarting');
    assert.deepEqual(
      restarts.map((l) => l.model),
      ['a'],
    );
    const health = (await (await fetch(`${server.url}/health`)).json()) as { models: Record<string, { state: string }> };
    assert.equal(health.models.a.state, 'loaded');
    assert.equal(health.models.b.state, 'loaded');
  });

  test("a long prompt on model a holds up nothing on model b: b answers while a's request runs", async () => {
    const long = Array.from({ length: 3000 }, (_, i) => 100 + (i % 5000));
    const stream = await client.completions.create({
      model: 'a',
      prompt: long,
      max_tokens: 1000,
      temperature: 0,
      stream: true,
      ignore_eos: true,
    } as never);
    let aDone = false;
    let aFinish: string | null = null;
    const aRun = (async () => {
      for await (const chunk of stream as unknown as AsyncIterable<OpenAI.Completion>) aFinish = chunk.choices[0]?.finish_reason ?? aFinish;
      aDone = true;
    })();
    // From when a's engine has it (prefilling its prompt, chunk by chunk), b answers each request at once.
    await until(
      async () => /^qwen3_serve_num_requests_running\{model="a"\} 1$/m.test(await (await fetch(`${server.url}/metrics`)).text()),
      "a's request to run",
    );
    for (let i = 0; i < 3; i++) {
      assert.equal((await post('b', `quick ${i}`)).status, 200);
      assert.equal(aDone, false, `b's answer ${i} came while a's request was still running`);
    }
    await aRun;
    assert.equal(aFinish, 'length');
  });
});
