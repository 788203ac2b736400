import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ModelFormatError } from '../errors.js';
import { ropeInverseFrequencies } from '../export/rope.js';
import { parseQwen3Config } from './config.js';

// Qwen3-0.6B's config.json, abridged to what the parser reads.
const qwen3 = {
  model_type: 'qwen3',
  vocab_size: 151936,
  hidden_size: 1024,
  intermediate_size: 3072,
  num_hidden_layers: 28,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  head_dim: 128,
  rope_theta: 1000000,
  max_position_embeddings: 40960,
  rope_scaling: null,
};

test('rope_scaling: none, default, and the YaRN block Qwen3 documents for 131,072 tokens', () => {
  assert.equal(parseQwen3Config(qwen3).ropeScaling, null);
  assert.equal(parseQwen3Config(qwen3).maxPositionEmbeddings, 40960);
  assert.equal(parseQwen3Config({ ...qwen3, rope_scaling: { rope_type: 'default' } }).ropeScaling, null);
  const yarn = parseQwen3Config({ ...qwen3, rope_scaling: { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 32768 } });
  assert.deepEqual(yarn.ropeScaling, {
    type: 'yarn',
    factor: 4,
    originalMaxPositionEmbeddings: 32768,
    attentionFactor: 0.1 * Math.log(4) + 1,
    betaFast: 32,
    betaSlow: 1,
    truncate: true,
  });
  assert.equal(yarn.maxPositionEmbeddings, 131072, 'the context grows to original × factor, as vLLM derives it');
  // The older key, an explicit attention factor, and no original context (max_position_embeddings then).
  const legacy = parseQwen3Config({ ...qwen3, rope_scaling: { type: 'yarn', factor: 2, attention_factor: 1.5 } });
  assert.equal(legacy.ropeScaling?.type === 'yarn' && legacy.ropeScaling.attentionFactor, 1.5);
  assert.equal(legacy.ropeScaling?.type === 'yarn' && legacy.ropeScaling.originalMaxPositionEmbeddings, 40960);
  assert.equal(legacy.maxPositionEmbeddings, 81920);
  const linear = parseQwen3Config({ ...qwen3, rope_scaling: { type: 'linear', factor: 2 } });
  assert.deepEqual(linear.ropeScaling, { type: 'linear', factor: 2 });
  assert.equal(linear.maxPositionEmbeddings, 81920);
});

test('transformers v5 configs: rope_theta and the scaling under rope_parameters', () => {
  const { rope_theta: _theta, rope_scaling: _scaling, ...v5 } = qwen3;
  const plain = parseQwen3Config({ ...v5, rope_parameters: { rope_type: 'default', rope_theta: 10000 } });
  assert.equal(plain.ropeTheta, 10000);
  assert.equal(plain.ropeScaling, null);
  const yarn = parseQwen3Config({
    ...v5,
    rope_parameters: { rope_type: 'yarn', rope_theta: 1000000, factor: 4, original_max_position_embeddings: 32768 },
  });
  assert.equal(yarn.ropeScaling?.type, 'yarn');
  assert.equal(yarn.maxPositionEmbeddings, 131072);
});

test('rope_scaling that cannot be baked into an export is refused by name', () => {
  const cases: Array<[unknown, RegExp]> = [
    [{ rope_type: 'dynamic', factor: 2 }, /type "dynamic" is not supported.*changes with the sequence length/],
    [{ rope_type: 'longrope', factor: 2 }, /type "longrope" is not supported/],
    [{ rope_type: 'yarn' }, /needs a factor/],
    [{ rope_type: 'yarn', factor: -1 }, /rope_scaling\.factor/],
    ['yarn', /rope_scaling/],
  ];
  for (const [scaling, pattern] of cases) {
    assert.throws(
      () => parseQwen3Config({ ...qwen3, rope_scaling: scaling }),
      (err: unknown) => err instanceof ModelFormatError && pattern.test(err.message),
      JSON.stringify(scaling),
    );
  }
});

test("YaRN inverse frequencies equal transformers' formula (values computed separately, in Python)", () => {
  const cfg = parseQwen3Config({ ...qwen3, rope_scaling: { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 32768 } });
  const f = ropeInverseFrequencies(cfg);
  // Dimensions below the correction range (23) keep their frequency, above it (40) are divided by 4.
  const expected: Record<number, number> = {
    0: 1,
    10: 0.1154781984689458,
    16: 0.03162277660168379,
    20: 0.01333521432163324,
    30: 0.0010643609812470017,
    40: 4.445698525097307e-5,
    63: 3.102344401879299e-7,
  };
  for (const [i, v] of Object.entries(expected)) assert.ok(Math.abs(f[Number(i)] - v) <= v * 1e-12, `dim ${i}: ${f[Number(i)]} vs ${v}`);
  const small = ropeInverseFrequencies({
    headDim: 32,
    ropeTheta: 10000,
    ropeScaling: { type: 'yarn', factor: 8, originalMaxPositionEmbeddings: 64, attentionFactor: 1, betaFast: 32, betaSlow: 1, truncate: true },
  });
  const expectedSmall: Record<number, number> = { 0: 1, 3: 0.08446827197684882, 5: 0.007029266564879363, 8: 0.00125, 15: 2.2228492625486534e-5 };
  for (const [i, v] of Object.entries(expectedSmall))
    assert.ok(Math.abs(small[Number(i)] - v) <= v * 1e-12, `small dim ${i}: ${small[Number(i)]} vs ${v}`);
  const linear = ropeInverseFrequencies({ headDim: 128, ropeTheta: 1e6, ropeScaling: { type: 'linear', factor: 2 } });
  assert.ok(Math.abs(linear[10] - 0.1154781984689458 / 2) < 1e-15);
});

// Qwen3-30B-A3B's config.json, abridged to what the parser reads.
const qwen3Moe = {
  ...qwen3,
  model_type: 'qwen3_moe',
  hidden_size: 2048,
  intermediate_size: 6144,
  num_hidden_layers: 48,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  decoder_sparse_step: 1,
  mlp_only_layers: [],
  moe_intermediate_size: 768,
  norm_topk_prob: true,
  num_experts: 128,
  num_experts_per_tok: 8,
  output_router_logits: false,
  router_aux_loss_coef: 0.001,
  use_sliding_window: false,
  tie_word_embeddings: false,
};

test('qwen3_moe: the experts of Qwen3-30B-A3B, every layer sparse; dense Qwen3 has none', () => {
  assert.equal(parseQwen3Config(qwen3).moe, null);
  const c = parseQwen3Config(qwen3Moe);
  assert.deepEqual(
    { ...c.moe, sparseLayers: c.moe?.sparseLayers.length },
    {
      numExperts: 128,
      topK: 8,
      expertIntermediateSize: 768,
      normTopkProb: true,
      sparseLayers: 48,
    },
  );
});

test("qwen3_moe: decoder_sparse_step and mlp_only_layers choose the dense layers; norm_topk_prob defaults to transformers' false", () => {
  const c = parseQwen3Config({ ...qwen3Moe, num_hidden_layers: 8, decoder_sparse_step: 2, mlp_only_layers: [3, 4], norm_topk_prob: undefined });
  assert.deepEqual(c.moe?.sparseLayers, [1, 5, 7]);
  assert.equal(c.moe?.normTopkProb, false);
  const defaults = parseQwen3Config({ ...qwen3Moe, num_hidden_layers: 3, decoder_sparse_step: undefined, mlp_only_layers: undefined });
  assert.deepEqual(defaults.moe?.sparseLayers, [0, 1, 2]);
});

test('qwen3_moe: a missing or impossible expert key is named', () => {
  assert.throws(() => parseQwen3Config({ ...qwen3Moe, num_experts: undefined }), /field num_experts/);
  assert.throws(() => parseQwen3Config({ ...qwen3Moe, moe_intermediate_size: 0 }), /field moe_intermediate_size/);
  assert.throws(() => parseQwen3Config({ ...qwen3Moe, num_experts_per_tok: 129 }), /num_experts_per_tok \(129\) is more than num_experts \(128\)/);
  assert.throws(() => parseQwen3Config({ ...qwen3Moe, shared_expert_intermediate_size: 5632 }), /shared_expert_intermediate_size/);
  assert.throws(() => parseQwen3Config({ ...qwen3Moe, use_sliding_window: true }), /use_sliding_window/);
  assert.throws(
    () => parseQwen3Config({ ...qwen3Moe, layer_types: ['full_attention', 'sliding_attention'] }),
    /layer_types\[1\] is "sliding_attention"; only "full_attention"/,
  );
  assert.equal(parseQwen3Config({ ...qwen3Moe, layer_types: Array(48).fill('full_attention') }).moe?.topK, 8);
});
