import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { retrievalCheckpoint } from './support/retrieval_models.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';
import { until } from './support/server.js';

describe('test/multi_model.test', () => {
  // One server, several models: two small chat checkpoints, an embedding and a reranker
  // checkpoint, and one that cannot load, configured by --model and a models file.

  const work = tempDir('qwen3-multi-');
  const cache = join(work, 'cache');
  const secondChat = join(work, 'chat-b');
  const broken = join(work, 'broken');
  let server: RunningServer;
  let client: OpenAI;

  interface ModelsBody {
    data: Array<{ id: string; state: string; aliases: string[] }>;
  }

  async function start(flags: string[]): Promise<RunningServer> {
    const config = parseServeConfig(['--port', '0', '--threads', '1', '--cache-dir', cache, '--kv-cache-memory', '64MiB', '--no-ui', ...flags], {})!;
    return startServer(config, { logger: pino({ level: 'silent' }) });
  }

  /** A server of `flags` for one test, with a client, closed after `run` whatever it does. */
  async function withServer(flags: string[], run: (s: RunningServer, c: OpenAI) => Promise<void>): Promise<void> {
    const s = await start(flags);
    try {
      await run(s, new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'unused', maxRetries: 0 }));
    } finally {
      await s.close();
    }
  }

  const stateOf = async (s: RunningServer, id: string) =>
    ((await (await fetch(`${s.url}/v1/models`)).json()) as ModelsBody).data.find((m) => m.id === id)?.state;

  async function post(s: RunningServer, path: string, body: unknown) {
    const res = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return {
      status: res.status,
      headers: res.headers,
      body: (await res.json()) as Record<string, unknown> & { error?: { code?: string; type?: string; message: string } },
    };
  }

  before(async () => {
    writeRandomCheckpoint(secondChat, { seed: 7, hiddenSize: 32, intermediateSize: 64, headDim: 8, maxPositionEmbeddings: 2048 });
    mkdirSync(broken, { recursive: true });
    writeFileSync(join(broken, 'config.json'), '{"model_type": "llama"}');
    const modelsFile = join(work, 'models.yaml');
    writeFileSync(
      modelsFile,
      [
        'models:',
        '  small:',
        `    model: ${FIXTURE_DIR}`,
        '    aliases: [fast, qwen3-small, Qwen/Qwen3-small]',
        '    preload: true',
        '    max-model-len: 1024',
        '  embed:',
        `    model: ${retrievalCheckpoint('embedding')}`,
        '  rerank:',
        `    model: ${retrievalCheckpoint('reranker')}`,
        '  broken:',
        `    model: ${broken}`,
      ].join('\n'),
    );
    server = await start(['--models-config', modelsFile, '--model', `big=${secondChat}`]);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });

  after(async () => {
    await server?.close();
  });

  test('/v1/models lists every configured model with its state; preload loaded one at start', async () => {
    const models = ((await (await fetch(`${server.url}/v1/models`)).json()) as ModelsBody).data;
    assert.deepEqual(
      models.map((m) => m.id),
      ['big', 'small', 'embed', 'rerank', 'broken'],
    );
    assert.equal(models.find((m) => m.id === 'small')?.state, 'loaded');
    assert.deepEqual(models.find((m) => m.id === 'small')?.aliases, ['fast', 'qwen3-small', 'Qwen/Qwen3-small']);
    assert.equal(models.find((m) => m.id === 'big')?.state, 'unloaded');
    // A Hub-style id is found with its slash unescaped in the path, as OpenAI's clients send it.
    assert.equal((await client.models.retrieve('Qwen/Qwen3-small')).id, 'small');
    assert.equal((await fetch(`${server.url}/v1/models/Qwen/Qwen3-small`)).status, 200);
  });

  test('requests route by name and alias; a model not loaded loads when first asked for', async () => {
    const viaAlias = await client.chat.completions.create({
      model: 'fast',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
      temperature: 0,
    });
    assert.equal(viaAlias.model, 'small');
    const viaName = await client.chat.completions.create({
      model: 'small',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
      temperature: 0,
    });
    assert.deepEqual(viaName.choices[0].message, viaAlias.choices[0].message);
    assert.equal(await stateOf(server, 'big'), 'unloaded');
    const big = await client.completions.create({ model: 'big', prompt: 'hello', max_tokens: 3, temperature: 0 });
    assert.equal(big.model, 'big');
    assert.equal(await stateOf(server, 'big'), 'loaded');
    // Each model answers with its own weights.
    const small = await client.completions.create({ model: 'small', prompt: 'hello', max_tokens: 3, temperature: 0 });
    assert.notEqual(small.choices[0].text, big.choices[0].text);
  });

  test('the embedding and reranker models serve their endpoints in the same server', async () => {
    const e = await client.embeddings.create({ model: 'embed', input: ['hello world', 'hi'] });
    assert.equal(e.data.length, 2);
    assert.equal(e.model, 'embed');
    const r = await post(server, '/v1/rerank', { model: 'rerank', query: 'q', documents: ['a', 'b'] });
    assert.equal(r.status, 200);
    assert.equal((r.body.results as unknown[]).length, 2);
    const wrong = await post(server, '/v1/embeddings', { model: 'small', input: 'x' });
    assert.equal(wrong.status, 400);
    assert.equal(wrong.body.error?.code, 'model_task_mismatch');
  });

  test('an unknown model is OpenAI 404 model_not_found and Anthropic not_found_error', async () => {
    const openai = await post(server, '/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(openai.status, 404);
    assert.equal(openai.body.error?.code, 'model_not_found');
    const anthropic = new Anthropic({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });
    await assert.rejects(anthropic.messages.create({ model: 'nope', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }), (err: unknown) => {
      assert.ok(err instanceof Anthropic.NotFoundError);
      assert.equal((err.error as { error: { type: string } }).error.type, 'not_found_error');
      return true;
    });
    const message = await anthropic.messages.create({ model: 'qwen3-small', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(message.model, 'small');
  });

  test('a model that fails to load answers 503 with Retry-After while the others keep serving', async () => {
    const failed = await post(server, '/v1/chat/completions', { model: 'broken', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(failed.status, 503);
    assert.ok(Number(failed.headers.get('retry-after')) > 0);
    assert.match(failed.body.error!.message, /broken.*failed to load/);
    assert.equal(await stateOf(server, 'broken'), 'failed');
    const again = await post(server, '/v1/chat/completions', { model: 'broken', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(again.status, 503);
    const ok = await client.chat.completions.create({ model: 'small', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
    assert.equal(ok.model, 'small');
    const health = (await (await fetch(`${server.url}/health`)).json()) as {
      status: string;
      models: Record<string, { state: string; error?: string }>;
    };
    assert.equal(health.status, 'ok');
    assert.equal(health.models.broken.state, 'failed');
    assert.equal(health.models.small.state, 'loaded');
  });

  test('metrics carry each loaded model in the model label', async () => {
    await client.embeddings.create({ model: 'embed', input: 'metrics' });
    const text = await (await fetch(`${server.url}/metrics`)).text();
    for (const name of ['small', 'embed']) assert.match(text, new RegExp(`qwen3_serve_request_success_total\\{[^}]*model="${name}"`));
    assert.doesNotMatch(text, /^qwen3_serve_\w+\{[^}]*model_name=/m);
  });

  test('the memory budget unloads the least recently used idle model', async () => {
    await withServer(
      [
        '--model',
        `a=${FIXTURE_DIR}`,
        '--model',
        `b=${secondChat}`,
        '--model',
        `e=${retrievalCheckpoint('embedding')}`,
        // Room for two of them (about 64 MiB of KV cache and 20-40 MB of weights each).
        '--models-memory',
        '240MiB',
      ],
      async (s, c) => {
        await c.completions.create({ model: 'a', prompt: 'x', max_tokens: 1 });
        await c.completions.create({ model: 'b', prompt: 'x', max_tokens: 1 });
        await c.completions.create({ model: 'a', prompt: 'x', max_tokens: 1 });
        await c.embeddings.create({ model: 'e', input: 'x' });
        // b was used least recently: it made room for e.
        assert.equal(await stateOf(s, 'b'), 'unloaded');
        assert.equal(await stateOf(s, 'a'), 'loaded');
        assert.equal(await stateOf(s, 'e'), 'loaded');
        const back = await c.completions.create({ model: 'b', prompt: 'x', max_tokens: 1 });
        assert.equal(back.model, 'b');
        assert.equal(await stateOf(s, 'a'), 'unloaded');
      },
    );
  });

  test('an idle model unloads after --model-idle-unload and loads again when asked for', async () => {
    await withServer(
      ['--model', `a=${FIXTURE_DIR}`, '--model', `e=${retrievalCheckpoint('embedding')}`, '--model-idle-unload', '1'],
      async (s, c) => {
        const first = await c.embeddings.create({ model: 'e', input: 'x' });
        await until(async () => (await stateOf(s, 'e')) === 'unloaded', 'the idle model to unload', 30_000);
        const again = await c.embeddings.create({ model: 'e', input: 'x' });
        assert.deepEqual(again.data[0].embedding, first.data[0].embedding);
        assert.equal(await stateOf(s, 'a'), 'unloaded');
      },
    );
  });

  test("stored responses are the server's: found through any model, continued on another, kept when a model unloads", async () => {
    await withServer(['--model', `a=${FIXTURE_DIR}`, '--model', `b=${secondChat}`, '--model-idle-unload', '1'], async (s, c) => {
      const first = await c.responses.create({ model: 'b', input: 'Hello', max_output_tokens: 2 });
      assert.equal((await c.responses.retrieve(first.id)).id, first.id);
      const next = await c.responses.create({ model: 'a', input: 'Again', previous_response_id: first.id, max_output_tokens: 2 });
      assert.equal(next.model, 'a');
      await until(async () => (await stateOf(s, 'b')) === 'unloaded', 'b to unload when idle', 30_000);
      assert.equal((await c.responses.retrieve(first.id)).id, first.id);
    });
  });

  test('a model refused room while another serves is refused that once: it loads when the other is idle', async () => {
    // Room for one of the two at a time.
    await withServer(
      ['--model', `a=${FIXTURE_DIR}`, '--model', `e=${retrievalCheckpoint('embedding')}`, '--models-memory', '130MiB'],
      async (s, c) => {
        const busy = new AbortController();
        const stream = await c.completions.create(
          { model: 'a', prompt: 'x', max_tokens: 100_000, stream: true, ignore_eos: true } as OpenAI.CompletionCreateParamsStreaming,
          { signal: busy.signal },
        );
        const reading = (async () => {
          for await (const _ of stream);
        })().catch(() => {});
        await until(async () => (await stateOf(s, 'a')) === 'loaded', 'a serving');
        const refused = await post(s, '/v1/embeddings', { model: 'e', input: 'x' });
        assert.equal(refused.status, 503);
        assert.match(refused.body.error!.message, /beside the models serving requests now/);
        busy.abort();
        await reading;
        // Once a is idle, e gets its room (a is unloaded for it), and a loads again after.
        await until(async () => (await post(s, '/v1/embeddings', { model: 'e', input: 'x' })).status === 200, 'e loads once a is idle');
        assert.equal(await stateOf(s, 'a'), 'unloaded');
        assert.equal((await c.completions.create({ model: 'a', prompt: 'x', max_tokens: 1 })).model, 'a');
      },
    );
  });

  test('a request that cannot be fitted in the memory budget is a 503 with Retry-After, never a crash', async () => {
    await withServer(['--model', `a=${FIXTURE_DIR}`, '--model', `e=${retrievalCheckpoint('embedding')}`, '--models-memory', '70MiB'], async (s) => {
      const r = await post(s, '/v1/embeddings', { model: 'e', input: 'x' });
      assert.equal(r.status, 503);
      assert.ok(Number(r.headers.get('retry-after')) > 0);
      assert.match(r.body.error!.message, /--models-memory/);
    });
  });
});
