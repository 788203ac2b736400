// Scores through the server: completions' log-probabilities, echo (lm-eval's log-likelihood requests) and vLLM's prompt_logprobs against the reference.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport } from './support/engine.js';
import { FIXTURE_DIR, FIXTURE_REFERENCE, type ReferenceCase } from './support/runner.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/server_scoring.test', () => {
  const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;
  const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
  let s: TestServer;

  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny']);
  });
  after(async () => {
    await s.close();
  });

  test('/v1/completions with the fixture token ids matches the reference log-probabilities', async () => {
    const r = await s.client.completions.create({
      model: 'tiny',
      prompt: cases.map((c) => c.prompt_ids),
      max_tokens: 8,
      temperature: 0,
      logprobs: 20,
      return_tokens_as_token_ids: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(r.choices.length, 3);
    r.choices.forEach((choice, i) => {
      const lp = choice.logprobs!;
      assert.deepEqual(
        lp.tokens!.map((t) => Number(t.slice('token_id:'.length))),
        cases[i].greedy_ids,
      );
      lp.top_logprobs!.forEach((top, k) => {
        const ref = cases[i].steps[k];
        ref.top_ids.forEach((id, j) => {
          const got = top[`token_id:${id}`];
          assert.ok(got !== undefined, `case ${i} step ${k}: token ${id} missing from top_logprobs`);
          assert.ok(Math.abs(got - ref.top_logprobs[j]) < 1e-3, `case ${i} step ${k} token ${id}: ${got} vs ${ref.top_logprobs[j]}`);
        });
      });
    });
    const streamed = await s.client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 4, temperature: 0, stream: true, echo: true });
    let text = '';
    for await (const c of streamed) text += c.choices[0]?.text ?? '';
    const plain = await s.client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 4, temperature: 0 });
    assert.equal(text, `Hello${plain.choices[0].text}`);
  });

  test("echo with logprobs scores the prompt (lm-eval log-likelihood requests): the reference, then the model's own decode", async () => {
    type LegacyLogprobs = {
      tokens: string[];
      token_logprobs: Array<number | null>;
      top_logprobs: Array<Record<string, number> | null>;
      text_offset: number[];
    };
    // Each case's prompt followed by its greedy continuation, prompt only (max_tokens 0):
    // the continuation's scores are the independent reference's.
    const r = await s.client.completions.create({
      model: 'tiny',
      prompt: cases.map((c) => [...c.prompt_ids, ...c.greedy_ids]),
      max_tokens: 0,
      echo: true,
      logprobs: 5,
      temperature: 0,
      return_tokens_as_token_ids: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(r.usage?.completion_tokens, 0);
    r.choices.forEach((choice, i) => {
      const c = cases[i];
      const lp = choice.logprobs as unknown as LegacyLogprobs;
      assert.equal(choice.finish_reason, 'length');
      assert.deepEqual(
        lp.tokens.map((t) => Number(t.slice('token_id:'.length))),
        [...c.prompt_ids, ...c.greedy_ids],
      );
      assert.equal(lp.token_logprobs[0], null, 'nothing scores the first token');
      // Offsets index the echoed text, even with tokens named by id.
      assert.equal(lp.text_offset[0], 0);
      assert.ok(
        lp.text_offset.every((o, k) => k === 0 || o > lp.text_offset[k - 1]),
        `offsets advance: ${lp.text_offset}`,
      );
      assert.equal(lp.top_logprobs[0], null);
      c.greedy_ids.forEach((id, k) => {
        const at = c.prompt_ids.length + k;
        const ref = c.steps[k];
        assert.ok(
          Math.abs(lp.token_logprobs[at]! - ref.top_logprobs[0]) < 1e-3,
          `case ${i} token ${k}: ${lp.token_logprobs[at]} vs ${ref.top_logprobs[0]}`,
        );
        for (const [j, top] of ref.top_ids.slice(0, 5).entries()) {
          assert.ok(Math.abs(lp.top_logprobs[at]![`token_id:${top}`] - ref.top_logprobs[j]) < 1e-3, `case ${i} token ${k} alternative ${top}`);
        }
        assert.equal(id, ref.top_ids[0]);
      });
    });

    // A prompt longer than a prefill chunk (64) and a scoring slice (64): its continuation's
    // scores equal those the model gave while generating it, and one token follows.
    const gen = await s.client.completions.create({
      model: 'tiny',
      prompt: cases[0].prompt_ids,
      max_tokens: 90,
      temperature: 0,
      logprobs: 0,
      ignore_eos: true,
      return_tokens_as_token_ids: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const genLp = gen.choices[0].logprobs as unknown as LegacyLogprobs;
    const ids = [...cases[0].prompt_ids, ...genLp.tokens.map((t) => Number(t.slice('token_id:'.length)))];
    const echoed = await s.client.completions.create({
      model: 'tiny',
      prompt: ids,
      max_tokens: 1,
      echo: true,
      logprobs: 0,
      temperature: 0,
      return_tokens_as_token_ids: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = echoed.choices[0].logprobs as unknown as LegacyLogprobs;
    assert.equal(lp.tokens.length, ids.length + 1, 'the prompt, then the generated token');
    genLp.token_logprobs.forEach((g, k) => {
      const got = lp.token_logprobs[cases[0].prompt_ids.length + k]!;
      assert.ok(Math.abs(got - g!) < 1e-3, `position ${k}: ${got} vs ${g}`);
    });
    assert.equal(echoed.usage?.completion_tokens, 1);

    // Streamed: the first chunk is the echoed prompt with its scores; text offsets count from 0.
    const stream = await s.client.completions.create({
      model: 'tiny',
      prompt: 'Hello there, world',
      max_tokens: 2,
      echo: true,
      logprobs: 1,
      temperature: 0,
      stream: true,
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const first = chunks[0].choices[0];
    const firstLp = first.logprobs as unknown as LegacyLogprobs;
    assert.equal(first.text, 'Hello there, world');
    assert.equal(firstLp.tokens.join(''), 'Hello there, world');
    assert.equal(firstLp.text_offset[0], 0);
    assert.equal(firstLp.token_logprobs[0], null);
    assert.ok(firstLp.token_logprobs.slice(1).every((x) => typeof x === 'number' && x <= 0));
    const next = chunks[1].choices[0].logprobs as unknown as LegacyLogprobs;
    assert.equal(next.text_offset[0], 'Hello there, world'.length, 'generated tokens follow the echo');

    // max_tokens 0 means something only with echo.
    await assert.rejects(
      s.client.completions.create({ model: 'tiny', prompt: 'Hi', max_tokens: 0 }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.param === 'max_tokens',
    );
    const echoOnly = await s.client.completions.create({ model: 'tiny', prompt: 'Hi', max_tokens: 0, echo: true });
    assert.equal(echoOnly.choices[0].text, 'Hi');
    assert.equal(echoOnly.choices[0].logprobs, null);
  });

  test("vLLM's prompt_logprobs: the reference's scores with ranks, on both endpoints; not in a stream", async () => {
    type Entry = { logprob: number; rank: number | null; decoded_token: string };
    const c = cases[0];
    const ids = [...c.prompt_ids, ...c.greedy_ids];
    const r = await s.client.completions.create({
      model: 'tiny',
      prompt: ids,
      max_tokens: 1,
      temperature: 0,
      prompt_logprobs: 3,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const scores = (r.choices[0] as unknown as { prompt_logprobs: Array<Record<string, Entry> | null> }).prompt_logprobs;
    assert.equal(scores.length, ids.length);
    assert.equal(scores[0], null);
    c.greedy_ids.forEach((id, k) => {
      const at = scores[c.prompt_ids.length + k]!;
      assert.equal(at[id].rank, 1, 'the greedy token ranks first');
      assert.ok(Math.abs(at[id].logprob - c.steps[k].top_logprobs[0]) < 1e-3);
      assert.equal(at[id].decoded_token, new TextDecoder().decode(tokenizer.tokenBytes(id)!));
      c.steps[k].top_ids.slice(0, 3).forEach((top, j) => {
        assert.equal(at[top].rank, j + 1);
        assert.ok(Math.abs(at[top].logprob - c.steps[k].top_logprobs[j]) < 1e-3);
      });
    });
    // A prompt token that is not the model's first choice: its rank counts the better ones.
    const ranked = scores.slice(1).find((e) => Object.keys(e!).length === 4)!;
    const own = Object.values(ranked).find((e) => e.rank! > 3)!;
    assert.ok(own.rank! > 3 && Object.values(ranked).every((e) => e === own || e.logprob >= own.logprob));
    const chat = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 1,
      prompt_logprobs: 1,
      n: 2,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const chatScores = (chat as unknown as { prompt_logprobs: Array<Record<string, Entry> | null> }).prompt_logprobs;
    assert.equal(chatScores.length, chat.usage!.prompt_tokens);
    assert.equal(chatScores[0], null);
    assert.ok(chatScores.slice(1).every((e) => e !== null && Object.keys(e).length <= 2));
    await assert.rejects(
      s.client.completions.create({
        model: 'tiny',
        prompt: 'x',
        max_tokens: 1,
        stream: true,
        prompt_logprobs: 2,
      } as OpenAI.CompletionCreateParamsStreaming),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.param === 'prompt_logprobs',
    );
  });
});
