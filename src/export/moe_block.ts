import type { Qwen3Config } from '../model/config.js';
import { DataType, type GraphBuilder, int, ints, string } from './onnx_builder.js';
import { transpose, type WeightEmitter } from './weights.js';

/**
 * Qwen3-MoE's sparse MLP block (transformers' Qwen3MoeSparseMoeBlock) in standard ONNX
 * operators, over the normed hidden state h [B, S, H]:
 *
 * - the router `mlp.gate` (kept in float, never int4: a quantized router would pick other
 *   experts) gives logits; softmax over all experts in float32, then TopK; with
 *   norm_topk_prob the k weights are divided by their sum;
 * - each expert is computed only on the rows that chose it: Compress gathers those rows,
 *   its gated MLP runs on them (MatMul, or MatMulNBits in int4 exports, as dense layers),
 *   the result is scaled by the routing weight and ScatterND adds it to those rows;
 * - experts are added in index order onto zeros, the order transformers' index_add_ loop uses.
 *
 * Why not com.microsoft MoE / QMoE: their results for a row depend on how many other rows
 * picked the same expert (measured: docs/export.md), which would break bit-identical
 * batching and prefix caching. MatMul's rows do not depend on each other.
 */
export function moeBlock(g: GraphBuilder, w: WeightEmitter, cfg: Qwen3Config, h: string, prefix: string): string {
  const moe = cfg.moe;
  if (!moe) throw new Error('moeBlock needs a qwen3_moe config');
  const { hiddenSize: H } = cfg;
  const { numExperts: E, topK: K, expertIntermediateSize: EI } = moe;
  const x = g.op('Reshape', [h, g.int64s([-1, H])]); // [N, H]
  const routerName = `${prefix}.mlp.gate.weight`;
  const router = w.floatTensor(routerName, [H, E], transpose(w.matrix(routerName, E, H), E, H));
  const logits = g.op('MatMul', [x, router]);
  const probs = g.op('Softmax', [w.act === DataType.FLOAT ? logits : g.op('Cast', [logits], { to: int(DataType.FLOAT) })], { axis: int(-1) }); // [N, E] float32
  const [topP, topIdx] = g.node('TopK', [probs, g.int64s([K])], { outputs: 2, attrs: { axis: int(-1), largest: int(1), sorted: int(1) } });
  const topW = moe.normTopkProb ? g.op('Div', [topP, g.op('ReduceSum', [topP, g.int64s([-1])], { keepdims: int(1) })]) : topP;

  // Routing as dense [E, N] tables: whether row n chose expert e, and with what weight.
  // The weighted sum is kept in float32 whatever the activations (ONNX Runtime's CPU
  // ScatterND cannot add fp16), and cast back once.
  const zero = g.constant('moe_zero', DataType.FLOAT, [], Float32Array.of(0));
  const one = g.constant('moe_one', DataType.FLOAT, [], Float32Array.of(1));
  const none = g.op('Mul', [probs, zero]);
  const scatter = (values: string) => g.op('Transpose', [g.op('ScatterElements', [none, topIdx, values], { axis: int(1) })], { perm: ints([1, 0]) });
  const chosen = g.op('Cast', [scatter(g.op('Add', [g.op('Mul', [topW, zero]), one]))], { to: int(DataType.BOOL) }); // [E, N]
  const weights = g.op('Unsqueeze', [scatter(topW), g.int64s([-1])]); // [E, N, 1]
  const shape = g.op('Shape', [x]);
  const rows = g.op('Gather', [shape, g.int64Scalar(0)], { axis: int(0) });
  const rowIds = g.op('Unsqueeze', [g.op('Range', [g.int64Scalar(0), rows, g.int64Scalar(1)]), g.int64s([-1])]); // [N, 1]
  const toFloat = (t: string) => (w.act === DataType.FLOAT ? t : g.op('Cast', [t], { to: int(DataType.FLOAT) }));
  let acc = g.op('Expand', [zero, shape]);
  for (let e = 0; e < E; e++) {
    const p = `${prefix}.mlp.experts.${e}`;
    const picked = g.op('Gather', [chosen, g.int64Scalar(e)], { axis: int(0) }); // [N] bool
    const xe = g.op('Compress', [x, picked], { axis: int(0) }); // [n_e, H]
    const [gate, up] = w.linearStack(
      xe,
      [
        { srcName: `${p}.gate_proj.weight`, n: EI },
        { srcName: `${p}.up_proj.weight`, n: EI },
      ],
      H,
      `${p}.gate_up_proj`,
    );
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    const out = w.linear(act, `${p}.down_proj.weight`, H, EI);
    const we = g.op('Compress', [g.op('Gather', [weights, g.int64Scalar(e)], { axis: int(0) }), picked], { axis: int(0) }); // [n_e, 1]
    const at = g.op('Compress', [rowIds, picked], { axis: int(0) }); // [n_e, 1]
    acc = g.op('ScatterND', [acc, at, g.op('Mul', [toFloat(out), we])], { reduction: string('add') });
  }
  const sum = w.act === DataType.FLOAT ? acc : g.op('Cast', [acc], { to: int(w.act) });
  return g.op('Reshape', [sum, g.op('Shape', [h])]);
}
