import type { Qwen3Config } from '../model/config.js';
import { DataType, float, type GraphBuilder, graph, int, ints, string } from './onnx_builder.js';
import { transpose, type WeightEmitter } from './weights.js';

/**
 * Qwen3-MoE's sparse MLP block (transformers' Qwen3MoeSparseMoeBlock) in standard ONNX
 * operators, over the normed hidden state h [B, S, H]:
 *
 * - the router `mlp.gate` (kept in float, never int4: a quantized router would pick other
 *   experts) gives logits; softmax over all experts in float32, then TopK; with
 *   norm_topk_prob the k weights are divided by their sum;
 * - one Loop runs over the experts the step's rows chose, in index order: Compress gathers
 *   an expert's rows, its gated MLP runs on them (MatMul, or MatMulNBits in int4 exports, on
 *   the expert's slice of stacked weights), the result is scaled by the routing weight and
 *   ScatterND adds it to those rows, onto zeros, as transformers' index_add_ loop does. A
 *   layer is a few dozen nodes whatever its expert count (a subgraph per expert made
 *   ONNX Runtime's session load grow faster than the layers, docs/performance.md).
 *
 * int4 exports for the CPU (fp32 activations, int8 compute, experts as wide as whole blocks)
 * run the experts in one com.microsoft QMoE node per layer instead: see `fusedExperts`.
 * Float exports keep the Loop: com.microsoft MoE's result for a row depends on the other rows
 * in the batch (docs/export.md), which would break bit-identical batching.
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
  if (canFuseExperts(w, cfg)) return g.op('Reshape', [fusedExperts(g, w, cfg, x, { probs, topIdx, topW }, prefix), g.op('Shape', [h])]);

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
  const gateUp = w.expertStack(`${prefix}.mlp.experts.gate_up_proj`, E, 2 * EI, H, (e) => {
    const stacked = new Float32Array(2 * EI * H);
    stacked.set(expertWeight(w, prefix, e, 'gate_proj', EI, H));
    stacked.set(expertWeight(w, prefix, e, 'up_proj', EI, H), EI * H);
    return stacked;
  });
  const down = w.expertStack(`${prefix}.mlp.experts.down_proj`, E, H, EI, (e) => expertWeight(w, prefix, e, 'down_proj', H, EI));

  // One Loop over the experts the step's rows chose, in index order: the graph has a node
  // group per layer, not per expert, and an expert no row chose costs nothing.
  const chosenExperts = g.node('Unique', [g.op('Reshape', [topIdx, g.int64s([-1])])], { attrs: { sorted: int(1) } })[0];
  const tag = `${prefix.replaceAll('.', '_')}_experts`;
  const b = g.body(tag);
  const [iter, cond, accIn] = [`${tag}_i`, `${tag}_cond`, `${tag}_acc`];
  b.input(iter, DataType.INT64, []);
  b.input(cond, DataType.BOOL, []);
  b.input(accIn, DataType.FLOAT, [`${tag}_rows`, H]);
  const e = b.op('Gather', [chosenExperts, iter], { axis: int(0) });
  const picked = b.op('Gather', [chosen, e], { axis: int(0) }); // [N] bool
  const xe = b.op('Compress', [x, picked], { axis: int(0) }); // [n_e, H]
  const [gate, up] = b.node('Split', [w.expertLinear(b, xe, gateUp, e), b.int64s([EI, EI])], { outputs: 2, attrs: { axis: int(-1) } });
  const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up]);
  const out = w.expertLinear(b, act, down, e);
  const outF = w.act === DataType.FLOAT ? out : b.op('Cast', [out], { to: int(DataType.FLOAT) });
  const we = b.op('Compress', [b.op('Gather', [weights, e], { axis: int(0) }), picked], { axis: int(0) }); // [n_e, 1]
  const at = b.op('Compress', [rowIds, picked], { axis: int(0) }); // [n_e, 1]
  b.node('ScatterND', [accIn, at, b.op('Mul', [outF, we])], { outputs: [`${tag}_acc_out`], attrs: { reduction: string('add') } });
  b.node('Identity', [cond], { outputs: [`${tag}_cond_out`] });
  b.output(`${tag}_cond_out`, DataType.BOOL, []);
  b.output(`${tag}_acc_out`, DataType.FLOAT, [`${tag}_rows`, H]);
  const acc = g.node('Loop', [g.op('Size', [chosenExperts]), '', g.op('Expand', [zero, shape])], {
    attrs: { body: graph(b.toGraph(tag)) },
  })[0];
  const sum = w.act === DataType.FLOAT ? acc : g.op('Cast', [acc], { to: int(w.act) });
  return g.op('Reshape', [sum, g.op('Shape', [h])]);
}

/**
 * QMoE runs an expert once over all the rows that chose it, on the MatMulNBits kernels, but
 * adds a row's k experts in an order that depends on the other rows (by how many rows chose
 * each expert, and by thread). With blocks of 32 those kernels give a row the same bits
 * whatever rows share its expert (test/engine.test.ts batches such an export), so each row
 * is given to QMoE k times, each copy routed to one expert by a one-hot router (weight
 * exactly 1, no sum inside), and the k results are weighted and added here in expert index order, as
 * transformers' index_add_ loop does: batching changes nothing. With larger blocks the
 * kernels' rows change in the last bits with their number, as the export's other
 * MatMulNBits do with the batch, so QMoE routes and sums itself (it copies less).
 */
function fusedExperts(
  g: GraphBuilder,
  w: WeightEmitter,
  cfg: Qwen3Config,
  x: string,
  route: { probs: string; topIdx: string; topW: string },
  prefix: string,
): string {
  const moe = cfg.moe!;
  const { hiddenSize: H } = cfg;
  const { numExperts: E, topK: K, expertIntermediateSize: EI } = moe;
  const block = w.int4Settings!.blockSize;
  // QMoE's fused SwiGLU reads gate and up interleaved: row 2i is gate_proj's row i, 2i + 1 up_proj's.
  const fc1 = w.int4Experts(`${prefix}.mlp.experts.gate_up_proj`, E, 2 * EI, H, (e) => {
    const gate = expertWeight(w, prefix, e, 'gate_proj', EI, H);
    const up = expertWeight(w, prefix, e, 'up_proj', EI, H);
    const rows = new Float32Array(2 * EI * H);
    for (let i = 0; i < EI; i++) {
      rows.set(gate.subarray(i * H, (i + 1) * H), 2 * i * H);
      rows.set(up.subarray(i * H, (i + 1) * H), (2 * i + 1) * H);
    }
    return rows;
  });
  const fc2 = w.int4Experts(`${prefix}.mlp.experts.down_proj`, E, H, EI, (e) => expertWeight(w, prefix, e, 'down_proj', H, EI));
  const qmoe = (rows: string, router: string, k: number, routerWeights: string[], normalize: boolean) =>
    g.op(
      'QMoE',
      [rows, router, fc1.weight, fc1.scales, '', fc2.weight, fc2.scales, ...routerWeights],
      {
        k: int(k),
        activation_type: string('swiglu'),
        swiglu_fusion: int(1),
        activation_alpha: float(1),
        activation_beta: float(0),
        swiglu_limit: float(3.4e38), // no clamp: Qwen3's SwiGLU is silu(gate) · up
        expert_weight_bits: int(4),
        block_size: int(block),
        accuracy_level: int(4),
        normalize_routing_weights: int(normalize ? 1 : 0),
      },
      'com.microsoft',
    );
  if (block !== 32) {
    // router_weights (input 14): our float32 softmax, renormalised over the k inside when norm_topk_prob.
    return qmoe(x, route.probs, K, ['', '', '', '', '', '', '', route.probs], moe.normTopkProb);
  }

  // The k choices of each row in expert index order, with their weights.
  const [sortedIdx, slot] = g.node('TopK', [g.op('Cast', [route.topIdx], { to: int(DataType.FLOAT) }), g.int64s([K])], {
    outputs: 2,
    attrs: { axis: int(-1), largest: int(0), sorted: int(1) },
  });
  const idx = g.op('Cast', [sortedIdx], { to: int(DataType.INT64) }); // [N, K]
  const weights = g.op('Unsqueeze', [g.op('GatherElements', [route.topW, slot], { axis: int(1) }), g.int64s([-1])]); // [N, K, 1]
  const offOn = g.constant('moe_off_on', DataType.FLOAT, [2], Float32Array.of(0, 1));
  const router = g.op('Reshape', [g.op('OneHot', [idx, g.int64Scalar(E), offOn], { axis: int(-1) }), g.int64s([-1, E])]); // [N·K, E]
  const rows = g.op('Reshape', [g.op('Expand', [g.op('Unsqueeze', [x, g.int64s([1])]), g.int64s([1, K, 1])]), g.int64s([-1, H])]); // [N·K, H]
  const y = qmoe(rows, router, 1, [], false);
  const parts = g.op('Mul', [g.op('Reshape', [y, g.int64s([-1, K, H])]), weights]); // [N, K, H]
  let acc = g.op('Gather', [parts, g.int64Scalar(0)], { axis: int(1) });
  for (let j = 1; j < K; j++) acc = g.op('Add', [acc, g.op('Gather', [parts, g.int64Scalar(j)], { axis: int(1) })]);
  return acc;
}

/** QMoE runs on the MatMulNBits kernels only with int8 compute and whole blocks (else it dequantizes to float). */
function canFuseExperts(w: WeightEmitter, cfg: Qwen3Config): boolean {
  const int4 = w.int4Settings;
  if (!int4 || w.act !== DataType.FLOAT || int4.accuracyLevel !== 4) return false;
  const ei = cfg.moe!.expertIntermediateSize;
  return cfg.hiddenSize % int4.blockSize === 0 && ei % int4.blockSize === 0;
}

/** Expert `e`'s HF Linear weight `part` (gate_proj, up_proj, down_proj) of the layer at `prefix`, [n, k]. */
function expertWeight(w: WeightEmitter, prefix: string, e: number, part: string, n: number, k: number): Float32Array {
  return w.matrix(`${prefix}.mlp.experts.${e}.${part}.weight`, n, k);
}
