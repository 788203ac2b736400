import { readManifest } from '../export/manifest.js';
import { createSession, type DeviceChoice } from '../runtime/session.js';
import { FastRunner } from '../runtime/fast_runner.js';
import { StandardRunner } from '../runtime/standard_runner.js';
import type { ModelRunner } from '../runtime/model_runner.js';

export interface EngineBenchOptions {
  modelDir: string;
  batchSizes: number[];
  contexts: number[];
  decodeSteps: number;
  prefillChunk: number;
  threads: number;
  device: DeviceChoice;
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
 * Times the model runner alone (no scheduler, no HTTP): prefill of `context` tokens per
 * sequence in chunks, then `decodeSteps` batched decode steps at that context.
 */
export async function runEngineBench(o: EngineBenchOptions, log: (line: string) => void = () => {}): Promise<EngineBenchRow[]> {
  const manifest = readManifest(o.modelDir);
  const maxBatch = Math.max(...o.batchSizes);
  const maxLen = Math.max(...o.contexts) + o.decodeSteps + 1;
  const { session } = await createSession(o.modelDir, manifest, { device: o.device, threads: o.threads });
  const rows: EngineBenchRow[] = [];
  let peakRss = process.memoryUsage().rss;
  const sample = () => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  };
  let nextId = 0;
  for (const context of o.contexts) {
    for (const batch of o.batchSizes) {
      // A fresh runner per cell so capacity and memory reflect that cell alone.
      const runner: ModelRunner =
        manifest.layout === 'fast' ? new FastRunner(session, manifest, maxBatch, maxLen) : new StandardRunner(session, manifest, maxBatch);
      const ids = Array.from({ length: batch }, () => nextId++);
      let prefillMs = 0;
      for (const id of ids) {
        runner.addSequence(id);
        const prompt = Array.from({ length: context }, (_, i) => 1000 + ((id * 7919 + i * 104729) % 100000));
        for (let at = 0; at < context; at += o.prefillChunk) {
          const t = performance.now();
          await runner.prefill(id, prompt.slice(at, at + o.prefillChunk));
          prefillMs += performance.now() - t;
          sample();
        }
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
        dtype: manifest.dtype,
        batch,
        context,
        prefillTokensPerSecond: (batch * context) / (prefillMs / 1000),
        decodeMsPerStep: msPerStep,
        decodeTokensPerSecond: (batch * 1000) / msPerStep,
        peakRssMiB: peakRss / 2 ** 20,
      };
      rows.push(row);
      log(
        `${row.layout}/${row.dtype} batch ${batch} context ${context}: prefill ${row.prefillTokensPerSecond.toFixed(0)} tok/s, decode ${msPerStep.toFixed(1)} ms/step = ${row.decodeTokensPerSecond.toFixed(1)} tok/s, peak RSS ${row.peakRssMiB.toFixed(0)} MiB`,
      );
      for (const id of ids) runner.removeSequence(id);
    }
  }
  return rows;
}
