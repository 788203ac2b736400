import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { fixtureExport } from './support/engine.js';
import { advance, initialJsonState, isComplete } from './support/json_prefix.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/server_structured.test', () => {
  // Structured outputs through the real server and the openai client, on the random-weight
  // fixture: whatever it would write freely, constrained answers must follow the grammar.
  // Thinking is off by default here: a random model never closes a thinking block, after
  // which a grammar would hold (tested with a scripted model in server_tools.test.ts).
  let s: TestServer;

  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--default-thinking', 'off']);
  });
  after(async () => {
    await s.close();
  });

  type Extra = Record<string, unknown>;
  const user = [{ role: 'user' as const, content: 'Describe a colour.' }];

  /** A schema whose answers are short enough to finish within the test's max_tokens. */
  const schema = {
    type: 'object',
    properties: {
      colour: { enum: ['red', 'green', 'blue'] },
      bright: { type: 'boolean' },
      level: { type: 'integer', minimum: 1, maximum: 9 },
      code: { type: 'string', pattern: '^[a-z]{2}$' },
    },
    required: ['colour', 'bright', 'level', 'code'],
    additionalProperties: false,
  };

  function assertFollowsSchema(text: string): void {
    const v = JSON.parse(text) as Record<string, unknown>;
    assert.deepEqual(Object.keys(v).sort(), ['bright', 'code', 'colour', 'level'], text);
    assert.ok(['red', 'green', 'blue'].includes(v.colour as string), text);
    assert.equal(typeof v.bright, 'boolean', text);
    assert.ok(Number.isInteger(v.level) && (v.level as number) >= 1 && (v.level as number) <= 9, text);
    assert.match(v.code as string, /^[a-z]{2}$/, text);
  }

  test('response_format json_schema: every choice follows the schema and ends there; streamed too', async () => {
    const free = await s.client.chat.completions.create({
      model: 'tiny',
      messages: user,
      max_tokens: 40,
      temperature: 0,
      chat_template_kwargs: { enable_thinking: false },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.throws(() => JSON.parse(free.choices[0].message.content ?? ''), 'without the constraint the random model writes no JSON');

    const response_format = { type: 'json_schema' as const, json_schema: { name: 'colour', schema, strict: true } };
    for (const seed of [1, 2]) {
      const r = await s.client.chat.completions.create({
        model: 'tiny',
        messages: user,
        response_format,
        n: 3,
        temperature: 1,
        seed,
        max_tokens: 120,
      });
      assert.equal(r.choices.length, 3);
      for (const c of r.choices) {
        assert.equal(c.finish_reason, 'stop', c.message.content ?? '');
        assertFollowsSchema(c.message.content ?? '');
      }
    }
    const stream = await s.client.chat.completions.create({
      model: 'tiny',
      messages: user,
      response_format,
      temperature: 0,
      max_tokens: 120,
      stream: true,
    });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, 'stop');
    assertFollowsSchema(text);

    // The SDK's own structured-output helper: a zod schema in, the parsed object out.
    const Colour = z.object({ name: z.enum(['red', 'blue']), bright: z.boolean(), shades: z.array(z.enum(['light', 'dark'])).max(2) });
    const parsed = await s.client.chat.completions.parse({
      model: 'tiny',
      messages: user,
      response_format: zodResponseFormat(Colour, 'colour'),
      temperature: 0,
      max_tokens: 120,
    });
    assert.deepEqual(Colour.parse(parsed.choices[0].message.parsed), parsed.choices[0].message.parsed);
  });

  test('json_object: any object, complete when generation stops', async () => {
    for (const seed of [3, 4, 5]) {
      const r = await s.client.chat.completions.create({
        model: 'tiny',
        messages: user,
        response_format: { type: 'json_object' },
        temperature: 1,
        seed,
        max_tokens: 80,
      });
      const text = r.choices[0].message.content ?? '';
      const state = advance(initialJsonState(), new TextEncoder().encode(text));
      assert.ok(state, `a JSON object prefix: ${text}`);
      if (r.choices[0].finish_reason === 'stop') assert.ok(isComplete(state) && typeof JSON.parse(text) === 'object', text);
    }
  });

  test("vLLM's guided_choice, guided_regex, guided_grammar and structured_outputs, on both endpoints", async () => {
    const choices = ['alpha', 'beta', 'gamma delta'];
    const free = await s.client.completions.create({ model: 'tiny', prompt: 'Pick one:', max_tokens: 6, temperature: 0 });
    assert.ok(!choices.includes(free.choices[0].text), 'free output is none of the choices');
    for (const seed of [1, 2, 3, 4]) {
      const r = await s.client.completions.create({
        model: 'tiny',
        prompt: 'Pick one:',
        max_tokens: 20,
        temperature: 1,
        seed,
        guided_choice: choices,
      } as OpenAI.CompletionCreateParamsNonStreaming & Extra);
      assert.ok(choices.includes(r.choices[0].text), r.choices[0].text);
      assert.equal(r.choices[0].finish_reason, 'stop');
    }
    const regex = await s.client.completions.create({
      model: 'tiny',
      prompt: 'Code:',
      max_tokens: 20,
      temperature: 0,
      guided_regex: '[0-9]{3}-[a-z]{2}',
    } as OpenAI.CompletionCreateParamsNonStreaming & Extra);
    assert.match(regex.choices[0].text, /^[0-9]{3}-[a-z]{2}$/);
    const grammar = 'root ::= pair pair "!"\npair ::= "ab" | "cd"';
    const ebnf = await s.client.chat.completions.create({
      model: 'tiny',
      messages: user,
      max_tokens: 20,
      temperature: 1,
      seed: 9,
      structured_outputs: { grammar },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming & Extra);
    assert.match(ebnf.choices[0].message.content ?? '', /^(ab|cd){2}!$/);
    const json = await s.client.completions.create({
      model: 'tiny',
      prompt: 'JSON:',
      max_tokens: 120,
      temperature: 0,
      guided_json: JSON.stringify(schema),
    } as OpenAI.CompletionCreateParamsNonStreaming & Extra);
    assertFollowsSchema(json.choices[0].text);
  });

  test('structured output errors are 400s naming the field, and the server keeps serving', async () => {
    const bad = async (body: Extra, param: string, message: RegExp) => {
      await assert.rejects(
        s.client.chat.completions.create({ model: 'tiny', messages: user, max_tokens: 4, ...body } as OpenAI.ChatCompletionCreateParamsNonStreaming),
        (err: InstanceType<typeof OpenAI.BadRequestError>) =>
          err instanceof OpenAI.BadRequestError && err.param === param && message.test(err.message),
      );
    };
    await bad({ guided_grammar: 'root ::= (' }, 'guided_grammar', /guided_grammar cannot be used/);
    await bad({ guided_json: 'not json' }, 'guided_json', /must be a JSON schema/);
    await bad({ guided_regex: '(' }, 'guided_regex', /guided_regex cannot be used/);
    await bad({ guided_choice: ['a'], response_format: { type: 'json_object' } }, 'guided_choice', /Only one structured output/);
    await bad({ response_format: { type: 'json_schema' } }, 'response_format.json_schema', /Invalid value/);
    await bad(
      { response_format: { type: 'json_object' }, tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: 'required' },
      'response_format',
      /cannot both shape one answer/,
    );
    const ok = await s.client.completions.create({
      model: 'tiny',
      prompt: 'x',
      max_tokens: 20,
      temperature: 0,
      guided_choice: ['yes', 'no'],
    } as OpenAI.CompletionCreateParamsNonStreaming & Extra);
    assert.ok(['yes', 'no'].includes(ok.choices[0].text));
  });

  test("forced tool calls (tool_choice required or named) follow the function's parameters", async () => {
    const tools = [
      {
        type: 'function' as const,
        function: {
          name: 'get_weather',
          parameters: {
            type: 'object',
            properties: { city: { enum: ['Paris', 'Rome'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
            required: ['city', 'days'],
            additionalProperties: false,
          },
        },
      },
      {
        type: 'function' as const,
        function: {
          name: 'get_time',
          parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'], additionalProperties: false },
        },
      },
    ];
    const named = await s.client.chat.completions.create({
      model: 'tiny',
      messages: user,
      tools,
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      temperature: 1,
      seed: 4,
      max_tokens: 60,
    });
    assert.equal(named.choices[0].finish_reason, 'tool_calls');
    const call = named.choices[0].message.tool_calls![0] as { function: { name: string; arguments: string } };
    assert.equal(call.function.name, 'get_weather');
    const args = JSON.parse(call.function.arguments) as { city: string; days: number };
    assert.ok(['Paris', 'Rome'].includes(args.city) && Number.isInteger(args.days) && args.days >= 1 && args.days <= 7, call.function.arguments);
    for (const seed of [1, 2, 3]) {
      const r = await s.client.chat.completions.create({
        model: 'tiny',
        messages: user,
        tools,
        tool_choice: 'required',
        temperature: 1,
        seed,
        max_tokens: 200,
      });
      assert.equal(r.choices[0].finish_reason, 'tool_calls');
      const c = r.choices[0].message.tool_calls![0] as { function: { name: string; arguments: string } };
      const a = JSON.parse(c.function.arguments) as Record<string, unknown>;
      if (c.function.name === 'get_time') assert.ok(['UTC', 'CET'].includes(a.zone as string), c.function.arguments);
      else assert.equal(c.function.name, 'get_weather');
    }
  });
});
