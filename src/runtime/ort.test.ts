import assert from 'node:assert/strict';
import { test } from 'node:test';
import ort from './ort.js';

// The native binding reads float16 data as Uint16Array; Node 24's Float16Array must not reach it (src/runtime/ort.ts).
test('float16 tensors hold their data as Uint16Array, whatever globals the Node version has', () => {
  const t = new ort.Tensor('float16', new Uint16Array([0x3c00, 0x4000]), [2]);
  assert.ok(t.data instanceof Uint16Array, t.data.constructor.name);
  assert.deepEqual([...(t.data as Uint16Array)], [0x3c00, 0x4000]);
});
