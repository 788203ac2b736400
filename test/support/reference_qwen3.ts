import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadQwen3Config, type Qwen3Config } from '../../src/model/config.js';
import { SafetensorsCheckpoint } from '../../src/model/safetensors.js';

/**
 * A from-scratch Qwen3 forward pass in float64, written straight from the architecture
 * (no KV cache, no ONNX), to check exported graphs on shapes the fixture does not cover.
 */
export class ReferenceQwen3 {
  readonly cfg: Qwen3Config;
  private readonly w = new Map<string, Float32Array>();
  private readonly raw: Record<string, unknown>;
  private ropeParams: { invFreq: Float64Array; scale: number } | null = null;

  constructor(dir: string) {
    this.cfg = loadQwen3Config(dir);
    this.raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const ckpt = new SafetensorsCheckpoint(dir);
    for (const name of ckpt.tensors.keys()) this.w.set(name, ckpt.readFloat32(name));
  }

  private get(name: string): Float32Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`missing ${name}`);
    return t;
  }

  private rmsNorm(x: Float64Array, weight: Float32Array): Float64Array {
    let ss = 0;
    for (const v of x) ss += v * v;
    const inv = 1 / Math.sqrt(ss / x.length + this.cfg.rmsNormEps);
    return x.map((v, i) => v * inv * weight[i]);
  }

  private linear(x: Float64Array, weight: Float32Array, out: number): Float64Array {
    const k = x.length;
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += weight[o * k + i] * x[i];
      y[o] = s;
    }
    return y;
  }

  /**
   * Inverse frequencies and the cos/sin scale, from config.json's own rope_scaling block
   * (read here, not through the exporter's parsed config), following transformers'
   * _compute_yarn_parameters and _compute_linear_scaling_rope_parameters.
   */
  private ropeParameters(hd: number): { invFreq: Float64Array; scale: number } {
    const base = this.cfg.ropeTheta;
    const posFreqs = Float64Array.from({ length: hd / 2 }, (_, j) => base ** ((2 * j) / hd));
    const rs = this.raw.rope_scaling as Record<string, number | string | boolean> | null | undefined;
    const kind = rs ? (rs.rope_type ?? rs.type) : 'default';
    if (!rs || kind === 'default') return { invFreq: posFreqs.map((p) => 1 / p), scale: 1 };
    const factor = rs.factor as number;
    if (kind === 'linear') return { invFreq: posFreqs.map((p) => 1 / (p * factor)), scale: 1 };
    const original = (rs.original_max_position_embeddings as number | undefined) ?? (this.raw.max_position_embeddings as number);
    const betaFast = (rs.beta_fast as number | undefined) ?? 32;
    const betaSlow = (rs.beta_slow as number | undefined) ?? 1;
    const findCorrectionDim = (numRotations: number) => (hd * Math.log(original / (numRotations * 2 * Math.PI))) / (2 * Math.log(base));
    let low = Math.floor(findCorrectionDim(betaFast));
    let high = Math.ceil(findCorrectionDim(betaSlow));
    if (rs.truncate === false) {
      low = findCorrectionDim(betaFast);
      high = findCorrectionDim(betaSlow);
    }
    low = Math.max(low, 0);
    high = Math.min(high, hd - 1);
    if (low === high) high += 0.001;
    const invFreq = posFreqs.map((p, j) => {
      const extrapolationFactor = 1 - Math.min(1, Math.max(0, (j - low) / (high - low)));
      return (1 / (factor * p)) * (1 - extrapolationFactor) + (1 / p) * extrapolationFactor;
    });
    const scale = (rs.attention_factor as number | undefined) ?? (factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1);
    return { invFreq, scale };
  }

  private rope(x: Float64Array, pos: number): Float64Array {
    const hd = x.length;
    const half = hd / 2;
    const out = new Float64Array(hd);
    this.ropeParams ??= this.ropeParameters(hd);
    const { invFreq, scale } = this.ropeParams;
    for (let i = 0; i < half; i++) {
      const a = pos * invFreq[i];
      const c = scale * Math.cos(a);
      const s = scale * Math.sin(a);
      out[i] = x[i] * c - x[i + half] * s;
      out[i + half] = x[i + half] * c + x[i] * s;
    }
    return out;
  }

  /** SwiGLU MLP: down(silu(gate(x)) · up(x)). */
  private gatedMlp(h: Float64Array, p: string, width: number): Float64Array {
    const g = this.linear(h, this.get(`${p}.gate_proj.weight`), width);
    const u = this.linear(h, this.get(`${p}.up_proj.weight`), width);
    const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
    return this.linear(act, this.get(`${p}.down_proj.weight`), this.cfg.hiddenSize);
  }

  /**
   * Qwen3-MoE layers, read from config.json itself (not the exporter's parse): a layer is
   * sparse unless listed in mlp_only_layers, when num_experts > 0 and (layer + 1) is a
   * multiple of decoder_sparse_step (transformers' Qwen3MoeDecoderLayer).
   */
  private isSparse(l: number): boolean {
    if (this.raw.model_type !== 'qwen3_moe') return false;
    const step = (this.raw.decoder_sparse_step as number | undefined) ?? 1;
    const only = (this.raw.mlp_only_layers as number[] | undefined) ?? [];
    return !only.includes(l) && (this.raw.num_experts as number) > 0 && (l + 1) % step === 0;
  }

  /**
   * Qwen3MoeSparseMoeBlock for one token: softmax over all router logits, the top
   * num_experts_per_tok, renormalised to sum 1 when norm_topk_prob, then the weighted sum
   * of those experts' MLPs.
   */
  private sparseMlp(h: Float64Array, p: string): Float64Array {
    const E = this.raw.num_experts as number;
    const k = this.raw.num_experts_per_tok as number;
    const logits = this.linear(h, this.get(`${p}.mlp.gate.weight`), E);
    const m = Math.max(...logits);
    const e = logits.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    const top = [...e.keys()].sort((a, b) => e[b] - e[a] || a - b).slice(0, k);
    const sum = top.reduce((s, i) => s + e[i] / z, 0);
    const out = new Float64Array(h.length);
    for (const i of top.sort((a, b) => a - b)) {
      const weight = this.raw.norm_topk_prob === true ? e[i] / z / sum : e[i] / z;
      const y = this.gatedMlp(h, `${p}.mlp.experts.${i}`, this.raw.moe_intermediate_size as number);
      y.forEach((v, j) => (out[j] += weight * v));
    }
    return out;
  }

  /** The experts each of `tokens`' positions routes to in layer l (to check a test model's routing is varied). */
  routedExperts(tokens: number[], l: number): number[][] {
    const seen: number[][] = [];
    this.lastLogits(tokens, (layer, h) => {
      if (layer !== l) return;
      const E = this.raw.num_experts as number;
      const logits = this.linear(h, this.get(`model.layers.${l}.mlp.gate.weight`), E);
      seen.push([...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, this.raw.num_experts_per_tok as number));
    });
    return seen;
  }

  /** Logits of the last position after running `tokens` from position 0. */
  lastLogits(tokens: number[], seeMlpInput?: (layer: number, h: Float64Array) => void): Float64Array {
    const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD, intermediateSize: I, vocabSize: V } = this.cfg;
    const embed = this.get('model.embed_tokens.weight');
    let xs = tokens.map((t) => Float64Array.from(embed.subarray(t * H, (t + 1) * H)));
    for (let l = 0; l < this.cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      const qs: Float64Array[][] = [];
      const ks: Float64Array[][] = [];
      const vs: Float64Array[][] = [];
      xs.forEach((x, pos) => {
        const h = this.rmsNorm(x, this.get(`${p}.input_layernorm.weight`));
        const project = (name: string, n: number) => {
          const y = this.linear(h, this.get(`${p}.self_attn.${name}.weight`), n);
          if (this.cfg.attentionBias) this.get(`${p}.self_attn.${name}.bias`).forEach((b, i) => (y[i] += b));
          return y;
        };
        const q = project('q_proj', NH * HD);
        const k = project('k_proj', KVH * HD);
        const v = project('v_proj', KVH * HD);
        qs.push(
          Array.from({ length: NH }, (_, n) =>
            this.rope(this.rmsNorm(q.subarray(n * HD, (n + 1) * HD), this.get(`${p}.self_attn.q_norm.weight`)), pos),
          ),
        );
        ks.push(
          Array.from({ length: KVH }, (_, n) =>
            this.rope(this.rmsNorm(k.subarray(n * HD, (n + 1) * HD), this.get(`${p}.self_attn.k_norm.weight`)), pos),
          ),
        );
        vs.push(Array.from({ length: KVH }, (_, n) => v.slice(n * HD, (n + 1) * HD)));
      });
      xs = xs.map((x, pos) => {
        const attn = new Float64Array(NH * HD);
        for (let n = 0; n < NH; n++) {
          const kv = Math.floor(n / (NH / KVH));
          const scores = Array.from({ length: pos + 1 }, (_, j) => {
            let s = 0;
            for (let d = 0; d < HD; d++) s += qs[pos][n][d] * ks[j][kv][d];
            return s / Math.sqrt(HD);
          });
          const m = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let j = 0; j <= pos; j++) for (let d = 0; d < HD; d++) attn[n * HD + d] += (e[j] / z) * vs[j][kv][d];
        }
        const o = this.linear(attn, this.get(`${p}.self_attn.o_proj.weight`), H);
        const x1 = x.map((v, i) => v + o[i]);
        const h2 = this.rmsNorm(x1, this.get(`${p}.post_attention_layernorm.weight`));
        seeMlpInput?.(l, h2);
        const d = this.isSparse(l) ? this.sparseMlp(h2, p) : this.gatedMlp(h2, `${p}.mlp`, I);
        return x1.map((v, i) => v + d[i]);
      });
    }
    const h = this.rmsNorm(xs[xs.length - 1], this.get('model.norm.weight'));
    const head = this.cfg.tieWordEmbeddings ? embed : this.get('lm_head.weight');
    return this.linear(h, head, V);
  }
}

/** log(sum(exp(x))) in float64: logSoftmax(x)[j] is x[j] minus this. */
export function logSumExp(x: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, x[i]);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
  return Math.log(s) + m;
}

export function logSoftmax(x: ArrayLike<number>): Float64Array {
  const lse = logSumExp(x);
  // A plain loop: Float64Array.from with a mapping function calls it per element, which over
  // 151k-entry rows was the slowest part of the accuracy tests.
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] - lse;
  return out;
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Largest |a[j] − b[j]|. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  for (let j = 0; j < a.length; j++) diff = Math.max(diff, Math.abs(a[j] - b[j]));
  return diff;
}
