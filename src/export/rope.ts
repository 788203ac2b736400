import type { Qwen3Config } from '../model/config.js';

/**
 * Rotary inverse frequencies, one per pair of dimensions, with static scaling applied.
 * YaRN (as transformers and vLLM compute it) keeps high-frequency dimensions as trained,
 * divides low-frequency ones by the factor, and blends linearly across the dimensions
 * whose wavelengths fall between beta_fast and beta_slow rotations over the original
 * context.
 */
export function ropeInverseFrequencies(cfg: Pick<Qwen3Config, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  const dim = cfg.headDim;
  const half = dim / 2;
  const base = cfg.ropeTheta;
  const trained = Float64Array.from({ length: half }, (_, i) => 1 / base ** ((2 * i) / dim));
  const s = cfg.ropeScaling;
  if (!s) return trained;
  if (s.type === 'linear') return trained.map((f) => f / s.factor);
  // The dimension index at which `rotations` full turns fit in the original context.
  const correctionDim = (rotations: number) => (dim * Math.log(s.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
  let low = correctionDim(s.betaFast);
  let high = correctionDim(s.betaSlow);
  if (s.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001;
  return trained.map((f, i) => {
    const interpolated = Math.min(Math.max((i - low) / (high - low), 0), 1);
    return (f / s.factor) * interpolated + f * (1 - interpolated);
  });
}

/** RoPE tables [maxPos, headDim/2] for Qwen3's rotate-half rotary embedding, in float64 then rounded. */
export function ropeTables(cfg: Qwen3Config): { cos: Float32Array; sin: Float32Array } {
  const half = cfg.headDim / 2;
  const cos = new Float32Array(cfg.maxPositionEmbeddings * half);
  const sin = new Float32Array(cfg.maxPositionEmbeddings * half);
  const invFreq = ropeInverseFrequencies(cfg);
  // YaRN scales cos and sin alike, which scales every attention score by its square.
  const scale = cfg.ropeScaling?.type === 'yarn' ? cfg.ropeScaling.attentionFactor : 1;
  for (let p = 0; p < cfg.maxPositionEmbeddings; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * invFreq[i];
      cos[p * half + i] = scale * Math.cos(a);
      sin[p * half + i] = scale * Math.sin(a);
    }
  }
  return { cos, sin };
}
