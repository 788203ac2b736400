import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadQwen3Config, parseQwen3Config } from '../model/config.js';
import { writeRandomCheckpoint } from '../model/random_checkpoint.js';
import { estimateWeightBytes } from './export_size.js';
import { exportModel } from './exporter.js';

test('the estimate is within 2% of what small dense and MoE exports write, in every dtype', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qwen3-serve-size-'));
  try {
    const shapes = {
      dense: { hiddenSize: 64, intermediateSize: 128, numLayers: 2, tieWordEmbeddings: true, vocabSize: 4096, maxPositionEmbeddings: 2048 },
      moe: {
        hiddenSize: 64,
        intermediateSize: 96,
        numLayers: 3,
        tieWordEmbeddings: false,
        vocabSize: 4096,
        maxPositionEmbeddings: 2048,
        moe: { numExperts: 8, topK: 2, expertIntermediateSize: 32, normTopkProb: true, mlpOnlyLayers: [1] },
      },
    };
    for (const [name, shape] of Object.entries(shapes)) {
      const src = join(dir, name);
      writeRandomCheckpoint(src, shape);
      const cfg = loadQwen3Config(src);
      for (const [dtype, device] of [
        ['fp32', 'cpu'],
        ['fp16', 'cpu'],
        ['int4', 'cpu'],
        ['int4', 'cuda'],
      ] as const) {
        const out = join(dir, `${name}-${dtype}-${device}`);
        const m = await exportModel({ modelDir: src, outDir: out, dtype, device });
        const actual = statSync(join(out, m.externalData)).size;
        const estimate = estimateWeightBytes(cfg, dtype, dtype === 'fp16' || device === 'cuda', 32);
        assert.ok(Math.abs(estimate - actual) / actual < 0.02, `${name} ${dtype} ${device}: estimate ${estimate}, written ${actual}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Qwen3-30B-A3B's weights: about 19.6 GB as int4 for the CPU, 61 GB as fp16", () => {
  const cfg = parseQwen3Config({
    model_type: 'qwen3_moe',
    vocab_size: 151936,
    hidden_size: 2048,
    intermediate_size: 6144,
    num_hidden_layers: 48,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    head_dim: 128,
    max_position_embeddings: 40960,
    tie_word_embeddings: false,
    num_experts: 128,
    num_experts_per_tok: 8,
    moe_intermediate_size: 768,
    norm_topk_prob: true,
  });
  assert.equal(Math.round(estimateWeightBytes(cfg, 'int4', false, 32) / 1e8) / 10, 19.6);
  assert.equal(Math.round(estimateWeightBytes(cfg, 'int4', true, 32) / 1e8) / 10, 17.7);
  assert.equal(Math.round(estimateWeightBytes(cfg, 'fp16', true, 32) / 1e9), 61);
});
