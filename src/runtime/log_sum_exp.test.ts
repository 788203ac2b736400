import assert from 'node:assert/strict';
import { test } from 'node:test';
import { logSumExp } from './log_sum_exp.js';

/** The textbook form, in doubles with Math.exp. */
function reference(x: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
  return m + Math.log(s);
}

test('logSumExp agrees with Math.exp to 1e-13 over vocabularies of logits of every spread', () => {
  let seed = 12345;
  const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  for (const [n, spread, offset] of [
    [151_936, 0.5, 0],
    [151_936, 8, -3],
    [151_936, 40, 12],
    [4096, 200, -50],
    [7, 1, 1e4],
    [1, 0, -7.25],
  ] as const) {
    const x = Float32Array.from({ length: n }, () => offset + (rand() - 0.5) * spread);
    const got = logSumExp(x);
    const want = reference(x);
    assert.ok(Math.abs(got - want) <= 1e-13 * Math.max(1, Math.abs(want)), `n ${n}, spread ${spread}: ${got} vs ${want}`);
  }
  // Every term is exact where the polynomial sits on a table point, and far-below terms vanish.
  assert.equal(logSumExp(Float32Array.of(0, 0)), Math.LN2);
  assert.equal(logSumExp(Float32Array.of(3, -1e30, -Infinity)), 3);
});

test('logSumExp of an empty, all -Infinity or NaN-holding row', () => {
  assert.equal(logSumExp(new Float32Array(0)), -Infinity);
  assert.equal(logSumExp(Float32Array.of(-Infinity, -Infinity)), -Infinity);
  assert.ok(Number.isNaN(logSumExp(Float32Array.of(1, Number.NaN, 2))));
});
