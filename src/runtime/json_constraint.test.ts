import { test } from 'node:test';
import assert from 'node:assert/strict';
import { advance, initialJsonState, isComplete, JsonTokenMask } from './json_constraint.js';

const enc = new TextEncoder();
const accepts = (text: string) => advance(initialJsonState(), enc.encode(text));

test('prefixes of JSON objects are accepted; anything else is refused', () => {
  for (const ok of ['{', ' {"a"', '{"a": 1', '{"a": -0.5e+3, "b": [true, false, null, "x\\u00e9\\n"], "c": {}}', '{"k": "日本"', '{"a":[]', '{"a":[1,[2]]}']) {
    assert.ok(accepts(ok), ok);
  }
  for (const bad of ['[', '"x"', '1', '{a', '{"a" 1', '{"a":01', '{"a": tru e', '{"a":1,}', '{"a":[1,]', '{"a":"\\x"', '{"a":"\u0001"', '{}}', '{"a":1]', '{"a": .5}']) {
    assert.equal(accepts(bad), null, bad);
  }
  assert.ok(isComplete(accepts('{"a": {"b": [1, 2.5]}}')!));
  assert.ok(!isComplete(accepts('{"a": 12')!));
  assert.equal(accepts('{"a": 1} x'), null, 'nothing but the object');
});

test('the mask keeps exactly the tokens that continue the JSON', () => {
  const table = ['{', '{"', 'hello', '"}', '}', ' ', '"', '1'].map((t) => enc.encode(t));
  const logits = new Float32Array(table.length).fill(1);
  const n = new JsonTokenMask([...table, null]).apply(logits, accepts('{"a": ')!);
  // '"}' opens a string that starts with '}': still JSON.
  assert.deepEqual(Array.from(logits).map((v) => v > -Infinity), [true, true, false, true, false, true, true, true]);
  assert.equal(n, 6);
});

test('remembered masks equal freshly computed ones along an answer, and the number remembered is bounded', () => {
  const table = ['{', '"', 'a', 'b"', '":', ' ', '1', '2', ',', '}', ']', '[', 'true', '"}', 'x', '\\', 'n', null].map((t) => (t === null ? null : enc.encode(t)));
  const text = '{"ab": [1, 2, true], "a\\n": {"b": "x"}, "bb": 12}';
  const remembering = new JsonTokenMask(table, 4);
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < text.length; i++) {
      const state = accepts(text.slice(0, i))!;
      const a = new Float32Array(table.length + 2).fill(1);
      const b = new Float32Array(table.length + 2).fill(1);
      const n = remembering.apply(a, state);
      assert.equal(n, new JsonTokenMask(table).apply(b, state));
      assert.deepEqual(a, b, `state after ${JSON.stringify(text.slice(0, i))}`);
      assert.ok(remembering.size <= 4);
    }
  }
});
