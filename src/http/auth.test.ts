import assert from 'node:assert/strict';
import { test } from 'node:test';
import { presentedKey } from './auth.js';

test("the Bearer scheme is matched in any case, and Anthropic's x-api-key is the fallback", () => {
  assert.equal(presentedKey({ authorization: 'Bearer sk-1' }), 'sk-1');
  assert.equal(presentedKey({ authorization: 'bearer sk-1' }), 'sk-1');
  assert.equal(presentedKey({ authorization: 'BEARER   sk-1 ' }), 'sk-1');
  assert.equal(presentedKey({ authorization: 'Basic c2s=', 'x-api-key': 'sk-2' }), 'sk-2');
  assert.equal(presentedKey({ 'x-api-key': ' sk-2 ' }), 'sk-2');
  assert.equal(presentedKey({ authorization: 'Bearersk-1' }), '');
  assert.equal(presentedKey({}), '');
});
