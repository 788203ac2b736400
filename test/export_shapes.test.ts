import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportModel } from '../src/export/exporter.js';
import { type RandomCheckpointOptions, writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { argmax, ReferenceQwen3 } from './support/reference_qwen3.js';
import { openRunner, tempDir } from './support/runner.js';

const work = tempDir();
// The shapes under test are the layers'; a vocabulary of 4,096 (not 151,936) makes each checkpoint a twentieth of the work to write and export.
const vocabSize = 4096;
const prompt = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198].map((id) => id % vocabSize);

const small: RandomCheckpointOptions = {
  vocabSize,
  hiddenSize: 48,
  intermediateSize: 96,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  std: 0.1,
};

const shapes: Array<[string, RandomCheckpointOptions]> = [
  ['sharded bf16 source (3 shards + index)', { ...small, shards: 3, seed: 1 }],
  ['separate lm_head (untied)', { ...small, tieWordEmbeddings: false, seed: 2 }],
  ['kv_heads == heads', { ...small, numKvHeads: 4, seed: 3 }],
  ['f16 source', { ...small, dtype: 'f16', seed: 4 }],
  [
    'f32 source, heads × head_dim ≠ hidden, 3 layers',
    { ...small, dtype: 'f32', numHeads: 8, numKvHeads: 2, headDim: 8, hiddenSize: 40, numLayers: 3, seed: 5 },
  ],
  ['rope_theta 10000, head_dim 32', { ...small, headDim: 32, ropeTheta: 10000, seed: 6 }],
  ['attention_bias (q/k/v projection biases)', { ...small, attentionBias: true, std: 0.3, seed: 7 }],
  // Qwen3's documented long-context setting, scaled down: the rotary tables change and
  // cos/sin carry YaRN's attention factor. The reference reads config.json itself.
  [
    'YaRN rope_scaling (factor 4 over an original context of 64)',
    { ...small, ropeScaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 64 }, seed: 8 },
  ],
  ['linear rope_scaling (factor 2, the older "type" key)', { ...small, ropeScaling: { type: 'linear', factor: 2 }, seed: 9 }],
];

for (const [name, options] of shapes) {
  test(`export of ${name} matches a float64 reference (both layouts, prefill + decode)`, async () => {
    const src = join(work, name.replace(/\W+/g, '_'));
    writeRandomCheckpoint(src, options);
    const ref = new ReferenceQwen3(src);
    for (const layout of ['fast', 'standard'] as const) {
      const out = `${src}-${layout}`;
      await exportModel({ modelDir: src, outDir: out, layout, dtype: 'fp32' });
      const runner = await openRunner(out);
      runner.addSequence(0);
      // Prefill in two chunks, then two decode steps: every path through the KV cache.
      await runner.prefill(0, prompt.slice(0, 4));
      let logits = await runner.prefill(0, prompt.slice(4));
      const tokens = [...prompt];
      for (let step = 0; step < 3; step++) {
        const expected = ref.lastLogits(tokens);
        let diff = 0;
        for (let i = 0; i < expected.length; i++) diff = Math.max(diff, Math.abs(expected[i] - logits[i]));
        assert.ok(diff < 1e-3, `${layout} step ${step}: logits differ by ${diff}`);
        const next = argmax(expected);
        tokens.push(next);
        if (step < 2) logits = await runner.decode([0], [next]);
      }
    }
  });
}
