/**
 * log(Σ exp(x)) over a row of logits, the normaliser of every log-probability the server
 * returns. `Math.exp` over 151,936 logits took most of a token's sampling time when
 * logprobs were asked for, so exp is computed here as 2^k · 2^(j/64) · e^r with a table of
 * the 64 fractional powers and a degree-5 polynomial for |r| ≤ ln2/128: relative error below
 * 1e-15 per term (src/runtime/log_sum_exp.test.ts checks it against Math.exp).
 */

const LOG2E_64 = 64 / Math.LN2;
// ln2/64 split in two (fdlibm's ln2_hi, whose low 21 bits are zero, and the rest), so
// n·(ln2/64) is subtracted exactly for every n this reaches.
const LN2_64_HI = 0.6931471803691238 / 64;
const LN2_64_LO = 1.9082149292705877e-10 / 64;
/** 2^(j/64), j = 0..63. */
const FRACTION = Float64Array.from({ length: 64 }, (_, j) => 2 ** (j / 64));
/** Below max − 60 a term adds under 1e-26 of the largest one: less than a double resolves even summed over any vocabulary. */
const NEGLIGIBLE = -60;
/** 1.5·2^52: adding it and taking it away rounds a double of magnitude under 2^51 to an integer, much faster than Math.round. */
const ROUND = 6755399441055744;
/** 2^k for the k that max − 60 ≤ x ≤ max can reach (k ∈ [−87, 0]), indexed by k + 128. */
const POW2 = Float64Array.from({ length: 129 }, (_, i) => 2 ** (i - 128));

export function logSumExp(x: Float32Array | Float64Array): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  if (m === -Infinity) return -Infinity;
  if (!Number.isFinite(m)) return m;
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    const t = x[i] - m;
    // A NaN logit fails this test and makes the sum NaN below, with no check of its own.
    if (t < NEGLIGIBLE) continue;
    const n = t * LOG2E_64 + ROUND - ROUND;
    const r = t - n * LN2_64_HI - n * LN2_64_LO;
    const p = 1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120)))));
    const k = n | 0;
    s += POW2[(k >> 6) + 128] * FRACTION[k & 63] * p;
  }
  return m + Math.log(s);
}
