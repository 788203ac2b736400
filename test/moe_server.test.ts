import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { MOE_SHAPES, moeCheckpoint } from './support/moe_checkpoint.js';
import type { ReferenceCase } from './support/runner.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/moe_server.test', () => {
  // A Qwen3-MoE checkpoint served as a user would: its Hugging Face directory as --model
  // (exported into the cache at start), through the openai and @anthropic-ai/sdk clients.
  let s: TestServer;
  let claude: Anthropic;

  before(async () => {
    s = await startTestServer(moeCheckpoint('renorm-dense-middle'), ['--served-model-name', 'moe', '--default-thinking', 'off']);
    claude = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
  });
  after(async () => {
    await s.close();
  });

  const user = [{ role: 'user' as const, content: 'Name three colours.' }];

  test('chat completions: greedy answers with log-probabilities, streamed and not, agree', async () => {
    const r = await s.client.chat.completions.create({
      model: 'moe',
      messages: user,
      max_tokens: 12,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage?.completion_tokens, 12);
    assert.equal(r.choices[0].logprobs?.content?.length, 12);
    let streamed = '';
    for await (const chunk of await s.client.chat.completions.create({
      model: 'moe',
      messages: user,
      max_tokens: 12,
      temperature: 0,
      stream: true,
    })) {
      streamed += chunk.choices[0]?.delta?.content ?? '';
    }
    assert.equal(streamed, r.choices[0].message.content);
  });

  test('structured outputs hold on a MoE model: the answer follows the schema', async () => {
    const schema = {
      type: 'object',
      properties: { colour: { enum: ['red', 'green', 'blue'] }, bright: { type: 'boolean' } },
      required: ['colour', 'bright'],
      additionalProperties: false,
    };
    const r = await s.client.chat.completions.create({
      model: 'moe',
      messages: user,
      max_tokens: 60,
      temperature: 1,
      seed: 3,
      response_format: { type: 'json_schema', json_schema: { name: 'c', schema, strict: true } },
    });
    const v = JSON.parse(r.choices[0].message.content ?? '') as { colour: string; bright: unknown };
    assert.ok(['red', 'green', 'blue'].includes(v.colour));
    assert.equal(typeof v.bright, 'boolean');
  });

  test("Anthropic's Messages API answers, streamed and not", async () => {
    const m = await claude.messages.create({ model: 'moe', max_tokens: 12, messages: user });
    assert.equal(m.stop_reason, 'max_tokens');
    assert.equal(m.usage.output_tokens, 12);
    assert.ok(m.content[0].type === 'text' && m.content[0].text.length > 0);
    const final = await claude.messages.stream({ model: 'moe', max_tokens: 12, messages: user }).finalMessage();
    assert.equal(final.usage.output_tokens, 12);
  });

  /** test/fixtures/qwen3-moe-tiny.reference.json: scripts/reference_qwen3_moe.py's output on each test checkpoint. */
  const reference = JSON.parse(readFileSync(new URL('../../test/fixtures/qwen3-moe-tiny.reference.json', import.meta.url), 'utf8')) as {
    checkpoints: Record<string, { weights_sha256: Record<string, string>; cases: ReferenceCase[] }>;
  };

  for (const shape of Object.keys(MOE_SHAPES)) {
    test(`${shape}: the server's top-20 log-probabilities are within 1e-3 of an independent PyTorch Qwen3-MoE, greedy ids equal`, async (t) => {
      let worst = 0;
      const dir = moeCheckpoint(shape);
      const ref = reference.checkpoints[shape];
      for (const [file, sha] of Object.entries(ref.weights_sha256)) {
        const got = createHash('sha256')
          .update(readFileSync(join(dir, file)))
          .digest('hex');
        assert.equal(got, sha, `${file}: the test checkpoint changed; run scripts/reference_qwen3_moe.py again`);
      }
      // One server at a time (memory): the other checkpoint's replaces the shared one, last in this file.
      if (shape !== 'renorm-dense-middle') {
        await s.close();
        s = await startTestServer(dir, ['--served-model-name', 'moe']);
      }
      for (const c of ref.cases) {
        const r = await s.client.completions.create({
          model: 'moe',
          prompt: c.prompt_ids,
          max_tokens: c.steps.length,
          temperature: 0,
          logprobs: 20,
          // vLLM's extension: tokens named by id, so nothing is lost to decoding.
          ...({ return_tokens_as_token_ids: true } as object),
        });
        const lp = r.choices[0].logprobs!;
        assert.deepEqual(
          lp.tokens!.map((t) => Number(t.replace('token_id:', ''))),
          c.greedy_ids,
        );
        c.steps.forEach((step, k) => {
          const top = lp.top_logprobs![k];
          step.top_ids.forEach((id, j) => {
            const got = top[`token_id:${id}`];
            worst = Math.max(worst, Math.abs(got - step.top_logprobs[j]));
            assert.ok(got !== undefined && Math.abs(got - step.top_logprobs[j]) < 1e-3, `step ${k}, token ${id}: ${got} vs ${step.top_logprobs[j]}`);
          });
        });
      }
      t.diagnostic(`max |logprob error| ${worst.toExponential(2)}`);
    });
  }
});
