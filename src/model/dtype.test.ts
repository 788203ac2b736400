import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeToFloat32, floatsToHalf, floatToBf16, floatToHalf, halfsToFloat, halfToFloat } from './dtype.js';

test('half conversion rounds to nearest even and keeps specials', () => {
  const cases: Array<[number, number]> = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65520, 0x7c00], // rounds up to infinity
    [Infinity, 0x7c00],
    [2 ** -24, 0x0001], // smallest subnormal
    [1 + 2 ** -11, 0x3c00], // tie → even
    [1 + 3 * 2 ** -11, 0x3c02], // tie → even (up)
  ];
  for (const [v, bits] of cases) assert.equal(floatToHalf(v), bits, `${v}`);
  assert.ok(Number.isNaN(halfToFloat(floatToHalf(NaN))));
  for (let h = 0; h < 0x7c00; h += 7) assert.equal(floatToHalf(halfToFloat(h)), h);
});

test('bf16 rounds to nearest even; safetensors bytes decode exactly', () => {
  assert.equal(floatToBf16(1), 0x3f80);
  assert.equal(floatToBf16(1 + 2 ** -8), 0x3f80); // tie → even
  assert.equal(floatToBf16(1 + 3 * 2 ** -8), 0x3f82);
  const bytes = new Uint8Array([0x80, 0x3f, 0x00, 0xc0]); // bf16 1, -2
  assert.deepEqual(Array.from(decodeToFloat32(bytes, 'BF16')), [1, -2]);
  assert.deepEqual(Array.from(decodeToFloat32(new Uint8Array([0x00, 0x3c]), 'F16')), [1]);
  // An odd byte offset (a slice of a file read) decodes too.
  const odd = new Uint8Array(5).subarray(1);
  new DataView(odd.buffer, 1).setFloat32(0, 3.5, true);
  assert.deepEqual(Array.from(decodeToFloat32(odd, 'F32')), [3.5]);
});

test('whole arrays convert as the scalar conversions do, for every half value', () => {
  const all = new Uint16Array(0x10000).map((_, i) => i);
  const floats = halfsToFloat(all);
  for (let h = 0; h < all.length; h++) {
    if (Number.isNaN(floats[h])) continue;
    assert.equal(floats[h], halfToFloat(h), `half ${h}`);
  }
  const back = floatsToHalf(floats);
  for (let h = 0; h < all.length; h++) if (!Number.isNaN(floats[h])) assert.equal(back[h], h, `half ${h}`);
  // Values between halves round to nearest, ties to even (the bits numpy gives).
  const between = Float32Array.from([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65519, 65520, 2 ** -25, 3 * 2 ** -25, -1e-9]);
  assert.deepEqual(Array.from(floatsToHalf(between)), [0x3c00, 0x3c02, 0x7bff, 0x7c00, 0x0000, 0x0002, 0x8000]);
  assert.deepEqual(Array.from(between, floatToHalf), [0x3c00, 0x3c02, 0x7bff, 0x7c00, 0x0000, 0x0002, 0x8000]);
});
