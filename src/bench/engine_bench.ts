import { readManifest } from '../export/manifest.js';
import { INT4_BLOCK_SIZE } from '../export/weights.js';
import { FastRunner } from '../runtime/fast_runner.js';
import { capacityBucket } from '../runtime/kv_cost.js';
import type { ModelRunner } from '../runtime/model_runner.js';
import { createSession, type DeviceChoice } from '../runtime/session.js';
import { StandardRunner } from '../runtime/standard_runner.js';

export interface EngineBenchOptions {
  modelDir: string;
  batchSizes: number[];
  contexts: number[];
  decodeSteps: number;
  prefillChunk: number;
  threads: number;
  device: DeviceChoice;
  /** As `serve --kv-cache-prefault`: the prefill runner's cache is reserved for its prompt and written before timing. */
  kvCachePrefault?: boolean;
}

export interface EngineBenchRow {
  layout: string;
  dtype: string;
  batch: number;
  context: number;
  prefillTokensPerSecond: number;
  decodeMsPerStep: number;
  decodeTokensPerSecond: number;
  peakRssMiB: number;
}

/**
 * Times the model runner alone (no scheduler, no HTTP): the prefill speed of one
 * `context`-token prompt, and batched decode steps over caches of `context` tokens.
 */
export async function runEngineBench(o: EngineBenchOptions, log: (line: string) => void = () => {}): Promise<EngineBenchRow[]> {
  const manifest = readManifest(o.modelDir);
  // The prefill runner holds a warm-up sequence beside the measured one.
  const maxBatch = Math.max(2, ...o.batchSizes);
  const maxLen = Math.max(...o.contexts) + o.decodeSteps + 2;
  const { session } = await createSession(o.modelDir, manifest, { device: o.device, threads: o.threads });
  const rows: EngineBenchRow[] = [];
  let peakRss = process.memoryUsage().rss; // of the whole process: earlier runs in it count too
  const sample = () => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  };
  const newRunner = (): ModelRunner =>
    manifest.layout === 'fast' ? new FastRunner(session, manifest, maxBatch, maxLen) : new StandardRunner(session, manifest, maxBatch);
  let nextId = 0;
  for (const context of o.contexts) {
    // Prefill: one real prompt of `context` tokens, in chunks, after a warm-up run.
    // With prefaulting, as the server's prompt runner (worker.ts): buffers reserved for the prompt and written first.
    const pre =
      o.kvCachePrefault && manifest.layout === 'fast' ? new FastRunner(session, manifest, 2, maxLen, 2 * capacityBucket(context)) : newRunner();
    if (o.kvCachePrefault && pre instanceof FastRunner) pre.prefault();
    const warm = nextId++;
    pre.addSequence(warm);
    await pre.prefill(warm, [1, 2, 3, 4]);
    const id = nextId++;
    pre.addSequence(id);
    // As the engine does on admission (step_executor.ts), so capacity grows toward the prompt's end in few moves.
    pre.expect(id, context);
    const prompt = Array.from({ length: context }, (_, i) => 1000 + ((i * 104729) % 100000));
    const t0 = performance.now();
    for (let at = 0; at < context; at += o.prefillChunk) {
      await pre.prefill(id, prompt.slice(at, at + o.prefillChunk));
      sample();
    }
    const prefillTokensPerSecond = context / ((performance.now() - t0) / 1000);
    for (const batch of o.batchSizes) {
      // Decode: a batch whose caches hold `context` tokens each (values do not matter for speed).
      const runner = newRunner();
      const ids = Array.from({ length: batch }, () => nextId++);
      for (const sid of ids) {
        runner.addSequence(sid);
        runner.reserve(sid, context);
      }
      const tokens = ids.map(() => 1234);
      await runner.decode(ids, tokens); // warm-up at this shape
      const t = performance.now();
      for (let s = 0; s < o.decodeSteps; s++) {
        await runner.decode(ids, tokens);
        sample();
      }
      const msPerStep = (performance.now() - t) / o.decodeSteps;
      const row: EngineBenchRow = {
        layout: manifest.layout,
        // int4 exports with a non-default block name it: it changes speed and accuracy.
        dtype: manifest.int4 && manifest.int4.blockSize !== INT4_BLOCK_SIZE ? `${manifest.dtype} block ${manifest.int4.blockSize}` : manifest.dtype,
        batch,
        context,
        prefillTokensPerSecond,
        decodeMsPerStep: msPerStep,
        decodeTokensPerSecond: (batch * 1000) / msPerStep,
        peakRssMiB: peakRss / 2 ** 20,
      };
      rows.push(row);
      log(
        `${row.layout}/${row.dtype} batch ${batch} context ${context}: prefill ${row.prefillTokensPerSecond.toFixed(0)} tok/s, decode ${msPerStep.toFixed(1)} ms/step = ${row.decodeTokensPerSecond.toFixed(1)} tok/s, peak RSS ${row.peakRssMiB.toFixed(0)} MiB`,
      );
    }
  }
  // Sessions hold hundreds of MB; a report that benchmarks several exports in one process
  // would otherwise count them all in its peak RSS.
  await session.release();
  return rows;
}
