import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OutputParser, type OutputParserOptions, type ParsedDelta } from './output_parser.js';

/** Feeds pieces one by one and joins what comes out. */
function run(
  pieces: string[],
  o: OutputParserOptions,
): { reasoning: string; content: string; calls: ParsedDelta['toolCalls']; perPiece: ParsedDelta[] } {
  const p = new OutputParser(o);
  const perPiece = pieces.map((x) => p.push(x));
  perPiece.push(p.finish());
  return {
    reasoning: perPiece.map((d) => d.reasoning).join(''),
    content: perPiece.map((d) => d.content).join(''),
    calls: perPiece.flatMap((d) => d.toolCalls),
    perPiece,
  };
}

test('thinking on: reasoning until </think>, even when the tag is split across pieces', () => {
  const r = run(['<think>', '\nLet me ', 'think.\n</', 'thi', 'nk>\n\nThe answer', ' is 4.'], { thinking: true, tools: false });
  assert.equal(r.reasoning, 'Let me think.\n');
  assert.equal(r.content, 'The answer is 4.');
  // No piece ever shows a fragment of the tag.
  for (const d of r.perPiece) assert.ok(!d.reasoning.includes('</') && !d.content.includes('think>'));
});

test('thinking on without </think>: all of it is reasoning', () => {
  const r = run(['<think>\nstill', ' going'], { thinking: true, tools: false });
  assert.equal(r.reasoning, 'still going');
  assert.equal(r.content, '');
});

test('thinking on, the prompt already opened <think> (no opening tag in the output)', () => {
  const r = run(['Hmm.', '</think>\n\nDone'], { thinking: true, tools: false });
  assert.deepEqual([r.reasoning, r.content], ['Hmm.', 'Done']);
});

test('thinking off: all of it is content, tags included', () => {
  const r = run(['<think>x</think>', 'y'], { thinking: false, tools: false });
  assert.equal(r.reasoning, '');
  assert.equal(r.content, '<think>x</think>y');
});

test('a tool call after thinking, split across pieces', () => {
  const r = run(
    ['<think>\nNeed weather.\n</think>\n\n', '<tool', '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_', 'call>'],
    { thinking: true, tools: true },
  );
  assert.equal(r.reasoning, 'Need weather.\n');
  assert.equal(r.content, '');
  assert.deepEqual(r.calls, [{ name: 'get_weather', arguments: '{"city":"Paris"}' }]);
});

test('two parallel tool calls, and text around them', () => {
  const r = run(
    ['Checking.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'],
    { thinking: false, tools: true },
  );
  assert.equal(r.content, 'Checking.\n');
  assert.deepEqual(r.calls, [
    { name: 'a', arguments: '{"x":1}' },
    { name: 'b', arguments: '{}' },
  ]);
});

test('invalid tool-call JSON stays text; without tools the tags are text', () => {
  const bad = run(['<tool_call>{not json}</tool_call>'], { thinking: false, tools: true });
  assert.deepEqual(bad.calls, []);
  assert.equal(bad.content, '<tool_call>{not json}</tool_call>');
  const off = run(['<tool_call>{"name":"a","arguments":{}}</tool_call>'], { thinking: false, tools: false });
  assert.deepEqual(off.calls, []);
  assert.match(off.content, /^<tool_call>/);
});

test('a forced tool-call opening in the prompt is honoured', () => {
  const r = run(['{"name": "f", "arguments": {"q": "x"}}\n</tool_call>'], { thinking: false, tools: true, prefix: '<tool_call>\n' });
  assert.deepEqual(r.calls, [{ name: 'f', arguments: '{"q":"x"}' }]);
});
