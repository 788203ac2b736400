#!/usr/bin/env node
/**
 * Writes a Qwen3 checkpoint with deterministic random weights and the real tokenizer:
 *   npm run make-test-model -- --out <dir> [--shape tiny|0.6b] [--dtype bf16|f16|f32] [--shards N] [--seed N]
 */
import { parseArgs } from 'node:util';
import { QWEN3_0_6B_SHAPE, writeRandomCheckpoint } from '../src/model/random_checkpoint.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    shape: { type: 'string', default: 'tiny' },
    dtype: { type: 'string', default: 'bf16' },
    shards: { type: 'string', default: '1' },
    seed: { type: 'string', default: '1234' },
  },
});
if (!values.out || !['tiny', '0.6b'].includes(values.shape ?? '') || !['bf16', 'f16', 'f32'].includes(values.dtype ?? '')) {
  process.stderr.write('usage: make_test_model --out <dir> [--shape tiny|0.6b] [--dtype bf16|f16|f32] [--shards N] [--seed N]\n');
  process.exit(2);
}
const started = Date.now();
writeRandomCheckpoint(values.out, {
  ...(values.shape === '0.6b' ? QWEN3_0_6B_SHAPE : {}),
  dtype: values.dtype as 'bf16',
  shards: Number(values.shards),
  seed: Number(values.seed),
});
process.stderr.write(`wrote a random ${values.shape} Qwen3 checkpoint to ${values.out} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
