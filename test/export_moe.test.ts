import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportModel } from '../src/export/exporter.js';
import type { Layout } from '../src/export/graph_io.js';
import type { ExportDtype } from '../src/export/weights.js';
import { type RandomCheckpointOptions, writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { argmax, logSoftmax, ReferenceQwen3 } from './support/reference_qwen3.js';
import { openRunner, tempDir } from './support/runner.js';

// Qwen3-MoE exports against the float64 reference (test/support/reference_qwen3.ts), on
// small random checkpoints of several shapes the test writes.

const work = tempDir('qwen3-serve-moe-');

/** Router weights wider than the rest, so tokens spread over the experts rather than tie. */
const routerOverride = (seed: number) => (name: string, shape: number[]) => {
  if (!name.endsWith('.mlp.gate.weight')) return null;
  let s = seed;
  return Float32Array.from({ length: shape[0] * shape[1] }, () => {
    s = (s * 16807) % 2147483647;
    return (s / 2147483647 - 0.5) * 1.2;
  });
};

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
    dtype: 'f32',
    tieWordEmbeddings: false,
    moe: { numExperts: 16, topK: 3, expertIntermediateSize: 24, normTopkProb: false, decoderSparseStep: 2 },
    override: routerOverride(6),
  },
};

const checkpoints = new Map<string, string>();
function checkpoint(shape: string): string {
  if (!checkpoints.has(shape)) {
    const dir = join(work, `ckpt-${shape}`);
    writeRandomCheckpoint(dir, MOE_SHAPES[shape]);
    checkpoints.set(shape, dir);
  }
  return checkpoints.get(shape)!;
}

const exported = new Map<string, Promise<string>>();
function exportOf(shape: string, layout: Layout, dtype: ExportDtype): Promise<string> {
  const key = `${shape}-${layout}-${dtype}`;
  if (!exported.has(key)) {
    const out = join(work, key);
    exported.set(
      key,
      exportModel({ modelDir: checkpoint(shape), outDir: out, layout, dtype }).then(() => out),
    );
  }
  return exported.get(key)!;
}

const PROMPTS = [
  [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198],
  [785, 6722, 315, 9625, 374],
  [40, 1079, 264, 2588, 11, 323, 358, 1079, 2087, 311, 3291],
];
const STEPS = 4;

/** Each prompt prefilled, then STEPS − 1 greedy decode steps: logits per step. */
async function generate(dir: string): Promise<{ logits: Float32Array[][]; tokens: number[][] }> {
  const runner = await openRunner(dir);
  const logits: Float32Array[][] = [];
  const tokens: number[][] = [];
  for (const [id, prompt] of PROMPTS.entries()) {
    runner.addSequence(id);
    const steps = [(await runner.prefill(id, prompt)).slice()];
    const seq = [...prompt];
    for (let k = 1; k < STEPS; k++) {
      seq.push(argmax(steps[k - 1]));
      steps.push((await runner.decode([id], [seq[seq.length - 1]])).slice());
    }
    runner.removeSequence(id);
    logits.push(steps);
    tokens.push(seq);
  }
  return { logits, tokens };
}

/** Largest |log p − reference| over the reference's 20 most likely ids, every step of every prompt. */
function maxLogprobError(ref: ReferenceQwen3, run: { logits: Float32Array[][]; tokens: number[][] }): number {
  let worst = 0;
  run.logits.forEach((steps, i) =>
    steps.forEach((l, k) => {
      const want = logSoftmax(ref.lastLogits(run.tokens[i].slice(0, PROMPTS[i].length + k)));
      const got = logSoftmax(l);
      const top = [...want.keys()].sort((a, b) => want[b] - want[a]).slice(0, 20);
      for (const id of top) worst = Math.max(worst, Math.abs(got[id] - want[id]));
    }),
  );
  return worst;
}

for (const shape of Object.keys(MOE_SHAPES)) {
  for (const layout of ['fast', 'standard'] as const) {
    test(`${shape}, fp32 ${layout}: log-probabilities within 1e-3 of the reference, greedy ids equal`, async (t) => {
      const ref = new ReferenceQwen3(checkpoint(shape));
      const run = await generate(await exportOf(shape, layout, 'fp32'));
      const err = maxLogprobError(ref, run);
      t.diagnostic(`max |logprob error| ${err.toExponential(2)}`);
      assert.ok(err < 1e-3, `max error ${err}`);
    });
  }
}
