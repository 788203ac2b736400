import type { Qwen3Config } from '../model/config.js';
import { moeBlock } from './moe_block.js';
import { DataType, type GraphBuilder, int, ints } from './onnx_builder.js';
import type { WeightEmitter } from './weights.js';

// The pieces both layouts share (qwen3_graph.ts wires them): embedding and head, the decoder block, the projections.

interface LayerWeights {
  prefix: string;
}

export function layerPrefix(l: number): LayerWeights {
  return { prefix: `model.layers.${l}` };
}

/** Shared front: embedding lookup. Returns the hidden states and the lm_head builder. */
export function embeddingAndHead(g: GraphBuilder, w: WeightEmitter, cfg: Qwen3Config, ids: string) {
  const { vocabSize: V, hiddenSize: H } = cfg;
  const embed = w.matrix('model.embed_tokens.weight', V, H);
  // int4 exports keep the lookup table in fp16: it is the largest tensor (V × H) and a
  // lookup needs no more precision than the quantized weights around it.
  const halfTable = w.dtype === 'int4' && w.act === DataType.FLOAT;
  const table = halfTable ? w.halfTensor('model.embed_tokens.weight', [V, H], embed) : w.floatTensor('model.embed_tokens.weight', [V, H], embed);
  const gathered = g.op('Gather', [table, ids], { axis: int(0) });
  const x = halfTable ? g.op('Cast', [gathered], { to: int(DataType.FLOAT) }) : gathered;
  // Tied checkpoints reuse the embedding for lm_head: in float graphs the same initializer
  // (Gemm with transB), in int4 a quantized copy for MatMulNBits.
  // Keep the float embedding alive only when an int4 copy of it is still to be written.
  let headSource: { name: string; data: Float32Array } | null =
    cfg.tieWordEmbeddings && w.dtype === 'int4' ? { name: 'lm_head.tied', data: embed } : null;
  const lmHead = (h2d: string): string => {
    if (w.dtype === 'int4') {
      const src = headSource ?? { name: 'lm_head.weight', data: w.matrix('lm_head.weight', V, H) };
      headSource = null;
      return w.linearFrom(h2d, src.name, src.data, V, H);
    }
    const weight = cfg.tieWordEmbeddings ? table : w.floatTensor('lm_head.weight', [V, H], w.matrix('lm_head.weight', V, H));
    return g.op('Gemm', [h2d, weight], { transB: int(1) });
  };
  return { x, lmHead };
}

export function castToFloat(g: GraphBuilder, w: WeightEmitter, x: string): string {
  return w.act === DataType.FLOAT ? x : g.op('Cast', [x], { to: int(DataType.FLOAT) });
}

/**
 * Symmetric int8 per token and head: x [B, S, KVH, HD] float32 → values (int8, same
 * shape), scales [B, S, KVH, 1] = max|x| / 127, and the dequantized values.
 */
export function quantizePerToken(g: GraphBuilder, x: string): { values: string; scales: string; dequantized: string } {
  const amax = g.op('ReduceMax', [g.op('Abs', [x])], { axes: ints([-1]), keepdims: int(1) });
  const tiny = g.constant('kv_scale_floor', DataType.FLOAT, [], Float32Array.of(1e-30));
  const scales = g.op('Div', [g.op('Max', [amax, tiny]), g.constant('kv_int8_max', DataType.FLOAT, [], Float32Array.of(127))]);
  const values = g.op('Cast', [g.op('Round', [g.op('Div', [x, scales])])], { to: int(DataType.INT8) });
  const dequantized = g.op('Mul', [g.op('Cast', [values], { to: int(DataType.FLOAT) }), scales]);
  return { values, scales, dequantized };
}

/** What a layout supplies to the decoder layer both layouts share. */
export interface LayerWiring {
  /** RMSNorm as the layout computes it. */
  norm: (x: string, weight: string) => string;
  /**
   * Self-attention of layer `l` over the normed hidden state: the q/k/v projections with
   * their per-head norms and RoPE, the cache's inputs and outputs, attention itself.
   * Returns the heads merged back, [B, S, NH·HD].
   */
  attention: (h: string, l: number, prefix: string) => string;
}

/**
 * One Qwen3 decoder block, as the reference implementation reads: attention over the
 * normed input added to the residual, then the gated MLP (or expert block) over the normed result added.
 */
export function decoderLayer(g: GraphBuilder, w: WeightEmitter, cfg: Qwen3Config, x: string, l: number, wiring: LayerWiring): string {
  const { hiddenSize: H, numHeads: NH, headDim: HD, intermediateSize: I } = cfg;
  const { prefix } = layerPrefix(l);
  const attn = wiring.attention(wiring.norm(x, w.vector(`${prefix}.input_layernorm.weight`, H)), l, prefix);
  const afterAttn = g.op('Add', [x, w.linear(attn, `${prefix}.self_attn.o_proj.weight`, H, NH * HD)]);
  const h = wiring.norm(afterAttn, w.vector(`${prefix}.post_attention_layernorm.weight`, H));
  // Qwen3-MoE: the expert block on its sparse layers, the dense MLP on the others (mlp_only_layers, decoder_sparse_step).
  const sparse = cfg.moe?.sparseLayers.includes(l) ?? false;
  return g.op('Add', [afterAttn, sparse ? moeBlock(g, w, cfg, h, prefix) : mlp(g, w, h, prefix, H, I)]);
}

/**
 * The attention projections of one layer as one stacked projection (with biases if the
 * config has them) and the q/k norm weights; `queryScale` multiplies q_norm's weight (a
 * constant the attention would otherwise apply to the queries).
 */
export function qkvProjections(g: GraphBuilder, w: WeightEmitter, cfg: Qwen3Config, h: string, prefix: string, queryScale = 1) {
  const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD } = cfg;
  const names = ['q_proj', 'k_proj', 'v_proj'] as const;
  const widths = [NH * HD, KVH * HD, KVH * HD];
  const parts = names.map((name, i) => ({ srcName: `${prefix}.self_attn.${name}.weight`, n: widths[i] }));
  const [q, k, v] = w
    .linearStack(h, parts, H, `${prefix}.self_attn.qkv_proj`)
    .map((y, i) => (cfg.attentionBias ? g.op('Add', [y, w.vector(`${prefix}.self_attn.${names[i]}.bias`, widths[i])]) : y));
  return {
    q,
    k,
    v,
    qNormW:
      queryScale === 1 ? w.vector(`${prefix}.self_attn.q_norm.weight`, HD) : w.scaledVector(`${prefix}.self_attn.q_norm.weight`, HD, queryScale),
    kNormW: w.vector(`${prefix}.self_attn.k_norm.weight`, HD),
  };
}

function mlp(g: GraphBuilder, w: WeightEmitter, h: string, prefix: string, H: number, I: number): string {
  const [gate, up] = w.linearStack(
    h,
    [
      { srcName: `${prefix}.mlp.gate_proj.weight`, n: I },
      { srcName: `${prefix}.mlp.up_proj.weight`, n: I },
    ],
    H,
    `${prefix}.mlp.gate_up_proj`,
  );
  const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
  return w.linear(act, `${prefix}.mlp.down_proj.weight`, H, I);
}
