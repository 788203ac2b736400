import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { type ExportOptions, exportModel } from '../src/export/exporter.js';
import type { Layout } from '../src/export/graph_io.js';
import { readManifest } from '../src/export/manifest.js';
import type { ExportDtype } from '../src/export/weights.js';
import { writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { fixtureExport } from './support/engine.js';
import { argmax, logSoftmax, maxAbsDiff, ReferenceQwen3 } from './support/reference_qwen3.js';
import { FIXTURE_DIR, FIXTURE_REFERENCE, openRunner, type ReferenceCase, tempDir } from './support/runner.js';

const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;
const work = tempDir();
const exportFixture = (layout: Layout, dtype: ExportDtype) => fixtureExport(layout, dtype);

const exportsOnce = new Map<string, Promise<string>>();
/** The fixture exported with these options into work/`name`, once per process: several tests check one export. */
function exportOnce(name: string, options: Omit<ExportOptions, 'modelDir' | 'outDir'>): Promise<string> {
  const out = join(work, name);
  if (!exportsOnce.has(name))
    exportsOnce.set(
      name,
      exportModel({ modelDir: FIXTURE_DIR, outDir: out, ...options }).then(() => out),
    );
  return exportsOnce.get(name)!;
}
const int8Kv = () => exportOnce('fast-fp32-kv8', { dtype: 'fp32', kvDtype: 'int8' });
const cudaFp16 = () => exportOnce('fast-fp16-cuda', { dtype: 'fp16', device: 'cuda' });

/** Greedy decoding of every case, one at a time; returns per-step logits. */
async function runAlone(dir: string, teacherForced: boolean): Promise<Float32Array[][]> {
  const runner = await openRunner(dir);
  const all: Float32Array[][] = [];
  for (const [id, c] of cases.entries()) {
    runner.addSequence(id);
    const steps = [await runner.prefill(id, c.prompt_ids)];
    for (let k = 1; k < c.steps.length; k++) {
      const next = teacherForced ? c.greedy_ids[k - 1] : argmax(steps[k - 1]);
      steps.push(await runner.decode([id], [next]));
    }
    runner.removeSequence(id);
    all.push(steps);
  }
  return all;
}

/** Largest |log p − reference| over the reference's top-20 ids of every step. */
function maxError(all: Float32Array[][]): number {
  let worst = 0;
  all.forEach((steps, i) =>
    steps.forEach((logits, k) => {
      const lp = logSoftmax(logits);
      cases[i].steps[k].top_ids.forEach((id, j) => {
        worst = Math.max(worst, Math.abs(lp[id] - cases[i].steps[k].top_logprobs[j]));
      });
    }),
  );
  return worst;
}

/** Every step's logits of every case, batched, equal those computed alone (to 1e-4). */
function assertSameAsAlone(batched: Float32Array[][], alone: Float32Array[][]): void {
  batched.forEach((steps, i) =>
    steps.forEach((l, k) => {
      const diff = maxAbsDiff(l, alone[i][k]);
      assert.ok(diff < 1e-4, `case ${i} step ${k}: batched logits differ by ${diff}`);
    }),
  );
}

for (const layout of ['fast', 'standard'] as const) {
  test(`fp32 ${layout} export matches the reference log-probabilities and greedy ids`, async () => {
    const all = await runAlone(await exportFixture(layout, 'fp32'), false);
    assert.ok(maxError(all) < 1e-3, `max error ${maxError(all)}`);
    all.forEach((steps, i) =>
      assert.deepEqual(
        steps.map((l) => argmax(l)),
        cases[i].greedy_ids,
      ),
    );
  });

  test(`fp32 ${layout}: the three prompts decoded as one batch equal each alone`, async () => {
    const dir = await exportFixture(layout, 'fp32');
    const alone = await runAlone(dir, false);
    const runner = await openRunner(dir);
    const ids = cases.map((_, i) => i + 10);
    const batched: Float32Array[][] = cases.map(() => []);
    for (const [i, c] of cases.entries()) {
      runner.addSequence(ids[i]);
      batched[i].push(await runner.prefill(ids[i], c.prompt_ids));
    }
    for (let k = 1; k < cases[0].steps.length; k++) {
      // Every other step asks for the rows in another order (a rotation): logits come back
      // in the order asked, whatever rows the sequences hold.
      const order = k % 2 === 0 ? [0, 1, 2] : [2, 0, 1];
      const logits = await runner.decode(
        order.map((i) => ids[i]),
        order.map((i) => argmax(batched[i][k - 1])),
      );
      order.forEach((i, j) => batched[i].push(logits.slice(j * runner.vocabSize, (j + 1) * runner.vocabSize)));
    }
    assertSameAsAlone(batched, alone);
    assert.ok(maxError(batched) < 1e-3);
  });

  test(`fp16 ${layout} export stays close to the reference and picks the same first token`, async (t) => {
    const all = await runAlone(await exportFixture(layout, 'fp16'), true);
    const err = maxError(all);
    t.diagnostic(`fp16 ${layout} max |logprob error| over top-20, 24 steps: ${err.toFixed(4)}`);
    assert.ok(err < 0.1, `fp16 error ${err}`);
    all.forEach((steps, i) => assert.equal(argmax(steps[0]), cases[i].greedy_ids[0]));
  });

  test(`int4 ${layout} export of the fixture runs; its error is measured`, async (t) => {
    // The fixture's weights have std 0.5 (25× a trained Qwen3's), which makes it chaotic:
    // quantizing any single projection group to 4 bits moves its log-probabilities by ~1.
    // So its int4 error is reported, and first-token agreement is checked on a model
    // with realistic weight scale below.
    const all = await runAlone(await exportFixture(layout, 'int4'), true);
    const err = maxError(all);
    const firstOk = all.filter((steps, i) => argmax(steps[0]) === cases[i].greedy_ids[0]).length;
    t.diagnostic(`int4 ${layout} fixture: max |logprob error| ${err.toFixed(3)}, first token equal in ${firstOk}/3 cases`);
    assert.ok(Number.isFinite(err));
  });
}

/**
 * Each case's prompt and greedy continuation prefilled in two chunks with every
 * position's logits (prompt log-probabilities): rows from the prompt's last token on are
 * the reference's steps, teacher-forced.
 */
async function runEveryPosition(dir: string): Promise<Float32Array[][]> {
  const runner = await openRunner(dir);
  assert.ok(runner.promptLogits, "the export returns every position's logits");
  const v = runner.vocabSize;
  const all: Float32Array[][] = [];
  for (const [id, c] of cases.entries()) {
    runner.addSequence(id);
    const tokens = [...c.prompt_ids, ...c.greedy_ids.slice(0, c.steps.length - 1)];
    const cut = Math.ceil(c.prompt_ids.length / 2);
    const rows = [
      ...chunkRows(await runner.prefill(id, tokens.slice(0, cut), true), v),
      ...chunkRows(await runner.prefill(id, tokens.slice(cut), true), v),
    ];
    assert.equal(rows.length, tokens.length, 'one row of logits per token');
    runner.removeSequence(id);
    all.push(rows.slice(c.prompt_ids.length - 1));
  }
  return all;
}

function chunkRows(logits: Float32Array, v: number): Float32Array[] {
  return Array.from({ length: logits.length / v }, (_, i) => logits.subarray(i * v, (i + 1) * v));
}

test("prefill with every position's logits (echo + logprobs): each row is the reference's step", async (t) => {
  for (const layout of ['fast', 'standard'] as const) {
    const all = await runEveryPosition(await exportFixture(layout, 'fp32'));
    assert.ok(maxError(all) < 1e-3, `fp32 ${layout}: max error ${maxError(all)}`);
  }
  // The other fast graphs share the tail; their rows equal their own teacher-forced decode.
  // The same exports as the int4, CUDA and int8 KV tests use.
  for (const [label, exported] of [
    ['int4, in-place attention', () => exportFixture('fast', 'int4')],
    ['fp16, GroupQueryAttention', cudaFp16],
    ['fp32, int8 KV', int8Kv],
  ] as const) {
    const out = await exported();
    const every = await runEveryPosition(out);
    const stepped = await runAlone(out, true);
    let diff = 0;
    every.forEach((rows, i) => rows.forEach((row, k) => (diff = Math.max(diff, maxAbsDiff(logSoftmax(row), logSoftmax(stepped[i][k]))))));
    t.diagnostic(`${label}: every-position rows vs decoding, max |Δ logprob| ${diff.toFixed(5)}`);
    assert.ok(diff < 0.05, `${label}: ${diff}`);
  }
});

test('fp32 weights with an int8 KV cache: close to the reference, batched = alone, rows survive compaction', async (t) => {
  const dir = await int8Kv();
  const manifest = readManifest(dir);
  assert.equal(manifest.kvDtype, 'int8');
  assert.ok(manifest.io.pastKeyScale && manifest.io.newValueScale);
  const alone = await runAlone(dir, true);
  const err = maxError(alone);
  t.diagnostic(`int8 KV (fp32 weights) max |logprob error| over top-20, 24 steps: ${err.toFixed(4)}`);
  // ~15× fp16's error (0.017), as 8 bits per token vs 11 bits of mantissa predict; this
  // fixture's large weights magnify it (a realistically scaled model is checked below).
  assert.ok(err < 0.5, `int8 KV error ${err}`);
  alone.forEach((steps, i) => assert.equal(argmax(steps[0]), cases[i].greedy_ids[0]));

  // Teacher-forced as one batch, with an extra sequence that leaves after two steps (its
  // row is refilled by the last one) and prompts long enough to grow the capacity.
  const runner = await openRunner(dir);
  const ids = cases.map((_, i) => i + 10);
  const batched: Float32Array[][] = cases.map(() => []);
  runner.addSequence(99);
  await runner.prefill(
    99,
    Array.from({ length: 70 }, (_, i) => 500 + i),
  );
  for (const [i, c] of cases.entries()) {
    runner.addSequence(ids[i]);
    batched[i].push(await runner.prefill(ids[i], c.prompt_ids));
  }
  for (let k = 1; k < cases[0].steps.length; k++) {
    if (k === 3) runner.removeSequence(99);
    const live = k < 3 ? [...ids, 99] : ids;
    const logits = await runner.decode(live, [...cases.map((c) => c.greedy_ids[k - 1]), 7].slice(0, live.length));
    batched.forEach((s, i) => s.push(logits.slice(i * runner.vocabSize, (i + 1) * runner.vocabSize)));
  }
  assertSameAsAlone(batched, alone);
});

test('int8 KV is refused where it cannot run', async () => {
  for (const o of [{ layout: 'standard' as const }, { attention: 'gqa' as const }, { dtype: 'fp16' as const }]) {
    await assert.rejects(exportModel({ modelDir: FIXTURE_DIR, outDir: join(work, 'never'), dtype: 'fp32', kvDtype: 'int8', ...o }), /int8/);
  }
});

test('fp32 fast export with GroupQueryAttention (the CUDA default) matches the reference too', async () => {
  const out = join(work, 'fast-fp32-gqa');
  await exportModel({ modelDir: FIXTURE_DIR, outDir: out, dtype: 'fp32', attention: 'gqa' });
  const all = await runAlone(out, false);
  assert.ok(maxError(all) < 1e-3, `max error ${maxError(all)}`);
  all.forEach((steps, i) =>
    assert.deepEqual(
      steps.map((l) => argmax(l)),
      cases[i].greedy_ids,
    ),
  );
});

test('the CUDA export (fp16, GroupQueryAttention) runs on the CPU provider close to the reference', async (t) => {
  // No GPU here: the graph CUDA would run is checked on the CPU execution provider, whose
  // GQA kernel takes fp16 too.
  const out = await cudaFp16();
  const manifest = readManifest(out);
  assert.equal(manifest.kvDtype, 'float16');
  const all = await runAlone(out, true);
  const err = maxError(all);
  t.diagnostic(`fp16 GQA (CUDA export) on CPU max |logprob error| over top-20, 24 steps: ${err.toFixed(4)}`);
  assert.ok(err < 0.1, `fp16 GQA error ${err}`);
  all.forEach((steps, i) => assert.equal(argmax(steps[0]), cases[i].greedy_ids[0]));
});

/** Pearson correlation of two logit vectors. */
function correlation(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i] / n;
    mb += b[i] / n;
  }
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) ** 2;
    sbb += (b[i] - mb) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}

/** Each prompt's last logits, prefilled on a fresh row in chunks of `chunk` tokens. */
async function promptLogits(dir: string, prompts: number[][], chunk = Infinity): Promise<Float32Array[]> {
  const runner = await openRunner(dir);
  const out: Float32Array[] = [];
  for (const [i, p] of prompts.entries()) {
    runner.addSequence(i);
    let logits: Float32Array = new Float32Array();
    for (let at = 0; at < p.length; at += chunk) logits = await runner.prefill(i, p.slice(at, at + chunk));
    runner.removeSequence(i);
    out.push(logits);
  }
  return out;
}

test('int4 and fp16 exports of a realistically scaled model track the float64 reference', async (t) => {
  // Random models have near-tied top logits, so int4 is judged by how closely its logits
  // follow the reference (a wrong nibble order or scale drops this near 0; 4-bit noise on Gaussian weights gives ~0.98).
  const src = join(work, 'realistic');
  // Realistic in weight scale, not in vocabulary: 16,384 logits judge a correlation as well as 151,936, at a tenth of the cost.
  const vocabSize = 16_384;
  writeRandomCheckpoint(src, { vocabSize, hiddenSize: 128, intermediateSize: 384, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32, seed: 7 });
  const ref = new ReferenceQwen3(src);
  const prompts = cases.map((c) => c.prompt_ids.map((id) => id % vocabSize));
  const expected = prompts.map((p) => ref.lastLogits(p));
  /** Checks an export's logits against the reference: correlation above `min`, and the same top token if asked. */
  const check = async (label: string, dir: string, min: number, sameTop: boolean, chunk?: number) => {
    for (const [i, logits] of (await promptLogits(dir, prompts, chunk)).entries()) {
      const r = correlation(logits, expected[i]);
      t.diagnostic(`${label} prompt ${i}: correlation with reference logits ${r.toFixed(5)}`);
      assert.ok(r > min, `${label} correlation ${r}`);
      if (sameTop) assert.equal(argmax(logits), argmax(expected[i]), label);
    }
  };
  for (const dtype of ['int4', 'fp16'] as const) {
    for (const layout of ['fast', 'standard'] as const) {
      const out = join(work, `realistic-${dtype}-${layout}`);
      await exportModel({ modelDir: src, outDir: out, dtype, layout });
      await (dtype === 'fp16' ? check(`fp16 ${layout}`, out, 0.9999, true) : check(`int4 ${layout}`, out, 0.95, false));
    }
  }
  // Larger int4 blocks (fewer scales, faster MatMulNBits). The inputs are 128 and 384 wide:
  // 128 divides both; 256 leaves a partly padded last block (and one padded block for 128).
  for (const blockSize of [128, 256]) {
    const out = join(work, `realistic-int4-b${blockSize}`);
    await exportModel({ modelDir: src, outDir: out, dtype: 'int4', int4BlockSize: blockSize });
    assert.equal(readManifest(out).int4?.blockSize, blockSize);
    await check(`int4 block ${blockSize}`, out, 0.95, false);
  }
  // fp32 weights over an int8 KV cache: prompts long enough that most attention reads the
  // cache (chunked prefill), so the stored int8 keys and values decide the result.
  const out = join(work, 'realistic-fp32-kv8');
  await exportModel({ modelDir: src, outDir: out, dtype: 'fp32', kvDtype: 'int8' });
  await check('fp32 weights, int8 KV', out, 0.999, true, 4);
});
