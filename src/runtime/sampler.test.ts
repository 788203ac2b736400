import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_SAMPLING, nucleus, Rng, Sampler, type SamplingParams, type SequenceHistory, tokenLogprob, topIndices } from './sampler.js';

const empty = (): SequenceHistory => ({ outputCounts: new Map(), seen: new Set() });
const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...p });
const fromProbs = (probs: number[]) => Float32Array.from(probs, (p) => Math.log(p));

function counts(sampler: Sampler, logits: Float32Array, n: number, history = empty()): number[] {
  const c = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) c[sampler.sample(logits, history).token]++;
  return c;
}

test('greedy picks the largest logit; top_k 1 does too', () => {
  const logits = Float32Array.from([0.1, 2.5, -1, 2.4]);
  assert.equal(new Sampler(params({ temperature: 0 }), 4).sample(logits, empty()).token, 1);
  assert.deepEqual(counts(new Sampler(params({ topK: 1, seed: 1 }), 4), logits, 50), [0, 50, 0, 0]);
});

test('the same seed draws the same tokens; another seed differs', () => {
  const logits = new Float32Array(1000).map((_, i) => Math.sin(i));
  const draw = (seed: number) => {
    const s = new Sampler(params({ seed }), 1000);
    return Array.from({ length: 30 }, () => s.sample(logits, empty()).token);
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
});

test('temperature sampling follows the softmax', () => {
  const probs = [0.5, 0.3, 0.15, 0.05];
  const c = counts(new Sampler(params({ seed: 3 }), 4), fromProbs(probs), 20000);
  probs.forEach((p, i) => assert.ok(Math.abs(c[i] / 20000 - p) < 0.015, `token ${i}: ${c[i] / 20000} vs ${p}`));
  // Temperature 0.5 squares the odds: 0.5² : 0.3² : …
  const sq = probs.map((p) => p * p);
  const z = sq.reduce((a, b) => a + b);
  const c2 = counts(new Sampler(params({ seed: 4, temperature: 0.5 }), 4), fromProbs(probs), 20000);
  sq.forEach((p, i) => assert.ok(Math.abs(c2[i] / 20000 - p / z) < 0.015));
});

test('top_p keeps the smallest set reaching p; top_k the k best; min_p drops the tail', () => {
  const logits = fromProbs([0.05, 0.5, 0.15, 0.3]);
  assert.deepEqual(
    counts(new Sampler(params({ topP: 0.75, seed: 5 }), 4), logits, 2000).map((c) => c > 0),
    [false, true, false, true],
  );
  assert.deepEqual(
    counts(new Sampler(params({ topK: 2, seed: 6 }), 4), logits, 2000).map((c) => c > 0),
    [false, true, false, true],
  );
  assert.deepEqual(
    counts(new Sampler(params({ minP: 0.25, seed: 7 }), 4), logits, 2000).map((c) => c > 0),
    [false, true, true, true],
  );
});

test('nucleus selection equals sorting, on random weights with ties', () => {
  const rng = new Rng(9);
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + Math.floor(rng.next() * 300);
    const w = Float64Array.from({ length: n }, () => Math.floor(rng.next() * 20) / 7);
    const total = w.reduce((a, b) => a + b, 0);
    const p = rng.next();
    const chosen = nucleus(
      w,
      Int32Array.from({ length: n }, (_, i) => i),
      p * total,
    );
    const sorted = Array.from(w).sort((a, b) => b - a);
    let k = 0;
    let acc = 0;
    while (k < n && acc < p * total) acc += sorted[k++];
    assert.equal(chosen.length, Math.max(k, 1), `trial ${trial}`);
    const picked = Array.from(chosen, (i) => w[i]).sort((a, b) => b - a);
    assert.deepEqual(picked, sorted.slice(0, Math.max(k, 1)));
  }
});

test('logit_bias and the penalties move the right tokens', () => {
  const logits = Float32Array.from([1, 2, 3]);
  assert.equal(new Sampler(params({ temperature: 0, logitBias: { 0: 100 } }), 3).sample(logits, empty()).token, 0);
  const seen: SequenceHistory = { outputCounts: new Map([[2, 3]]), seen: new Set([2]) };
  // repetition 2: logit 3 → 1.5 < 2
  assert.equal(new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), 3).sample(logits, seen).token, 1);
  // presence 1.5: 3 → 1.5
  assert.equal(new Sampler(params({ temperature: 0, presencePenalty: 1.5 }), 3).sample(logits, seen).token, 1);
  // frequency 0.4 × 3 occurrences: 3 → 1.8
  assert.equal(new Sampler(params({ temperature: 0, frequencyPenalty: 0.4 }), 3).sample(logits, seen).token, 1);
  assert.equal(new Sampler(params({ temperature: 0, frequencyPenalty: 0.2 }), 3).sample(logits, seen).token, 2);
});

test('logprobs are those of the raw distribution, top-n sorted', () => {
  const logits = fromProbs([0.1, 0.6, 0.3]);
  const lp = tokenLogprob(logits, 2, 2);
  assert.ok(Math.abs(lp.logprob - Math.log(0.3)) < 1e-6);
  assert.deepEqual(
    lp.top.map((t) => t.token),
    [1, 2],
  );
  assert.deepEqual(topIndices(Float32Array.from([3, 9, 1, 9, 5]), 3), [1, 3, 4]);
  const s = new Sampler(params({ temperature: 0, logprobs: 1, logitBias: { 0: 50 } }), 3);
  const out = s.sample(logits, empty());
  assert.equal(out.token, 0);
  assert.ok(Math.abs(out.logprob!.logprob - Math.log(0.1)) < 1e-6, 'bias does not change the reported logprob');
});

/** The textbook order: penalties, temperature softmax, the k best, the nucleus, renormalize. */
function expected(logits: number[], p: { temperature: number; topK: number; topP: number }): number[] {
  const max = Math.max(...logits);
  const w = logits.map((l) => Math.exp((l - max) / p.temperature));
  const order = w
    .map((_, i) => i)
    .sort((a, b) => w[b] - w[a])
    .slice(0, p.topK);
  const total = order.reduce((s, i) => s + w[i], 0);
  const kept: number[] = [];
  let acc = 0;
  for (const i of order) {
    if (acc >= p.topP * total) break;
    kept.push(i);
    acc += w[i];
  }
  const out = new Array<number>(logits.length).fill(0);
  for (const i of kept) out[i] = w[i] / acc;
  return out;
}

test('top_k with temperature and top_p draws from the renormalized head, after penalties', () => {
  const raw = [2.0, 1.2, 0.3, 1.5, -0.5, 0.9, 1.9];
  const p = { temperature: 0.7, topK: 4, topP: 0.9 };
  const n = 30000;
  const c = counts(new Sampler(params({ ...p, seed: 11 }), raw.length), Float32Array.from(raw), n);
  expected(raw, p).forEach((q, i) => assert.ok(Math.abs(c[i] / n - q) < 0.012, `token ${i}: ${c[i] / n} vs ${q}`));
  // A repetition penalty on tokens 0 and 6 (2.0 → 1.0, 1.9 → 0.95) changes which four are the best.
  const seen: SequenceHistory = { outputCounts: new Map(), seen: new Set([0, 6]) };
  const penalized = raw.map((l, i) => (i === 0 || i === 6 ? l / 2 : l));
  const c2 = counts(new Sampler(params({ ...p, repetitionPenalty: 2, seed: 12 }), raw.length), Float32Array.from(raw), n, seen);
  expected(penalized, p).forEach((q, i) => assert.ok(Math.abs(c2[i] / n - q) < 0.012, `penalized token ${i}: ${c2[i] / n} vs ${q}`));
});

test('top indices: small and large k equal a full sort, ties in index order', () => {
  const rng = new Rng(21);
  const n = 151_936;
  // Values on a coarse grid, so many are equal.
  const x = Float32Array.from({ length: n }, () => Math.round(rng.next() * 400) / 8);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => x[b] - x[a] || a - b);
  for (const k of [1, 20, 64, 65, 1000, 20_000, n, n + 5]) {
    assert.deepEqual(topIndices(x, k), order.slice(0, k), `k = ${k}`);
    assert.deepEqual(
      [...topIndices(x, k, false)].sort((a, b) => a - b),
      order.slice(0, k).sort((a, b) => a - b),
      `unordered, k = ${k}`,
    );
  }
});

test('top_p without top_k over a large vocabulary: peaked and flat distributions both follow the nucleus', () => {
  const n = 30000;
  // Peaked: three tokens hold nearly all the mass (the nucleus lies among the 64 largest).
  const peaked = Array.from({ length: 500 }, (_, i) => (i < 3 ? 9 - i : Math.sin(i) * 0.5));
  // Flat: 300 nearly equal tokens (the nucleus spans more than 64 of them).
  const flat = Array.from({ length: 300 }, (_, i) => Math.sin(i * 1.7) * 0.05);
  for (const [name, raw, seed] of [
    ['peaked', peaked, 31],
    ['flat', flat, 32],
  ] as const) {
    const p = { temperature: 0.8, topK: raw.length, topP: 0.9 };
    const c = counts(new Sampler(params({ temperature: p.temperature, topP: p.topP, seed }), raw.length), Float32Array.from(raw), n);
    const want = expected([...raw], p);
    want.forEach((q, i) => assert.ok(Math.abs(c[i] / n - q) < 0.012, `${name} token ${i}: ${c[i] / n} vs ${q}`));
    assert.equal(c.filter((x, i) => x > 0 && want[i] === 0).length, 0, `${name}: nothing outside the nucleus`);
  }
});

test('top_k above 64 with top_p draws only among the k best, whatever earlier draws left behind', () => {
  const n = 400;
  const sampler = new Sampler(params({ temperature: 1, topK: 100, topP: 0.9, seed: 41 }), n);
  // A first draw over the full vocabulary leaves large weights on tokens 300-399 …
  const first = new Sampler(params({ temperature: 1, topP: 0.9, seed: 40 }), n);
  first.sample(
    Float32Array.from({ length: n }, (_, i) => (i >= 300 ? 10 : 0)),
    empty(),
  );
  // … and this sampler's own first draw does the same to its scratch buffer.
  sampler.sample(
    Float32Array.from({ length: n }, (_, i) => (i >= 300 ? 10 : 0)),
    empty(),
  );
  // Now tokens 0-99 are the 100 best; 300-399 are the worst.
  const logits = Float32Array.from({ length: n }, (_, i) => (i < 100 ? 2 + i / 100 : i >= 300 ? -20 : 0));
  const c = counts(sampler, logits, 3000);
  assert.equal(
    c.slice(100).reduce((a, b) => a + b, 0),
    0,
    'no token outside the top 100',
  );
});
