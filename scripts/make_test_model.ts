#!/usr/bin/env node
/**
 * Writes a Qwen3 checkpoint with deterministic random weights and the real tokenizer:
 *   npm run make-test-model -- --out <dir> [--shape tiny|0.6b|30b-a3b] [--layers N] [--dtype bf16|f16|f32] [--shards N] [--seed N]
 * (30b-a3b: Qwen3-30B-A3B's layer shape, 128 experts top 8; --layers keeps it to a few layers.)
 */
import { parseArgs } from 'node:util';
import { QWEN3_0_6B_SHAPE, QWEN3_30B_A3B_SHAPE, type RandomCheckpointOptions, writeRandomCheckpoint } from '../src/model/random_checkpoint.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    shape: { type: 'string', default: 'tiny' },
    dtype: { type: 'string', default: 'bf16' },
    shards: { type: 'string', default: '1' },
    seed: { type: 'string', default: '1234' },
    layers: { type: 'string' },
  },
});
const SHAPES: Record<string, RandomCheckpointOptions> = { tiny: {}, '0.6b': QWEN3_0_6B_SHAPE, '30b-a3b': QWEN3_30B_A3B_SHAPE };
const layers = values.layers === undefined ? undefined : Number(values.layers);
const badLayers = layers !== undefined && !(Number.isInteger(layers) && layers > 0);
if (!values.out || !Object.hasOwn(SHAPES, values.shape ?? '') || badLayers || !['bf16', 'f16', 'f32'].includes(values.dtype ?? '')) {
  process.stderr.write(
    'usage: make_test_model --out <dir> [--shape tiny|0.6b|30b-a3b] [--layers N] [--dtype bf16|f16|f32] [--shards N] [--seed N]\n',
  );
  process.exit(2);
}
const started = Date.now();
writeRandomCheckpoint(values.out, {
  ...SHAPES[values.shape ?? 'tiny'],
  ...(layers === undefined ? {} : { numLayers: layers }),
  dtype: values.dtype as 'bf16',
  shards: Number(values.shards),
  seed: Number(values.seed),
});
process.stderr.write(`wrote a random ${values.shape} Qwen3 checkpoint to ${values.out} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
