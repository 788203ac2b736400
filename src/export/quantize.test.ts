import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dequantizeInt4, quantizeInt4 } from './quantize.js';

test('int4 quantization packs low nibble first, zero point 8, and bounds the error', () => {
  const n = 3;
  const k = 70; // not a multiple of the block: the last block is padded
  const w = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 5)));
  const q = quantizeInt4(w, n, k);
  assert.equal(q.blocksPerRow, 3);
  assert.equal(q.packed.length, n * 3 * 16);
  const back = dequantizeInt4(q, n, k);
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < 3; b++) {
      const scale = Math.abs(q.scales[row * 3 + b]);
      for (let c = b * 32; c < Math.min(k, (b + 1) * 32); c++) {
        // Rounding error is at most half a step, plus clipping of the largest value.
        assert.ok(Math.abs(back[row * k + c] - w[row * k + c]) <= scale * 1.01, `row ${row} col ${c}`);
      }
    }
  }
  // An exactly representable block round-trips bit for bit.
  const exact = Float32Array.from({ length: 32 }, (_, i) => (i % 16) - 8);
  const qe = quantizeInt4(exact, 1, 32);
  assert.deepEqual(Array.from(dequantizeInt4(qe, 1, 32)), Array.from(exact));
  assert.equal(qe.packed[0] & 0x0f, 0, 'element 0 (-8) is the low nibble of byte 0');
  assert.equal(qe.packed[0] >> 4, 1, 'element 1 (-7) is the high nibble of byte 0');
});

test('an all-zero block quantizes to zero without NaN', () => {
  const q = quantizeInt4(new Float32Array(32), 1, 32);
  assert.deepEqual(Array.from(dequantizeInt4(q, 1, 32)), new Array(32).fill(0));
});
