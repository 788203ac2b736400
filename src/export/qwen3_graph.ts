import type { Qwen3Config } from '../model/config.js';
import { FAST_IO_NAMES, type GraphIo, STANDARD_IO_NAMES } from './graph_io.js';
import { ioName } from './manifest.js';
import { DataType, type ElemType, float, type GraphBuilder, int, ints } from './onnx_builder.js';
import { castToFloat, decoderLayer, embeddingAndHead, qkvProjections, quantizePerToken } from './qwen3_layers.js';
import { ropeTables } from './rope.js';
import type { WeightEmitter } from './weights.js';

const INT64_MAX = Number.MAX_SAFE_INTEGER;
/**
 * The fast layout (docs/architecture.md, KV cache): GQA over a capacity KV buffer owned by the caller,
 * RoPE outside GQA so the new tokens' post-RoPE keys can be outputs, logits for the last
 * token only.
 */
export type AttentionKind = 'matmul' | 'gqa';
/** What leaves the graph per position: the head's logits, or the final norm's hidden state (embedding models). */
export type GraphOutput = 'logits' | 'hidden';

/**
 * Attention over the caller's capacity buffer read in place (CPU default): scores against
 * the cached keys and against this step's own keys are computed apart and share one
 * softmax, so nothing proportional to the context is copied. ONNX Runtime's CPU GQA instead
 * copies every row's past into a fresh present buffer each step (slower from ~1k tokens,
 * and it doubles KV memory); on CUDA its fused kernel is the better choice.
 */
/**
 * Query heads of a KV head's group that share one product with the cache as its rows (the
 * rest are products of their own): one with several KV heads, so a decode step's products
 * with the cache have one row; the whole group with one KV head, since ONNX Runtime folds
 * the heads into rows whenever the batch has one sequence and a sequence's result must not
 * depend on its batch.
 */
function headsPerProduct(cfg: Qwen3Config): number {
  return cfg.numKvHeads > 1 ? 1 : cfg.numHeads / cfg.numKvHeads;
}

/** Products with the cache per KV head's group (GB): its query heads over headsPerProduct. */
function productsPerGroup(cfg: Qwen3Config): number {
  return cfg.numHeads / cfg.numKvHeads / headsPerProduct(cfg);
}

function inPlaceAttention(
  g: GraphBuilder,
  cfg: Qwen3Config,
  /** This step's queries [B, S, NH·HD] in `qType`. */
  q: string,
  qType: ElemType,
  /** This step's keys [B, KVH, HD, S] and values [B, KVH, S, HD], as the cache will hold them. */
  kNewT: string,
  vNew: string,
  pastK: string,
  pastV: string,
  /** Element type of the cache and of kNewT / vNew (float32 for an int8 cache: dequantized). */
  kv: { past: ElemType; fresh: ElemType; scales?: { key: string; value: string } },
  /** Computed once for all layers: the score masks, the capacity as a 1-D tensor, the new scores' shapes. */
  shared: { pastMask: string; newMask: string; capacity1: string; newScores5: string; newProbs4: string },
): string {
  const { numHeads: NH, numKvHeads: KVH, headDim: HD } = cfg;
  const G = NH / KVH;
  // Everything is computed in float32: ONNX Runtime's CPU MatMul has no fp16 kernel and
  // would wrap each fp16 MatMul in casts anyway. An fp16 or int8 cache is widened once per
  // layer (the only cast proportional to the context); queries and probabilities stay
  // float32 rather than taking a round trip through fp16.
  const f32 = (x: string, type: ElemType) => (type === DataType.FLOAT ? x : g.op('Cast', [x], { to: int(DataType.FLOAT) }));
  // Queries (already scaled by 1/√HD in the query norm) as [B, KVH, GB, GM·S, HD] against
  // keys [B, KVH, 1, HD, Cap] broadcast over the GB products, GM = headsPerProduct: with one
  // row (M = 1) MLAS reads the cache as it lies, where two heads as two rows made it pack
  // (copy) the whole cache first.
  const GB = productsPerGroup(cfg);
  const qg = g.op('Reshape', [
    g.op('Transpose', [g.op('Reshape', [f32(q, qType), g.int64s([0, 0, KVH, G, HD])])], { perm: ints([0, 2, 3, 1, 4]) }),
    g.int64s([0, KVH, GB, -1, HD]),
  ]);
  const grouped = (x: string) => g.op('Unsqueeze', [x, g.int64s([2])]);
  // Keys arrive transposed ([B, KVH, HD, Cap] and [B, KVH, HD, S]): Q·Kᵀ reads the cache
  // as it lies. Transposing an fp16 cache every step cost more than all the layers' MLPs.
  // An int8 cache's per-token scales are applied to the small score and probability
  // tensors: keys' to the scores, values' folded into the weights.
  const perSlot = (x: string) => g.op('Unsqueeze', [x, g.int64s([2, 3])]); // [B, KVH, 1, 1, Cap]
  const rawPast = g.op('MatMul', [qg, grouped(f32(pastK, kv.past))]);
  const sPast = kv.scales ? g.op('Mul', [rawPast, perSlot(kv.scales.key)]) : rawPast;
  // The products with this step's own keys and values are 4-D, the group's queries as rows:
  // as 5-D broadcasts these tiny products took ONNX Runtime several times as long, at every
  // step and layer (docs/performance.md, "Where a decode step's time goes").
  const q4 = g.op('Reshape', [qg, g.int64s([0, KVH, -1, HD])]); // [B, KVH, G·S, HD]
  const sNew = g.op('Reshape', [g.op('MatMul', [q4, f32(kNewT, kv.fresh)]), shared.newScores5]);
  const scores = g.op('Concat', [g.op('Add', [sPast, shared.pastMask]), g.op('Add', [sNew, shared.newMask])], { axis: int(-1) });
  const probs = g.op('Softmax', [scores], { axis: int(-1) });
  const pPast = g.op('Slice', [probs, g.int64s([0]), shared.capacity1, g.int64s([4])]);
  const pNew = g.op('Slice', [probs, shared.capacity1, g.int64s([2 ** 50]), g.int64s([4])]);
  const ctxPast = g.op('MatMul', [kv.scales ? g.op('Mul', [pPast, perSlot(kv.scales.value)]) : pPast, grouped(f32(pastV, kv.past))]);
  const ctxNew = g.op('MatMul', [g.op('Reshape', [pNew, shared.newProbs4]), f32(vNew, kv.fresh)]); // [B, KVH, G·S, HD]
  const ctx = g.op('Add', [ctxPast, g.op('Reshape', [ctxNew, g.int64s([0, KVH, GB, -1, HD])])]); // [B, KVH, GB, GM·S, HD]
  return g.op('Reshape', [
    g.op('Transpose', [g.op('Reshape', [ctx, g.int64s([0, KVH, G, -1, HD])])], { perm: ints([0, 3, 1, 2, 4]) }),
    g.int64s([0, 0, NH * HD]),
  ]);
}

export function buildFastGraph(
  g: GraphBuilder,
  w: WeightEmitter,
  cfg: Qwen3Config,
  kvType: ElemType = w.act,
  attention: AttentionKind = 'gqa',
  output: GraphOutput = 'logits',
): GraphIo {
  const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD, vocabSize: V } = cfg;
  const T = kvType;
  // An int8 cache (in-place attention only) is stored quantized and attended in float32.
  const quantKv = kvType === DataType.INT8;
  if (quantKv && (attention !== 'matmul' || w.act !== DataType.FLOAT))
    throw new Error('an int8 KV cache needs in-place attention and float32 activations');
  // The type this step's keys and values take before they leave the graph (an int8 cache
  // quantizes float32 ones). GQA attends in it: an fp16 cache halves the bytes GQA copies
  // per step, and casting one step's Q/K/V costs little next to that.
  const attnType = quantKv ? w.act : kvType;
  const toKv = (x: string) => (attnType === w.act ? x : g.op('Cast', [x], { to: int(attnType) }));
  const fromKv = (x: string) => (attnType === w.act ? x : g.op('Cast', [x], { to: int(w.act) }));
  const ids = g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  const pos = g.input('position_ids', DataType.INT64, ['batch', 'seq']);
  const seqlensK = g.input('seqlens_k', DataType.INT32, ['batch']);
  const totalLen = g.input('total_sequence_length', DataType.INT32, []);
  const inputs = [ids, pos, seqlensK, totalLen];
  const outputs = [output === 'hidden' ? 'hidden_states' : 'logits'];

  const rope = ropeTables(cfg);
  const cos = w.floatTensor('rope.cos', [cfg.maxPositionEmbeddings, HD / 2], rope.cos);
  const sin = w.floatTensor('rope.sin', [cfg.maxPositionEmbeddings, HD / 2], rope.sin);
  const eps = float(cfg.rmsNormEps);
  const norm = (x: string, weight: string) => g.op('SimplifiedLayerNormalization', [x, weight], { epsilon: eps, axis: int(-1), stash_type: int(1) });
  const headsShape = (n: number) => g.int64s([0, 0, n, HD]);
  const flatShape = g.int64s([0, 0, -1]);

  // In-place attention masks, shared by all layers (float32, added to the scores):
  // cached slot j of row b is visible when j < past_len[b] = seqlens_k[b] + 1 − S; new
  // token j is visible to new token s when j ≤ s.
  let shared = { pastMask: '', newMask: '', capacity1: '', newScores5: '', newProbs4: '' };
  const seqLen = g.op('Gather', [g.op('Shape', [ids]), g.int64Scalar(1)], { axis: int(0) });
  if (attention === 'matmul') {
    const NEG = g.constant('neg_inf', DataType.FLOAT, [], Float32Array.of(-1e30));
    const ZERO = g.constant('zero', DataType.FLOAT, [], Float32Array.of(0));
    const pastLen = g.op('Sub', [g.op('Add', [g.op('Cast', [seqlensK], { to: int(DataType.INT64) }), g.int64Scalar(1)]), seqLen]);
    // Capacity comes from the first layer's past values (all layers share it).
    const capacity = g.op('Gather', [g.op('Shape', [ioName(FAST_IO_NAMES.pastValue, 0)]), g.int64Scalar(2)], { axis: int(0) });
    const slots = g.op('Range', [g.int64Scalar(0), capacity, g.int64Scalar(1)]);
    const pastOk = g.op('Less', [g.op('Unsqueeze', [slots, g.int64s([0])]), g.op('Unsqueeze', [pastLen, g.int64s([1])])]); // [B, Cap]
    const pastMask = g.op('Unsqueeze', [g.op('Where', [pastOk, ZERO, NEG]), g.int64s([1, 2, 3])]); // [B, 1, 1, 1, Cap]
    // Each of the GM·S rows of a product is query token s = row mod S.
    const GM = headsPerProduct(cfg);
    const rows = g.op('Mod', [g.op('Range', [g.int64Scalar(0), g.op('Mul', [seqLen, g.int64Scalar(GM)]), g.int64Scalar(1)]), seqLen]);
    const keys = g.op('Range', [g.int64Scalar(0), seqLen, g.int64Scalar(1)]);
    const newOk = g.op('LessOrEqual', [g.op('Unsqueeze', [keys, g.int64s([0])]), g.op('Unsqueeze', [rows, g.int64s([1])])]); // [GM·S, S]
    const newMask = g.op('Where', [newOk, ZERO, NEG]);
    // Shapes of the scores against this step's own keys, [B, KVH, GB, GM·S, S] and [B, KVH, G·S, S].
    const seqLen1 = g.op('Reshape', [seqLen, g.int64s([1])]);
    const newScores5 = g.op('Concat', [g.int64s([0, KVH, productsPerGroup(cfg), -1]), seqLen1], { axis: int(0) });
    const newProbs4 = g.op('Concat', [g.int64s([0, KVH, -1]), seqLen1], { axis: int(0) });
    shared = { pastMask, newMask, capacity1: g.op('Reshape', [capacity, g.int64s([1])]), newScores5, newProbs4 };
  }

  /** Attention of layer l over its normed input, with the caller's cache buffer as past. */
  const selfAttention = (h: string, l: number, prefix: string): string => {
    // In-place attention keeps keys transposed (keyLayout 'bhdt'), GQA wants 'bhtd'.
    const keyDims = attention === 'matmul' ? ['batch', KVH, HD, 'capacity'] : ['batch', KVH, 'capacity', HD];
    const pastK = g.input(ioName(FAST_IO_NAMES.pastKey, l), T, keyDims);
    const pastV = g.input(ioName(FAST_IO_NAMES.pastValue, l), T, ['batch', KVH, 'capacity', HD]);
    inputs.push(pastK, pastV);
    let pastScales: { key: string; value: string } | undefined;
    if (quantKv) {
      pastScales = {
        key: g.input(ioName(FAST_IO_NAMES.pastKeyScale, l), DataType.FLOAT, ['batch', KVH, 'capacity']),
        value: g.input(ioName(FAST_IO_NAMES.pastValueScale, l), DataType.FLOAT, ['batch', KVH, 'capacity']),
      };
      inputs.push(pastScales.key, pastScales.value);
    }

    // In-place attention takes 1/√HD in the query norm's weight: a scale on the product
    // itself would be fused into it (alpha ≠ 1), and MLAS reads the cache unpacked only at alpha 1.
    let { q, k, v, qNormW, kNormW } = qkvProjections(g, w, cfg, h, prefix, attention === 'matmul' ? 1 / Math.sqrt(HD) : 1);
    // q_norm / k_norm are RMSNorms over each head: separate nodes because GQA on CPU
    // rejects its fused q/k-norm inputs (measured when the exporter was written).
    q = g.op('Reshape', [norm(g.op('Reshape', [q, headsShape(NH)]), qNormW), flatShape]);
    k = g.op('Reshape', [norm(g.op('Reshape', [k, headsShape(KVH)]), kNormW), flatShape]);
    q = g.op('RotaryEmbedding', [q, pos, cos, sin], { interleaved: int(0), num_heads: int(NH) }, 'com.microsoft');
    // GQA takes queries in the cache's type; in-place attention widens them itself.
    if (attention === 'gqa') q = toKv(q);
    k = toKv(g.op('RotaryEmbedding', [k, pos, cos, sin], { interleaved: int(0), num_heads: int(KVH) }, 'com.microsoft'));
    v = toKv(v);

    const perm = ints([0, 2, 1, 3]);
    const keyPerm = attention === 'matmul' ? ints([0, 2, 3, 1]) : perm;
    const newK = ioName(FAST_IO_NAMES.newKey, l);
    const newV = ioName(FAST_IO_NAMES.newValue, l);
    let kHeads: string;
    let vHeads: string;
    if (quantKv) {
      // The step's own keys/values are attended as they will be read back from the cache
      // (dequantized), so a token sees the same numbers in its own step and later ones.
      const kq = quantizePerToken(g, g.op('Reshape', [k, headsShape(KVH)]));
      const vq = quantizePerToken(g, g.op('Reshape', [v, headsShape(KVH)]));
      g.node('Transpose', [kq.values], { outputs: [newK], attrs: { perm: keyPerm } });
      g.node('Transpose', [vq.values], { outputs: [newV], attrs: { perm } });
      const scaleOut = (sc: string, name: string) =>
        g.node('Reshape', [g.op('Transpose', [sc], { perm }), g.int64s([0, 0, -1])], { outputs: [name] });
      scaleOut(kq.scales, ioName(FAST_IO_NAMES.newKeyScale, l));
      scaleOut(vq.scales, ioName(FAST_IO_NAMES.newValueScale, l));
      g.output(ioName(FAST_IO_NAMES.newKeyScale, l), DataType.FLOAT, ['batch', KVH, 'seq']);
      g.output(ioName(FAST_IO_NAMES.newValueScale, l), DataType.FLOAT, ['batch', KVH, 'seq']);
      outputs.push(ioName(FAST_IO_NAMES.newKeyScale, l), ioName(FAST_IO_NAMES.newValueScale, l));
      kHeads = g.op('Transpose', [kq.dequantized], { perm: keyPerm });
      vHeads = g.op('Transpose', [vq.dequantized], { perm });
    } else {
      kHeads = g.node('Transpose', [g.op('Reshape', [k, headsShape(KVH)])], { outputs: [newK], attrs: { perm: keyPerm } })[0];
      vHeads = g.node('Transpose', [g.op('Reshape', [v, headsShape(KVH)])], { outputs: [newV], attrs: { perm } })[0];
    }
    let attn: string;
    if (attention === 'matmul') {
      const kv = { past: T, fresh: attnType, scales: pastScales };
      const ctx = inPlaceAttention(g, cfg, q, w.act, kHeads, vHeads, pastK, pastV, kv, shared);
      attn = w.act === DataType.FLOAT ? ctx : g.op('Cast', [ctx], { to: int(w.act) });
    } else {
      // GQA's present outputs must be named even though nobody fetches them: left empty,
      // GQA silently ignores the past.
      const attnKv = g.node('GroupQueryAttention', [q, k, v, pastK, pastV, seqlensK, totalLen], {
        domain: 'com.microsoft',
        outputs: [`attn.${l}`, `present_key.${l}`, `present_value.${l}`],
        attrs: { num_heads: int(NH), kv_num_heads: int(KVH), do_rotary: int(0), scale: float(1 / Math.sqrt(HD)) },
      })[0];
      attn = fromKv(attnKv);
    }
    g.output(ioName(FAST_IO_NAMES.newKey, l), T, attention === 'matmul' ? ['batch', KVH, HD, 'seq'] : ['batch', KVH, 'seq', HD]);
    g.output(ioName(FAST_IO_NAMES.newValue, l), T, ['batch', KVH, 'seq', HD]);
    outputs.push(ioName(FAST_IO_NAMES.newKey, l), ioName(FAST_IO_NAMES.newValue, l));
    return attn;
  };
  let { x, lmHead } = embeddingAndHead(g, w, cfg, ids);
  for (let l = 0; l < cfg.numLayers; l++) x = decoderLayer(g, w, cfg, x, l, { norm, attention: selfAttention });
  // Logits leave the graph from position `logits_start` of each row on: −1 (every step
  // but one) gives only the last position's, since a long prefill would otherwise compute
  // and copy seq × vocab floats; 0 gives every position's, for prompt log-probabilities
  // (echo with logprobs). Rows come out flattened: [batch × positions, vocab].
  const logitsStart = g.input('logits_start', DataType.INT64, [1]);
  inputs.push(logitsStart);
  const kept = g.op('Slice', [x, logitsStart, g.int64s([INT64_MAX]), g.int64s([1])]);
  const h = norm(g.op('Reshape', [kept, g.int64s([-1, H])]), w.vector('model.norm.weight', H));
  if (output === 'hidden') {
    g.node('Identity', [castToFloat(g, w, h)], { outputs: ['hidden_states'] });
    g.output('hidden_states', DataType.FLOAT, ['logit_rows', H]);
  } else {
    g.node('Identity', [castToFloat(g, w, lmHead(h))], { outputs: ['logits'] });
    g.output('logits', DataType.FLOAT, ['logit_rows', V]);
  }
  const { pastKeyScale, pastValueScale, newKeyScale, newValueScale, ...kvNames } = FAST_IO_NAMES;
  return { inputs, outputs, ...kvNames, ...(quantKv ? { pastKeyScale, pastValueScale, newKeyScale, newValueScale } : {}) };
}

/**
 * The standard layout (optimum / onnx-community contract) in plain ONNX ops:
 * attention_mask + past_key_values.N.key/value in, logits for every position and
 * present.N.key/value out. transformers.js and other ONNX tools run it as is.
 */
export function buildStandardGraph(g: GraphBuilder, w: WeightEmitter, cfg: Qwen3Config, output: GraphOutput = 'logits'): GraphIo {
  const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD, vocabSize: V } = cfg;
  const T = w.act;
  const groups = NH / KVH;
  const ids = g.input('input_ids', DataType.INT64, ['batch_size', 'sequence_length']);
  const mask = g.input('attention_mask', DataType.INT64, ['batch_size', 'total_sequence_length']);
  const pos = g.input('position_ids', DataType.INT64, ['batch_size', 'sequence_length']);
  const inputs = [ids, mask, pos];
  const outputs = [output === 'hidden' ? 'hidden_states' : 'logits'];
  const eps = cfg.rmsNormEps;

  // RMSNorm in float32 whatever the graph dtype, like the reference implementation.
  const epsConst = g.constant('eps', DataType.FLOAT, [], Float32Array.of(eps));
  const rmsNorm = (x: string, weight: string): string => {
    const xf = castToFloat(g, w, x);
    const ms = g.op('ReduceMean', [g.op('Mul', [xf, xf])], { axes: ints([-1]), keepdims: int(1) });
    const normed = g.op('Div', [xf, g.op('Sqrt', [g.op('Add', [ms, epsConst])])]);
    const back = T === DataType.FLOAT ? normed : g.op('Cast', [normed], { to: int(T) });
    return g.op('Mul', [back, weight]);
  };

  // cos/sin for this step's positions: [B, 1, S, HD] (halves duplicated for rotate-half).
  const rope = ropeTables(cfg);
  const cosTable = w.floatTensor('rope.cos', [cfg.maxPositionEmbeddings, HD / 2], rope.cos);
  const sinTable = w.floatTensor('rope.sin', [cfg.maxPositionEmbeddings, HD / 2], rope.sin);
  const ropeFor = (table: string) => {
    const half = g.op('Gather', [table, pos], { axis: int(0) });
    return g.op('Unsqueeze', [g.op('Concat', [half, half], { axis: int(-1) }), g.int64s([1])]);
  };
  const cos = ropeFor(cosTable);
  const sin = ropeFor(sinTable);
  const halfSplit = g.int64s([HD / 2, HD / 2]);
  const applyRope = (x: string): string => {
    const [x1, x2] = g.node('Split', [x, halfSplit], { outputs: 2, attrs: { axis: int(-1) } });
    const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: int(-1) });
    return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rotated, sin])]);
  };

  // Additive mask [B, 1, 1, S, T]: key j is visible to query i when j ≤ past + i and the
  // attention_mask allows it. Built once, in float32.
  const shapeIds = g.op('Shape', [ids]);
  const shapeMask = g.op('Shape', [mask]);
  const seqLen = g.op('Gather', [shapeIds, g.int64Scalar(1)], { axis: int(0) });
  const totLen = g.op('Gather', [shapeMask, g.int64Scalar(1)], { axis: int(0) });
  const pastLen = g.op('Sub', [totLen, seqLen]);
  const one = g.int64Scalar(1);
  const qPos = g.op('Range', [pastLen, totLen, one]);
  const kPos = g.op('Range', [g.int64Scalar(0), totLen, one]);
  const causal = g.op('LessOrEqual', [g.op('Unsqueeze', [kPos, g.int64s([0])]), g.op('Unsqueeze', [qPos, g.int64s([1])])]);
  const padOk = g.op('Unsqueeze', [g.op('Cast', [mask], { to: int(DataType.BOOL) }), g.int64s([1, 2, 3])]);
  const allowed = g.op('And', [causal, padOk]);
  const maskAdd = g.op('Where', [
    allowed,
    g.constant('zero', DataType.FLOAT, [], Float32Array.of(0)),
    g.constant('neg', DataType.FLOAT, [], Float32Array.of(-3.0e38)),
  ]);
  const scale = g.constant('scale', DataType.FLOAT, [], Float32Array.of(1 / Math.sqrt(HD)));

  let { x, lmHead } = embeddingAndHead(g, w, cfg, ids);
  const toHeads = (t: string, n: number) => g.op('Transpose', [g.op('Reshape', [t, g.int64s([0, 0, n, HD])])], { perm: ints([0, 2, 1, 3]) });
  /** Attention of layer l over its normed input: past and present as separate tensors. */
  const attention = (h: string, l: number, prefix: string): string => {
    const pastK = g.input(ioName(STANDARD_IO_NAMES.pastKey, l), T, ['batch_size', KVH, 'past_sequence_length', HD]);
    const pastV = g.input(ioName(STANDARD_IO_NAMES.pastValue, l), T, ['batch_size', KVH, 'past_sequence_length', HD]);
    inputs.push(pastK, pastV);

    const { q, k, v, qNormW, kNormW } = qkvProjections(g, w, cfg, h, prefix);
    const qh = applyRope(rmsNorm(toHeads(q, NH), qNormW)); // [B, NH, S, HD]
    const kh = applyRope(rmsNorm(toHeads(k, KVH), kNormW)); // [B, KVH, S, HD]
    const vh = toHeads(v, KVH);
    const presentK = g.node('Concat', [pastK, kh], { outputs: [ioName(STANDARD_IO_NAMES.newKey, l)], attrs: { axis: int(2) } })[0];
    const presentV = g.node('Concat', [pastV, vh], { outputs: [ioName(STANDARD_IO_NAMES.newValue, l)], attrs: { axis: int(2) } })[0];
    g.output(presentK, T, ['batch_size', KVH, 'total_sequence_length', HD]);
    g.output(presentV, T, ['batch_size', KVH, 'total_sequence_length', HD]);
    outputs.push(presentK, presentV);

    // Grouped heads without copying the KV: queries [B, KVH, G, S, HD] against keys
    // [B, KVH, 1, T, HD] broadcast over G. Scores and softmax in float32.
    const q5 = g.op('Reshape', [castToFloat(g, w, qh), g.int64s([0, KVH, groups, -1, HD])]);
    const k5 = g.op('Unsqueeze', [castToFloat(g, w, presentK), g.int64s([2])]);
    const v5 = g.op('Unsqueeze', [castToFloat(g, w, presentV), g.int64s([2])]);
    const scores = g.op('Add', [g.op('Mul', [g.op('MatMul', [q5, g.op('Transpose', [k5], { perm: ints([0, 1, 2, 4, 3]) })]), scale]), maskAdd]);
    const ctx = g.op('MatMul', [g.op('Softmax', [scores], { axis: int(-1) }), v5]); // [B, KVH, G, S, HD]
    const ctxT = T === DataType.FLOAT ? ctx : g.op('Cast', [ctx], { to: int(T) });
    return g.op('Reshape', [
      g.op('Transpose', [g.op('Reshape', [ctxT, g.int64s([0, NH, -1, HD])])], { perm: ints([0, 2, 1, 3]) }),
      g.int64s([0, 0, NH * HD]),
    ]);
  };
  for (let l = 0; l < cfg.numLayers; l++) x = decoderLayer(g, w, cfg, x, l, { norm: rmsNorm, attention });
  const h = rmsNorm(x, w.vector('model.norm.weight', H));
  const h2d = g.op('Reshape', [h, g.int64s([-1, H])]);
  const name = outputs[0];
  const width = output === 'hidden' ? H : V;
  const out2d = castToFloat(g, w, output === 'hidden' ? h2d : lmHead(h2d));
  const outShape = g.op('Concat', [shapeIds, g.int64s([width])], { axis: int(0) });
  g.node('Reshape', [out2d, outShape], { outputs: [name] });
  g.output(name, DataType.FLOAT, ['batch_size', 'sequence_length', width]);
  return { inputs, outputs, ...STANDARD_IO_NAMES };
}
