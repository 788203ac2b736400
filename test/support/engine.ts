import { join } from 'node:path';
import { Engine } from '../../src/engine/engine.js';
import type { WorkerOptions } from '../../src/engine/protocol.js';
import type { EngineEvent, GenerateRequest } from '../../src/engine/types.js';
import { exportModel } from '../../src/export/exporter.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../../src/runtime/sampler.js';
import { type FixtureDtype, type FixtureLayout, preparedExport } from './fixture_exports.js';
import { FIXTURE_DIR, tempDir } from './runner.js';

const exports = new Map<string, Promise<string>>();
const work = tempDir('qwen3-serve-engine-');

/** The fixture exported in the given layout: the run's export (fixture_exports.ts), else once per process. */
export function fixtureExport(layout: FixtureLayout = 'fast', dtype: FixtureDtype | 'fp16' = 'fp32'): Promise<string> {
  const key = `${layout}-${dtype}`;
  const prepared = dtype === 'fp16' ? null : preparedExport(layout, dtype);
  if (prepared) return Promise.resolve(prepared);
  if (!exports.has(key)) {
    const out = join(work, key);
    exports.set(
      key,
      exportModel({ modelDir: FIXTURE_DIR, outDir: out, layout, dtype }).then(() => out),
    );
  }
  return exports.get(key)!;
}

export function engineOptions(modelDir: string, o: Partial<WorkerOptions> = {}): WorkerOptions {
  return {
    modelDir,
    device: 'cpu',
    threads: 1,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 64,
    maxQueue: 64,
    maxModelLen: null,
    kvCacheMemory: 256 * 2 ** 20,
    ...o,
  };
}

let counter = 0;

export function request(
  promptIds: number[],
  o: Partial<Omit<GenerateRequest, 'sampling'>> & { sampling?: Partial<SamplingParams> } = {},
): GenerateRequest {
  return {
    requestId: `test-${counter++}`,
    promptIds,
    maxTokens: 8,
    stopTokenIds: [151645, 151643],
    stop: [],
    ignoreEos: false,
    skipSpecialTokens: true,
    ...o,
    sampling: { ...DEFAULT_SAMPLING, temperature: 0, ...o.sampling },
  };
}

export interface Collected {
  tokens: number[];
  text: string;
  finish: EngineEvent | null;
}

export async function collect(engine: Engine, req: GenerateRequest, signal?: AbortSignal, onEvent?: (e: EngineEvent) => void): Promise<Collected> {
  const out: Collected = { tokens: [], text: '', finish: null };
  for await (const ev of engine.generate(req, signal)) {
    out.tokens.push(...ev.tokenIds);
    out.text += ev.text;
    onEvent?.(ev);
    if (ev.finishReason) out.finish = ev;
  }
  return out;
}

export { Engine };
