import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { THINKING_TRANSITION } from '../src/serving/chat_prompt.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { tempDir } from './support/runner.js';
import { chain, writeScriptedCheckpoint } from './support/scripted_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/server_thinking.test', () => {
  // A real Qwen3 graph that thinks forever ("<think>\n<think>\n…", never </think>), and after
  // a thinking block closed with "\n\n" answers "The answer." and stops.
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const [THINK, NEWLINE] = tokenizer.encode('<think>\n');
  const [BLANK] = tokenizer.encode('\n\n');
  const ANSWER = tokenizer.encode('The answer.<|im_end|>');
  const TRANSITION = tokenizer.encode(THINKING_TRANSITION);
  const THINK_END = tokenizer.tokenId('</think>')!;
  /** Tokens of the transition up to and including </think>: they count as reasoning. */
  const TRANSITION_REASONING = TRANSITION.indexOf(THINK_END) + 1;
  let s: TestServer;

  before(async () => {
    const dir = join(tempDir(), 'thinker');
    writeScriptedCheckpoint(dir, [[NEWLINE, THINK], [THINK, NEWLINE], ...chain(BLANK, ANSWER)]);
    s = await startTestServer(dir, ['--served-model-name', 'thinker', '--reasoning-effort-budgets', 'low=7']);
  });
  after(async () => {
    await s.close();
  });

  const ask = { model: 'thinker', messages: [{ role: 'user' as const, content: 'Why?' }], temperature: 0, max_tokens: 80 };

  test('without a budget the model thinks until max_tokens, as before', async () => {
    const r = await s.client.chat.completions.create(ask);
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.choices[0].message.content, '');
    assert.equal(r.usage?.completion_tokens_details?.reasoning_tokens, 80);
  });

  test('thinking_token_budget N: exactly N thinking tokens, the transition, then the answer', async () => {
    for (const budget of [1, 5, 12]) {
      const r = await s.client.chat.completions.create({ ...ask, thinking_token_budget: budget } as typeof ask);
      const c = r.choices[0];
      assert.equal(c.finish_reason, 'stop');
      assert.equal(c.message.content, 'The answer.');
      assert.equal(r.usage?.completion_tokens_details?.reasoning_tokens, budget + TRANSITION_REASONING);
      assert.equal(r.usage?.completion_tokens, budget + TRANSITION.length + ANSWER.length);
      const reasoning = (c.message as unknown as { reasoning_content: string }).reasoning_content;
      assert.match(reasoning, /Considering the limited time by the user/);
    }
  });

  test('streaming shows the forced transition like any other tokens', async () => {
    const stream = await s.client.chat.completions.create({ ...ask, stream: true, thinking_token_budget: 3 } as typeof ask & { stream: true });
    let reasoning = '';
    let content = '';
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta as { reasoning_content?: string; content?: string } | undefined;
      reasoning += d?.reasoning_content ?? '';
      content += d?.content ?? '';
    }
    assert.match(reasoning, /directly now\.\n$/);
    assert.equal(content, 'The answer.');
  });

  test('reasoning_effort maps to the server budgets; none and a budget of 0 turn thinking off', async () => {
    const low = await s.client.chat.completions.create({ ...ask, reasoning_effort: 'low' });
    assert.equal(low.usage?.completion_tokens_details?.reasoning_tokens, 7 + TRANSITION_REASONING);
    assert.equal(low.choices[0].message.content, 'The answer.');
    for (const off of [{ reasoning_effort: 'none' }, { thinking_token_budget: 0 }]) {
      const r = await s.client.chat.completions.create({ ...ask, ...off } as typeof ask);
      assert.equal(r.choices[0].message.content, 'The answer.');
      assert.equal(r.usage?.completion_tokens, ANSWER.length);
      assert.equal(r.usage?.completion_tokens_details?.reasoning_tokens, 0);
    }
    // A budget never changes a request without thinking.
    const plain = await s.client.chat.completions.create({
      ...ask,
      thinking_token_budget: 3,
      chat_template_kwargs: { enable_thinking: false },
    } as typeof ask);
    assert.equal(plain.usage?.completion_tokens, ANSWER.length);
  });

  test('the Responses API takes the same budget: thinking_token_budget and reasoning.effort', async () => {
    const base = { model: 'thinker', input: 'Why?', temperature: 0, max_output_tokens: 80 };
    const r = await s.client.responses.create({ ...base, thinking_token_budget: 4 } as typeof base);
    assert.equal(r.status, 'completed');
    assert.equal(r.output_text, 'The answer.');
    assert.equal(r.usage?.output_tokens_details.reasoning_tokens, 4 + TRANSITION_REASONING);
    const low = await s.client.responses.create({ ...base, reasoning: { effort: 'low' } });
    assert.equal(low.usage?.output_tokens_details.reasoning_tokens, 7 + TRANSITION_REASONING);
    const none = await s.client.responses.create({ ...base, reasoning: { effort: 'none' } });
    assert.equal(none.usage?.output_tokens, ANSWER.length);
  });

  test('a budget from an effort level leaves room for the answer: at most 3/4 of max_tokens thinks, the closing included', async () => {
    // medium is 4,096 tokens here, far beyond max_tokens: capped to 3/4 of it, less the closing sentence.
    const maxTokens = 80;
    const capped = Math.floor(maxTokens * 0.75) - TRANSITION.length;
    const chat = await s.client.chat.completions.create({ ...ask, max_tokens: maxTokens, reasoning_effort: 'medium' });
    assert.equal(chat.choices[0].finish_reason, 'stop');
    assert.equal(chat.choices[0].message.content, 'The answer.');
    assert.equal(chat.usage?.completion_tokens_details?.reasoning_tokens, capped + TRANSITION_REASONING);
    // max_completion_tokens bounds it alike.
    const mct = await s.client.chat.completions.create({ ...ask, max_tokens: undefined, max_completion_tokens: maxTokens, reasoning_effort: 'high' });
    assert.equal(mct.choices[0].message.content, 'The answer.');
    const responses = await s.client.responses.create({
      model: 'thinker',
      input: 'Why?',
      temperature: 0,
      max_output_tokens: maxTokens,
      reasoning: { effort: 'medium' },
    });
    assert.equal(responses.status, 'completed');
    assert.equal(responses.output_text, 'The answer.');
    assert.equal(responses.usage?.output_tokens_details.reasoning_tokens, capped + TRANSITION_REASONING);
    const claude = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
    const message = await claude.messages.create({
      model: 'thinker',
      max_tokens: maxTokens,
      messages: [{ role: 'user', content: 'Why?' }],
      thinking: { type: 'adaptive' },
      output_config: { effort: 'medium' },
      temperature: 0,
    } as never);
    assert.equal(message.stop_reason, 'end_turn');
    assert.deepEqual(
      message.content.filter((b) => b.type === 'text').map((b) => (b as { text: string }).text),
      ['The answer.'],
    );
    // An explicit budget is honoured as given, even when it leaves no room.
    const explicit = await s.client.chat.completions.create({ ...ask, max_tokens: maxTokens, thinking_token_budget: 100 } as typeof ask);
    assert.equal(explicit.choices[0].finish_reason, 'length');
    assert.equal(explicit.usage?.completion_tokens_details?.reasoning_tokens, maxTokens);
  });
});
