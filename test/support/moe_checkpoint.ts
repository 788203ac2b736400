import { join } from 'node:path';
import { exportModel } from '../../src/export/exporter.js';
import { type RandomCheckpointOptions, writeRandomCheckpoint } from '../../src/model/random_checkpoint.js';
import { tempDir } from './runner.js';

const work = tempDir('qwen3-serve-moe-ckpt-');

/** Router weights wider than the rest, so tokens spread over the experts rather than tie. */
const routerOverride = (seed: number) => (name: string, shape: number[]) => {
  if (!name.endsWith('.mlp.gate.weight')) return null;
  let s = seed;
  return Float32Array.from({ length: shape[0] * shape[1] }, () => {
    s = (s * 16807) % 2147483647;
    return (s / 2147483647 - 0.5) * 1.2;
  });
};

/** Small random Qwen3-MoE checkpoints: the shapes the MoE tests share. */
export const MOE_SHAPES: Record<string, RandomCheckpointOptions> = {
  // A dense layer between sparse ones, renormalised top-k, tied embeddings, bf16 in three shards.
  'renorm-dense-middle': {
    hiddenSize: 64,
    intermediateSize: 96,
    numLayers: 3,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    seed: 11,
    std: 0.05,
    shards: 3,
    dtype: 'bf16',
    moe: { numExperts: 8, topK: 2, expertIntermediateSize: 32, normTopkProb: true, mlpOnlyLayers: [1] },
    override: routerOverride(5),
  },
  // Raw softmax weights, every second layer sparse, untied head, float32 source.
  'softmax-step2-untied': {
    hiddenSize: 64,
    intermediateSize: 80,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 1,
    headDim: 16,
    seed: 12,
    std: 0.05,
    dtype: 'f32',
    tieWordEmbeddings: false,
    moe: { numExperts: 16, topK: 3, expertIntermediateSize: 24, normTopkProb: false, decoderSparseStep: 2 },
    override: routerOverride(6),
  },
};

const checkpoints = new Map<string, string>();
/** The checkpoint of a shape, written once per process. */
export function moeCheckpoint(shape: string): string {
  if (!checkpoints.has(shape)) {
    const dir = join(work, `ckpt-${shape}`);
    writeRandomCheckpoint(dir, MOE_SHAPES[shape]);
    checkpoints.set(shape, dir);
  }
  return checkpoints.get(shape)!;
}

const exports = new Map<string, Promise<string>>();
/** A shape's fast-layout CPU export in a dtype, made once per process. */
export function moeExport(shape: string, dtype: 'fp32' | 'int4' = 'fp32'): Promise<string> {
  const key = `${shape}-${dtype}`;
  if (!exports.has(key)) {
    const out = join(work, `export-${key}`);
    exports.set(
      key,
      exportModel({ modelDir: moeCheckpoint(shape), outDir: out, dtype }).then(() => out),
    );
  }
  return exports.get(key)!;
}
