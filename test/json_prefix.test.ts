import assert from 'node:assert/strict';
import { test } from 'node:test';
import { advance, initialJsonState, isComplete } from './support/json_prefix.js';

const enc = new TextEncoder();
const accepts = (text: string) => advance(initialJsonState(), enc.encode(text));

test("the tests' JSON-prefix oracle: prefixes of JSON objects are accepted; anything else is refused", () => {
  for (const ok of [
    '{',
    ' {"a"',
    '{"a": 1',
    '{"a": -0.5e+3, "b": [true, false, null, "x\\u00e9\\n"], "c": {}}',
    '{"k": "日本"',
    '{"a":[]',
    '{"a":[1,[2]]}',
  ]) {
    assert.ok(accepts(ok), ok);
  }
  for (const bad of [
    '[',
    '"x"',
    '1',
    '{a',
    '{"a" 1',
    '{"a":01',
    '{"a": tru e',
    '{"a":1,}',
    '{"a":[1,]',
    '{"a":"\\x"',
    '{"a":"\u0001"',
    '{}}',
    '{"a":1]',
    '{"a": .5}',
  ]) {
    assert.equal(accepts(bad), null, bad);
  }
  assert.ok(isComplete(accepts('{"a": {"b": [1, 2.5]}}')!));
  assert.ok(!isComplete(accepts('{"a": 12')!));
  assert.equal(accepts('{"a": 1} x'), null, 'nothing but the object');
});
