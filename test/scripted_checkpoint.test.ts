import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type OpenAI from 'openai';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { OutputParser } from '../src/text/output_parser.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { distinctToolCallText, twoTurnScript } from './support/agent_scripts.js';
import { tempDir } from './support/runner.js';
import { BRANCHING_MARGINS, writeScriptedCheckpoint } from './support/scripted_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/scripted_checkpoint.test', () => {
  // A real Qwen3 graph scripted for a two-request agent session: a tool call while the
  // context has no <tool_response>, the answer once it has one.
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const THINKING = 'Plan it.';
  const CALL = { name: 'get_weather', arguments: { city: 'Paris', days: 3 } };
  const ANSWER = 'Sunny and warm!';
  // Prompts end in "\n" or "\n\n", and the thinking block and <|im_end|> share the turn: the call may use none of them.
  const AVOID = [...tokenizer.encode('\n'), ...tokenizer.encode('\n\n'), ...tokenizer.encode(`<think>${THINKING}</think><|im_end|>`)];
  const CALL_TEXT = distinctToolCallText(tokenizer, CALL, AVOID);
  let s: TestServer;

  const tools: OpenAI.ChatCompletionTool[] = [
    {
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'Weather forecast',
        parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } } },
      },
    },
  ];
  type Message = OpenAI.ChatCompletionMessage & { reasoning_content?: string };
  const ask: OpenAI.ChatCompletionMessageParam = { role: 'user', content: 'Weather in Paris?' };

  before(async () => {
    const script = twoTurnScript(tokenizer, { thinking: THINKING, first: CALL_TEXT, second: ANSWER });
    const dir = join(tempDir(), 'two-turn');
    writeScriptedCheckpoint(dir, script.transitions, { branch: script.branch });
    s = await startTestServer(dir, ['--served-model-name', 'scripted']);
  });
  after(async () => {
    await s?.close();
  });

  /** The history of the second request: the first answer's call and the tool's result. */
  function secondTurn(call: OpenAI.ChatCompletionMessageToolCall[] | undefined): OpenAI.ChatCompletionMessageParam[] {
    const calls = call ?? [{ id: 'call_1', type: 'function', function: { name: CALL.name, arguments: JSON.stringify(CALL.arguments) } }];
    return [
      ask,
      { role: 'assistant', content: null, tool_calls: calls },
      { role: 'tool', tool_call_id: calls[0].id, content: '{"forecast":"sun","high":24}' },
    ];
  }

  function chat(
    messages: OpenAI.ChatCompletionMessageParam[],
    thinking: boolean,
    temperature: number,
    extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {},
  ) {
    return s.client.chat.completions.create({
      model: 'scripted',
      messages,
      tools,
      temperature,
      top_p: 1,
      max_tokens: 60,
      chat_template_kwargs: { enable_thinking: thinking },
      ...extra,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  }

  function assertToolCall(r: OpenAI.ChatCompletion, thinking: boolean): void {
    const msg = r.choices[0].message as Message;
    assert.equal(msg.reasoning_content ?? undefined, thinking ? THINKING : undefined);
    assert.equal(msg.content, null);
    assert.equal(msg.tool_calls?.length, 1);
    const call = msg.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    assert.equal(call.function.name, CALL.name);
    assert.deepEqual(JSON.parse(call.function.arguments), CALL.arguments);
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
  }

  function assertAnswer(r: OpenAI.ChatCompletion, thinking: boolean): void {
    const msg = r.choices[0].message as Message;
    assert.equal(msg.reasoning_content ?? undefined, thinking ? THINKING : undefined);
    assert.equal(msg.content, ANSWER);
    assert.equal(msg.tool_calls?.length ?? 0, 0);
    assert.equal(r.choices[0].finish_reason, 'stop');
  }

  test('distinctToolCallText: distinct tokens, none of those avoided, parsed back into the same call', () => {
    const calls = [
      CALL,
      { name: 'shell', arguments: { command: ['bash', '-lc', 'ls src/text'] } },
      { name: 'read_file', arguments: { path: 'src/main/java/App.java', offset: 100, limit: 5 } },
      { name: 'search', arguments: { query: '天气 预报', options: { regex: false, max: null } } },
    ];
    for (const call of calls) {
      const text = distinctToolCallText(tokenizer, call, AVOID);
      const ids = tokenizer.encode(text);
      assert.equal(new Set(ids).size, ids.length, text);
      assert.ok(!ids.some((id) => AVOID.includes(id)), text);
      assert.equal(tokenizer.decode(ids), text);
      const parser = new OutputParser({ thinking: false, tools: true });
      const parsed = [parser.push(text), parser.finish()];
      const found = parsed.flatMap((d) => d.toolCalls);
      assert.equal(parsed.map((d) => d.content).join(''), '', text);
      assert.equal(found.length, 1, text);
      assert.equal(found[0].name, call.name);
      assert.deepEqual(JSON.parse(found[0].arguments), call.arguments);
    }
    // Nothing spells "la la la" without repeating a token.
    assert.throws(() => distinctToolCallText(tokenizer, { name: 'say', arguments: { text: 'la la la la' } }), /no rendering of the say call/);
  });

  test('scripts a token cannot follow are refused before anything is written', () => {
    const dir = join(tempDir(), 'refused');
    assert.throws(() => twoTurnScript(tokenizer, { first: CALL_TEXT, second: 'No. No.' }), /the second turn repeats/);
    assert.throws(() => twoTurnScript(tokenizer, { first: 'a\nb', second: 'c' }), /the first turn has "\\n"/);
    assert.throws(
      () =>
        writeScriptedCheckpoint(dir, [
          [1, 2],
          [1, 3],
        ]),
      /token 1 has two successors/,
    );
    assert.throws(
      () =>
        writeScriptedCheckpoint(dir, [[1, 2]], {
          branch: {
            marker: 9,
            whenMarked: [
              [1, 3],
              [1, 4],
            ],
          },
        }),
      /token 1 has two successors with the marker/,
    );
    // 2 after 1 only without the marker, after 5 only with it: one flag cannot order that.
    assert.throws(
      () =>
        writeScriptedCheckpoint(
          dir,
          [
            [1, 2],
            [5, 6],
          ],
          {
            branch: {
              marker: 9,
              whenMarked: [
                [1, 3],
                [5, 2],
              ],
            },
          },
        ),
      /token 2 follows branch token 5/,
    );
  });

  test('first request: the scripted tool call, thinking on and off, at temperature 0 and 1', async () => {
    for (const thinking of [true, false]) {
      for (const temperature of [0, 1]) assertToolCall(await chat([ask], thinking, temperature), thinking);
    }
  });

  test('second request (the call and a tool message in the history): the scripted answer', async () => {
    const first = await chat([ask], true, 0);
    for (const thinking of [true, false]) {
      for (const temperature of [0, 1]) {
        // As an agent sends it: the call as the server returned it, then the result.
        assertAnswer(await chat(secondTurn(first.choices[0].message.tool_calls), thinking, temperature), thinking);
      }
    }
  });

  test('every step leads by the designed margin: at least 100 logits over the runner-up', async (t) => {
    let low = Infinity;
    for (const messages of [[ask], secondTurn(undefined)]) {
      for (const thinking of [true, false]) {
        const r = await chat(messages, thinking, 0, { logprobs: true, top_logprobs: 2 });
        for (const step of r.choices[0].logprobs!.content!) low = Math.min(low, step.top_logprobs[0].logprob - step.top_logprobs[1].logprob);
      }
    }
    t.diagnostic(`smallest lead ${low.toFixed(2)} (designed ${BRANCHING_MARGINS.branchMarked.toFixed(2)})`);
    assert.ok(low > 100, `smallest lead ${low}`);
  });

  /** Varied text of about `lines` lines: words, digits, blank lines, tags. */
  function filler(lines: number, seed: number): string {
    const words = [
      'alpha',
      'Beta',
      'gamma',
      'delta',
      '42',
      'x_y',
      'path/to/file.ts',
      '{"k": 1}',
      '</tool_call>',
      '<tool_call>',
      '</tool_response>',
      'naïve',
      '東京',
      '\t',
      '->',
    ];
    let x = seed;
    const out: string[] = [];
    for (let i = 0; i < lines; i++) {
      const line: string[] = [];
      for (let w = 0; w < 6; w++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        line.push(words[x % words.length]);
      }
      out.push(line.join(' ') + (i % 7 === 0 ? '\n' : ''));
    }
    return out.join('\n');
  }

  test('long prompts: thousands of tokens of varied text, markers far back or many, still follow the script', async () => {
    // No marker: a long user message full of newlines and tags still gets the call.
    const long = await chat([{ role: 'user', content: `${filler(400, 1)}\nWeather in Paris?` }], true, 1);
    assert.ok(long.usage!.prompt_tokens > 4000, `${long.usage!.prompt_tokens} prompt tokens`);
    assertToolCall(long, true);
    // One marker thousands of tokens back, then a long conversation after it.
    const far = await chat([...secondTurn(undefined), { role: 'user', content: filler(400, 2) }], false, 1);
    assert.ok(far.usage!.prompt_tokens > 4000, `${far.usage!.prompt_tokens} prompt tokens`);
    assertAnswer(far, false);
    // Many rounds of calls and results.
    const rounds: OpenAI.ChatCompletionMessageParam[] = [ask];
    for (let i = 0; i < 30; i++) {
      const id = `call_${i}`;
      rounds.push(
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id, type: 'function', function: { name: CALL.name, arguments: JSON.stringify({ city: `City ${i}`, days: i }) } }],
        },
        { role: 'tool', tool_call_id: id, content: filler(10, i + 3) },
      );
    }
    const many = await chat(rounds, true, 1);
    assert.ok(many.usage!.prompt_tokens > 3000, `${many.usage!.prompt_tokens} prompt tokens`);
    assertAnswer(many, true);
  });
});
