import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, ModelFormatError } from '../src/errors.js';
import { exportModel } from '../src/export/exporter.js';
import { writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { tempDir } from './support/runner.js';

const work = tempDir();
const good = join(work, 'good');
writeRandomCheckpoint(good, { hiddenSize: 32, intermediateSize: 64, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16, shards: 2 });

let n = 0;
function copyOfGood(): string {
  const dir = join(work, `case-${n++}`);
  cpSync(good, dir, { recursive: true });
  return dir;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const path = join(dir, 'config.json');
  const c = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}

/** Exports into a fresh folder, expects `errorType` matching `pattern`, and no output left behind. */
async function expectFailure(
  modelDir: string,
  pattern: RegExp,
  errorType: new (...args: never[]) => Error,
  extra: { dtype?: string; outDir?: string } = {},
) {
  const parent = join(work, `out-${n++}`);
  mkdirSync(parent);
  const outDir = extra.outDir ?? join(parent, 'export');
  await assert.rejects(exportModel({ modelDir, outDir, dtype: extra.dtype as 'fp32' | undefined }), (err: Error) => {
    assert.ok(err instanceof errorType, `${err.name}: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
  if (!extra.outDir) assert.deepEqual(readdirSync(parent), [], 'no output or partial directory is left behind');
}

test('the generated checkpoint itself exports (the error cases below differ by one thing)', async () => {
  const out = join(work, 'good-export');
  await exportModel({ modelDir: good, outDir: out });
  assert.ok(existsSync(join(out, 'model.onnx')) && existsSync(join(out, 'qwen3-serve.json')));
});

test('missing model_type is named', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => delete c.model_type);
  await expectFailure(dir, /no model_type/, ModelFormatError);
});

test('unknown model_type is named', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => (c.model_type = 'llama'));
  await expectFailure(dir, /model_type "llama".*only "qwen3" and "qwen3_moe"/, ModelFormatError);
});

test('a qwen3_moe config without its expert keys names the first missing one', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => (c.model_type = 'qwen3_moe'));
  await expectFailure(dir, /field num_experts: /, ModelFormatError);
});

test('qwen3_moe keys that would change the computation and are not supported are named', async () => {
  const moe = { model_type: 'qwen3_moe', num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 32 };
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ shared_expert_intermediate_size: 64 }, /shared_expert_intermediate_size 64 is not supported/],
    [{ use_sliding_window: true }, /use_sliding_window true is not supported/],
    [{ num_experts_per_tok: 5 }, /num_experts_per_tok \(5\) is more than num_experts \(4\)/],
    [{ mlp_only_layers: [3] }, /mlp_only_layers names layer 3, but the model has 1 layers/],
    [{ norm_topk_prob: 'yes' }, /field norm_topk_prob: /],
  ];
  for (const [edit, pattern] of cases) {
    const dir = copyOfGood();
    editConfig(dir, (c) => Object.assign(c, moe, edit));
    await expectFailure(dir, pattern, ModelFormatError);
  }
});

test('a qwen3_moe checkpoint missing an expert names the tensor', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => Object.assign(c, { model_type: 'qwen3_moe', num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 32 }));
  await expectFailure(dir, /missing tensor model\.layers\.0\.mlp\.gate\.weight/, ModelFormatError);
});

test('a missing tensor is named', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => (c.num_hidden_layers = 2));
  await expectFailure(dir, /missing tensor model\.layers\.1\./, ModelFormatError);
});

test('a shape mismatch names the tensor and both shapes', async () => {
  const dir = copyOfGood();
  editConfig(dir, (c) => (c.intermediate_size = 80));
  await expectFailure(
    dir,
    /tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape \[\d+,\d+\] but config\.json implies \[\d+,\d+\]/,
    ModelFormatError,
  );
});

test('a truncated safetensors file is reported as truncated', async () => {
  const dir = copyOfGood();
  const shard = readdirSync(dir).find((f) => f.endsWith('00002.safetensors'))!;
  truncateSync(join(dir, shard), statSync(join(dir, shard)).size - 100);
  await expectFailure(dir, /truncated/, ModelFormatError);
});

test('an unknown dtype is rejected', async () => {
  await expectFailure(good, /unknown dtype "int3"/, ConfigError, { dtype: 'int3' });
});

test('an existing output directory is refused without force, replaced with it', async () => {
  const out = join(work, 'exists');
  mkdirSync(out);
  writeFileSync(join(out, 'keep.txt'), 'x');
  await expectFailure(good, /exists; pass --force/, ConfigError, { outDir: out });
  assert.ok(existsSync(join(out, 'keep.txt')), 'the existing directory is untouched');
  await exportModel({ modelDir: good, outDir: out, force: true });
  assert.ok(!existsSync(join(out, 'keep.txt')) && existsSync(join(out, 'model.onnx')));
});

test('a directory that is not a checkpoint is named', async () => {
  await expectFailure(join(work, 'nope'), /does not exist/, ModelFormatError);
  const empty = join(work, 'empty');
  mkdirSync(empty);
  await expectFailure(empty, /no config\.json/, ModelFormatError);
});
