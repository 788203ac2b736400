import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportModel } from '../src/export/exporter.js';
import type { Layout } from '../src/export/graph_io.js';
import { ioName, readManifest } from '../src/export/manifest.js';
import type { ExportDtype } from '../src/export/weights.js';
import { FastRunner } from '../src/runtime/fast_runner.js';
import { GROW_AHEAD } from '../src/runtime/kv_cache.js';
import { createSession } from '../src/runtime/session.js';
import { StagedFastRunner } from '../src/runtime/staged_runner.js';
import { fixtureExport } from './support/engine.js';
import { maxAbsDiff } from './support/reference_qwen3.js';
import { FIXTURE_DIR, openRunner, tempDir } from './support/runner.js';

const work = tempDir();
const exportFixture = (layout: Layout, dtype: ExportDtype) => fixtureExport(layout, dtype);

test('fast runner: caches re-laid out in place (growth, shrink, compaction) keep every logit', async () => {
  const kv8 = join(work, 'fast-fp32-kv8-relayout');
  await exportModel({ modelDir: FIXTURE_DIR, outDir: kv8, dtype: 'fp32', kvDtype: 'int8' });
  for (const dir of [await exportFixture('fast', 'fp32'), kv8]) {
    const tokens = (seed: number, n: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 50000));
    // Oracle: the whole sequence in one prefill, the cache laid out once.
    const oracle = async (seq: number[]) => {
      const r = await openRunner(dir);
      r.addSequence(0);
      return r.prefill(0, seq);
    };
    const runner = await openRunner(dir);
    const seqs = new Map([
      [1, tokens(1, 250)],
      [2, tokens(2, 150)],
      [3, tokens(3, 20)],
    ]);
    for (const [id, seq] of seqs) {
      runner.addSequence(id);
      for (let at = 0; at < seq.length; at += 64) await runner.prefill(id, seq.slice(at, at + 64));
    }
    // Decode past several capacity steps (256 → 320 fits the 25% headroom in place,
    // 320 → 384 does not), then let the longest leave (rows compact, capacity shrinks).
    const step = async (ids: number[]) => {
      const next = ids.map((id) => 2000 + seqs.get(id)!.length);
      const logits = await runner.decode(ids, next);
      ids.forEach((id, i) => seqs.get(id)!.push(next[i]));
      return ids.map((_, i) => logits.slice(i * runner.vocabSize, (i + 1) * runner.vocabSize));
    };
    const check = async (id: number, got: Float32Array) => {
      const want = await oracle(seqs.get(id)!);
      const diff = maxAbsDiff(got, want);
      assert.ok(diff < 1e-3, `${dir}: sequence ${id} at ${seqs.get(id)!.length} tokens differs by ${diff}`);
    };
    let last: Float32Array[] = [];
    for (let k = 0; k < 90; k++) last = await step([1, 2, 3]);
    for (const [i, id] of [1, 2, 3].entries()) await check(id, last[i]);
    runner.removeSequence(1);
    for (let k = 0; k < 3; k++) last = await step([2, 3]);
    await check(2, last[0]);
    await check(3, last[1]);
    runner.removeSequence(2);
    last = await step([3]);
    await check(3, last[0]);
  }
});

/** A real CPU session on `dir` whose every run shows its feeds to `see` first. */
async function watchedSession(
  dir: string,
  manifest: ReturnType<typeof readManifest>,
  see: (feeds: Record<string, { dims: readonly number[] }>) => void,
) {
  const { session } = await createSession(dir, manifest, { device: 'cpu', threads: 1 });
  const run = session.run.bind(session);
  (session as { run: typeof session.run }).run = ((feeds: Record<string, { dims: readonly number[] }>) => {
    see(feeds);
    return run(feeds as never);
  }) as typeof session.run;
  return session;
}

test('fast runner: a batched decode feeds rows up to its last decoding row; a prefilling row between them rides along unharmed', async () => {
  for (const dir of [await exportFixture('fast', 'fp32'), await exportFixture('fast', 'int4')]) {
    const manifest = readManifest(dir);
    // The real session, watched: how many rows each decode feeds it.
    const fed: number[] = [];
    const session = await watchedSession(dir, manifest, (feeds) => fed.push(feeds.input_ids.dims[0]));
    const runner = new FastRunner(session, manifest, 4, 4096);
    const oracleRunner = await openRunner(dir);
    const tokens = (seed: number, n: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 50000));
    const seqs = new Map([
      [1, tokens(1, 40)],
      [2, tokens(2, 30)],
    ]);
    for (const [id, seq] of seqs) {
      runner.addSequence(id);
      await runner.prefill(id, seq);
    }
    // A long prompt joins in the last row and is still prefilling: not fed to decode steps.
    runner.addSequence(3);
    await runner.prefill(3, tokens(3, 200));
    const decodeOnce = async (ids: number[], rowsFed: number) => {
      fed.length = 0;
      const next = ids.map((id) => 3000 + seqs.get(id)!.length);
      const logits = await runner.decode(ids, next);
      ids.forEach((id, i) => seqs.get(id)!.push(next[i]));
      assert.deepEqual(fed, [rowsFed], `${dir}: rows fed to decode ${ids}`);
      return logits;
    };
    const tolerance = manifest.dtype === 'int4' ? 0.05 : 1e-3;
    const check = async (ids: number[], logits: Float32Array) => {
      for (const [i, id] of ids.entries()) {
        oracleRunner.addSequence(100 + id);
        const want = await oracleRunner.prefill(100 + id, seqs.get(id)!);
        oracleRunner.removeSequence(100 + id);
        const diff = maxAbsDiff(logits.slice(i * runner.vocabSize, (i + 1) * runner.vocabSize), want);
        assert.ok(diff < tolerance, `${dir}: sequence ${id} differs by ${diff}`);
      }
    };
    // Rows 0 and 1 decode; the prefilling sequence in row 2 stays out.
    await check([1, 2], await decodeOnce([1, 2], 2));
    // Sequence 1 leaves: the last row (sequence 3, still prefilling) moves into row 0, so
    // decoding sequence 2 in row 1 feeds rows 0–1 and row 0 rides along with a dummy token.
    runner.removeSequence(1);
    await check([2], await decodeOnce([2], 2));
    // The ride-along left sequence 3's cache untouched: its next chunk still matches.
    seqs.set(3, tokens(3, 232));
    const chunk = await runner.prefill(3, seqs.get(3)!.slice(200));
    oracleRunner.addSequence(103);
    const want = await oracleRunner.prefill(103, seqs.get(3)!);
    assert.ok(maxAbsDiff(chunk, want) < tolerance, `${dir}: the prefilling row after riding along`);
  }
});

test('a prompt whose end is expected grows the cache at most every few chunks, to at most that end, with bit-identical results', async () => {
  for (const dir of [await exportFixture('fast', 'fp32'), await exportFixture('fast', 'int4')]) {
    const manifest = readManifest(dir);
    // The real session, watched: the capacity each prefill chunk is fed.
    const fed: number[] = [];
    const session = await watchedSession(dir, manifest, (feeds) => fed.push(feeds[ioName(manifest.io.pastValue, 0)].dims[2]));
    const prompt = Array.from({ length: 700 }, (_, i) => 1000 + ((i * 7919) % 50000));
    const prefill = async (expected: boolean) => {
      const runner = new FastRunner(session, manifest, 2, 4096);
      runner.addSequence(1);
      if (expected) runner.expect(1, prompt.length);
      fed.length = 0;
      const logits: Float32Array[] = [];
      for (let at = 0; at < prompt.length; at += 32) logits.push((await runner.prefill(1, prompt.slice(at, at + 32))).slice());
      return { logits, capacities: [...fed] };
    };
    const stepwise = await prefill(false);
    const ahead = await prefill(true);
    ahead.logits.forEach((l, i) => assert.deepEqual(l, stepwise.logits[i], `${dir}: chunk ${i}`));
    const moves = (c: number[]) => c.filter((x, i) => i > 0 && x !== c[i - 1]).length;
    assert.equal(moves(stepwise.capacities), 10, 'without an expected end, capacity moves every 64 tokens');
    assert.ok(moves(ahead.capacities) <= 3, `capacities ${ahead.capacities}: a move at most every ${GROW_AHEAD} tokens`);
    assert.equal(Math.max(...ahead.capacities), 704, "never past the expected end's capacity step");
    ahead.capacities.forEach((c, i) => assert.ok(c <= (i + 1) * 32 + GROW_AHEAD + 64, `chunk ${i}: capacity ${c} runs at most GROW_AHEAD ahead`));
  }
});

test('staged runner: a prompt prefills apart, so decode steps beside it read only the decoding rows; it moves over at its first decode', async () => {
  for (const dir of [await exportFixture('fast', 'fp32'), await exportFixture('fast', 'int4')]) {
    const manifest = readManifest(dir);
    // The real session, watched: the capacity of the cache each decode feeds it.
    const fedCapacity: number[] = [];
    const session = await watchedSession(dir, manifest, (feeds) => {
      if (feeds.input_ids.dims[1] === 1) fedCapacity.push(feeds[ioName(manifest.io.pastValue, 0)].dims[2]);
    });
    const runner = new StagedFastRunner(new FastRunner(session, manifest, 4, 4096), new FastRunner(session, manifest, 4, 4096));
    const oracleRunner = await openRunner(dir);
    const tolerance = manifest.dtype === 'int4' ? 0.05 : 1e-3;
    const expectClose = async (id: number, seq: number[], got: Float32Array) => {
      oracleRunner.addSequence(100 + id);
      const want = await oracleRunner.prefill(100 + id, seq);
      oracleRunner.removeSequence(100 + id);
      const diff = maxAbsDiff(got, want);
      assert.ok(diff < tolerance, `${dir}: sequence ${id} at ${seq.length} tokens differs by ${diff}`);
    };
    const tokens = (seed: number, n: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 50000));
    const short = tokens(1, 30);
    runner.addSequence(1);
    await runner.prefill(1, short);
    // A 300-token prompt joins and prefills in chunks while sequence 1 decodes.
    const long = tokens(2, 300);
    runner.addSequence(2);
    for (let at = 0; at < long.length; at += 100) {
      await runner.prefill(2, long.slice(at, at + 100));
      short.push(4000 + at);
      await expectClose(1, short, await runner.decode([1], [short[short.length - 1]]));
    }
    assert.ok(
      fedCapacity.every((c) => c <= 64),
      `decode steps fed capacities ${fedCapacity}: the prompt's 300 tokens stayed out`,
    );
    assert.equal(runner.cachedLength(2), 300);
    // Its first decode moves it over (cache copied) and both decode together.
    fedCapacity.length = 0;
    short.push(5000);
    long.push(5001);
    const both = await runner.decode([1, 2], [5000, 5001]);
    assert.ok(fedCapacity[0] >= 301, 'the moved sequence now sets the capacity');
    await expectClose(1, short, both.slice(0, runner.vocabSize));
    await expectClose(2, long, both.slice(runner.vocabSize));
    // Leaving from either runner: a new prompt left while prefilling, then the moved one.
    runner.addSequence(3);
    await runner.prefill(3, tokens(3, 10));
    runner.removeSequence(3);
    runner.removeSequence(2);
    short.push(6000);
    await expectClose(1, short, await runner.decode([1], [6000]));
  }
});

test('fast runner: prefault() makes the budget-sized KV buffers resident at once', async () => {
  const dir = await exportFixture('fast', 'fp32');
  const manifest = readManifest(dir);
  const { session } = await createSession(dir, manifest, { device: 'cpu', threads: 1 });
  const c = manifest.config;
  const perToken = c.numLayers * 2 * c.numKvHeads * c.headDim * 4; // fp32 keys and values
  const budgetTokens = Math.ceil((160 * 2 ** 20) / perToken);
  const runner = new FastRunner(session, manifest, 4, 4096, budgetTokens);
  // Allocated at the budget's size but not written: not resident yet.
  const before = process.memoryUsage().rss;
  const bytes = runner.prefault();
  const grew = process.memoryUsage().rss - before;
  assert.ok(bytes >= budgetTokens * perToken, `${bytes} bytes`);
  assert.ok(grew > 0.6 * bytes, `RSS grew ${grew} for ${bytes} prefaulted bytes`);
});
