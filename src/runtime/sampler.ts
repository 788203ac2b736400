import type { GenerationConfig } from '../model/generation_config.js';
import { logSumExp } from './log_sum_exp.js';
/**
 * Per-request token sampling over one row of logits (151,936 floats for Qwen3) without
 * sorting the vocabulary: top-k and top-p use selection (expected O(V)), min-p a
 * threshold. Order as in vLLM: logit bias → penalties → temperature → top-k → top-p →
 * min-p → draw. Log-probabilities reported to clients are those of the raw model output.
 */
export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  topP: number;
  /** 0 or -1 disables. */
  topK: number;
  minP: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** Multiplicative, as in HF/vLLM; 1 disables. */
  repetitionPenalty: number;
  logitBias: Record<number, number> | null;
  seed: number | null;
  /** How many top alternatives to report per token (0–20); null for no logprobs. */
  logprobs: number | null;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: null,
  seed: null,
  logprobs: null,
};

/**
 * Sampling when a request says nothing: the checkpoint's generation_config.json values
 * over the neutral ones. Every command (serve, generate, bench) starts from these.
 */
export function samplingDefaults(g: GenerationConfig): SamplingParams {
  return {
    ...DEFAULT_SAMPLING,
    temperature: g.temperature ?? DEFAULT_SAMPLING.temperature,
    topP: g.topP ?? DEFAULT_SAMPLING.topP,
    topK: g.topK ?? DEFAULT_SAMPLING.topK,
    minP: g.minP ?? DEFAULT_SAMPLING.minP,
    repetitionPenalty: g.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
  };
}

export interface TokenLogprob {
  token: number;
  logprob: number;
  top: Array<{ token: number; logprob: number }>;
  /** 1 + how many tokens scored higher (prompt scores carry it, for vLLM's prompt_logprobs). */
  rank?: number;
}

/** xoshiro128**: a small seeded generator; each request owns one, so batching never shifts draws. */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    // splitmix32 expands the seed into the state.
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bestV = x[0];
  for (let i = 1; i < x.length; i++) {
    if (x[i] > bestV) {
      bestV = x[i];
      best = i;
    }
  }
  return best;
}

/** Up to this k, the k best are kept in a small sorted list; beyond, found by a sort. */
const SMALL_K = 64;

/**
 * Indices of the k largest values, largest first and equal values in index order; with
 * `ordered` false, a large k may come back in any order (sampling needs only the set).
 */
export function topIndices(x: ArrayLike<number>, k: number, ordered = true): number[] {
  return k <= SMALL_K ? topIndicesSmall(x, k) : topIndicesLarge(x, k, ordered);
}

/**
 * Large k: the k-th largest value from a native numeric sort of a copy, then one pass.
 * The sorted-list insertion below costs O(n·k), which for a top_k in the thousands
 * stalled every stream of the batch.
 */
function topIndicesLarge(x: ArrayLike<number>, k: number, ordered: boolean): number[] {
  const n = x.length;
  const m = Math.min(k, n);
  if (m === 0) return [];
  const sorted = Float64Array.from(x).sort();
  const threshold = sorted[n - m];
  const above: number[] = [];
  const equal: number[] = [];
  for (let i = 0; i < n; i++) {
    if (x[i] > threshold) above.push(i);
    else if (x[i] === threshold) equal.push(i);
  }
  const picked = above.concat(equal.slice(0, m - above.length));
  return ordered ? picked.sort((a, b) => x[b] - x[a] || a - b) : picked;
}

function topIndicesSmall(x: ArrayLike<number>, k: number): number[] {
  if (k <= 0) return [];
  const idx = new Int32Array(k);
  const val = new Float64Array(k);
  let n = 0;
  // Once k are held, most values fail one comparison with the k-th: a local, not an array read.
  let floor = -Infinity;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (n === k && !(v > floor)) continue;
    let pos = n === k ? k - 1 : n++;
    while (pos > 0 && val[pos - 1] < v) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      pos--;
    }
    val[pos] = v;
    idx[pos] = i;
    if (n === k) floor = val[k - 1];
  }
  return Array.from(idx.subarray(0, n));
}

/**
 * Among `cand` (indices into `w`, weights ≥ 0), keeps the smallest set of largest weights
 * whose sum reaches `target`, by quickselect-style partitioning (expected O(n)).
 */
export function nucleus(w: Float64Array, cand: Int32Array, target: number): Int32Array {
  const a = cand;
  let lo = 0; // a[0, lo) is taken
  let hi = a.length; // the rest of the answer lies in a[lo, hi)
  let need = target;
  while (lo < hi) {
    const pivot = w[a[lo + ((hi - lo) >> 1)]];
    // Three-way partition of a[lo, hi): > pivot in [lo, lt), == pivot in [lt, gt), < pivot in [gt, hi).
    let i = lo;
    let lt = lo;
    let gt = hi;
    while (i < gt) {
      const v = w[a[i]];
      if (v > pivot) {
        const t = a[lt];
        a[lt++] = a[i];
        a[i++] = t;
      } else if (v < pivot) {
        const t = a[--gt];
        a[gt] = a[i];
        a[i] = t;
      } else {
        i++;
      }
    }
    let upper = 0;
    for (let j = lo; j < lt; j++) upper += w[a[j]];
    if (upper >= need) {
      hi = lt;
      continue;
    }
    need -= upper;
    const equal = (gt - lt) * pivot;
    if (pivot > 0 && equal >= need) return a.subarray(0, lt + Math.min(gt - lt, Math.ceil(need / pivot)));
    need -= equal;
    lo = gt;
  }
  return a.subarray(0, Math.max(lo, 1));
}

export interface SequenceHistory {
  /** Occurrences of each generated token (presence / frequency penalties). */
  outputCounts: Map<number, number>;
  /** Every token in prompt and output (repetition penalty). */
  seen: Set<number>;
}

export class Sampler {
  private readonly rng: Rng;
  private readonly scratch: Float64Array;
  /** Every token id, for draws without top-k: built once, copied per token (nucleus reorders it). */
  private allIds: Int32Array | null = null;
  private allCandidates: Int32Array | null = null;

  constructor(
    readonly params: SamplingParams,
    vocabSize: number,
  ) {
    this.rng = new Rng(params.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.scratch = new Float64Array(vocabSize);
  }

  /** Picks the next token from one row of raw logits. */
  sample(logits: Float32Array, history: SequenceHistory): { token: number; logprob: TokenLogprob | null } {
    const p = this.params;
    const plain = !p.logitBias && p.repetitionPenalty === 1 && p.presencePenalty === 0 && p.frequencyPenalty === 0;
    if (plain) {
      // Nothing adjusts the scores: pick from the raw logits, no copy.
      const token = p.temperature <= 0 ? argmax(logits) : this.draw(logits);
      return { token, logprob: p.logprobs === null ? null : tokenLogprob(logits, token, p.logprobs) };
    }
    const w = this.scratch;
    for (let i = 0; i < logits.length; i++) w[i] = logits[i];
    if (p.logitBias) for (const [id, bias] of Object.entries(p.logitBias)) if (Number(id) < w.length) w[Number(id)] += bias;
    if (p.repetitionPenalty !== 1) {
      for (const id of history.seen) w[id] = w[id] > 0 ? w[id] / p.repetitionPenalty : w[id] * p.repetitionPenalty;
    }
    if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
      for (const [id, count] of history.outputCounts) w[id] -= p.presencePenalty + p.frequencyPenalty * count;
    }
    const token = p.temperature <= 0 ? argmax(w) : this.draw(w);
    return { token, logprob: p.logprobs === null ? null : tokenLogprob(logits, token, p.logprobs) };
  }

  /**
   * Draws from softmax(x / T) restricted by top-k, top-p and min-p. `x` may be the scratch
   * buffer itself: each entry is read before its weight is written there. With top-k the
   * k largest scores are selected first (temperature keeps their order), so only k
   * exponentials are taken: exp over the whole vocabulary cost a sizeable part of a
   * decode step, paid by every stream of the batch in turn.
   */
  private draw(x: ArrayLike<number>): number {
    const p = this.params;
    const w = this.scratch;
    let cand: Int32Array;
    if (p.topK > 0 && p.topK < x.length) {
      cand = Int32Array.from(topIndices(x, p.topK, false));
      let max = -Infinity;
      for (const i of cand) if (x[i] > max) max = x[i];
      for (const i of cand) w[i] = Math.exp((x[i] - max) / p.temperature);
    } else {
      let max = -Infinity;
      for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
      for (let i = 0; i < x.length; i++) w[i] = Math.exp((x[i] - max) / p.temperature);
      this.allIds ??= Int32Array.from({ length: x.length }, (_, i) => i);
      this.allCandidates ??= new Int32Array(x.length);
      cand = this.allCandidates;
      cand.set(this.allIds);
    }
    // From here on only the candidates' weights in `w` are read.
    if (p.topP < 1) {
      let total = 0;
      for (const i of cand) total += w[i];
      const target = p.topP * total;
      // The nucleus is a prefix of the weights sorted down: when the 64 largest already
      // reach the target (a peaked distribution, as a language model's usually is), look
      // no further than them. Only when every token is a candidate: with top-k, `w` holds
      // stale weights outside the candidates.
      if (cand === this.allCandidates && cand.length > SMALL_K) {
        const head = topIndices(w, SMALL_K);
        let headSum = 0;
        for (const i of head) headSum += w[i];
        if (headSum >= target) cand = Int32Array.from(head);
      }
      cand = nucleus(w, cand, target);
    }
    if (p.minP > 0) {
      let best = 0;
      for (const i of cand) if (w[i] > best) best = w[i];
      const floor = p.minP * best;
      cand = cand.filter((i) => w[i] >= floor);
    }
    let total = 0;
    for (const i of cand) total += w[i];
    let r = this.rng.next() * total;
    for (const i of cand) {
      r -= w[i];
      if (r < 0) return i;
    }
    return cand[cand.length - 1];
  }
}

/** The chosen token's log-probability and the top-n alternatives, from the raw logits. */
export function tokenLogprob(logits: Float32Array, token: number, n: number): TokenLogprob {
  const lse = logSumExp(logits);
  const top = n > 0 ? topIndices(logits, n).map((id) => ({ token: id, logprob: logits[id] - lse })) : [];
  return { token, logprob: logits[token] - lse, top };
}
