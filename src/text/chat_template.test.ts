import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ChatTemplate, type ToolDefinition } from './chat_template.js';

const config = JSON.parse(readFileSync(new URL('../../../assets/tokenizer/tokenizer_config.json', import.meta.url), 'utf8')) as Record<
  string,
  unknown
>;
const template = ChatTemplate.fromTokenizerConfig(config);

test('a user turn, thinking on: the model opens <think> itself', () => {
  assert.equal(
    template.render([{ role: 'user', content: 'Hello' }], { enableThinking: true }),
    '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
  );
});

test('thinking off appends an empty think block', () => {
  assert.equal(
    template.render(
      [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hello' },
      ],
      { enableThinking: false },
    ),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
  );
});

test('an earlier assistant turn loses its thinking', () => {
  assert.equal(
    template.render(
      [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: '<think>\nThey greet me.\n</think>\n\nHello!' },
        { role: 'user', content: 'How are you?' },
      ],
      { enableThinking: true },
    ),
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n',
  );
});

test('tools go into the system turn; tool calls and results render in Qwen3 form', () => {
  const tools: ToolDefinition[] = [
    {
      type: 'function',
      function: { name: 'get_weather', description: 'Get weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } },
    },
  ];
  const text = template.render(
    [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', content: '{"temp": 20}', tool_call_id: 'c1' },
    ],
    { enableThinking: false, tools },
  );
  assert.equal(
    text,
    '<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n' +
      '{"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n' +
      '</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
      '<|im_start|>user\nWeather in Paris?<|im_end|>\n' +
      '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n' +
      '<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n' +
      '<|im_start|>assistant\n<think>\n\n</think>\n\n',
  );
});

test('the /no_think soft switch passes through untouched', () => {
  assert.match(template.render([{ role: 'user', content: 'Hi /no_think' }], { enableThinking: true }), /user\nHi \/no_think<\|im_end\|>/);
});
