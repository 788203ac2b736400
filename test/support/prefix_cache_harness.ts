import { join } from 'node:path';
import { EngineCore } from '../../src/engine/engine_core.js';
import type { EngineEvent, GenerateRequest } from '../../src/engine/types.js';
import { exportModel } from '../../src/export/exporter.js';
import { writeRandomCheckpoint } from '../../src/model/random_checkpoint.js';
import { KvBlockPool } from '../../src/runtime/kv_block_pool.js';
import { QwenTokenizer } from '../../src/text/tokenizer.js';
import { fixtureExport, request } from './engine.js';
import { moeExport } from './moe_checkpoint.js';
import { FIXTURE_DIR, openRunner, tempDir } from './runner.js';

// Runs requests on an engine core with the prefix cache on or off, for the prefix-cache tests.

export const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
export const CHUNK = 32;

export interface Outcome {
  tokens: number[];
  logprobs: unknown[];
  prompt: unknown;
  cached: number;
  preemptions: number;
  finish: string | null;
}

/** Runs requests on one engine core to the end, submitting each at its step; returns each one's outcome. */
export async function run(
  dir: string,
  requests: Array<{ req: GenerateRequest; atStep?: number }>,
  o: { cacheBlocks?: number; kvBudgetTokens?: number; core?: EngineCore } = {},
): Promise<{ outcomes: Outcome[]; core: EngineCore }> {
  let core = o.core;
  if (!core) {
    const runner = await openRunner(dir);
    const prefixCachePool = o.cacheBlocks ? new KvBlockPool(runner.blockLayout(CHUNK), o.cacheBlocks) : null;
    core = new EngineCore(
      runner,
      tokenizer,
      { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: o.kvBudgetTokens ?? 8192 },
      { prefixCachePool, warmAfterIdleMs: 0 },
    );
  }
  const events: EngineEvent[] = [];
  let step = 0;
  const pending = [...requests];
  const submitDue = () => {
    for (const r of pending.filter((p) => (p.atStep ?? 0) <= step)) {
      pending.splice(pending.indexOf(r), 1);
      void core.submit(r.req);
    }
  };
  submitDue();
  while (core.hasWork() || pending.length > 0) {
    await core.step();
    step++;
    events.push(...core.takeEvents());
    submitDue();
  }
  const outcomes = requests.map(({ req }) => {
    const mine = events.filter((e) => e.requestId === req.requestId);
    const end = mine.find((e) => e.finishReason);
    return {
      tokens: mine.flatMap((e) => e.tokenIds),
      logprobs: mine.flatMap((e) => e.logprobs ?? []),
      prompt: mine.find((e) => e.promptLogprobs)?.promptLogprobs ?? null,
      cached: end?.metrics?.cachedTokens ?? -1,
      preemptions: end?.metrics?.preemptions ?? -1,
      finish: end?.finishReason ?? null,
    };
  });
  return { outcomes, core };
}

/** Deterministic token ids. */
export const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 60000));
export const greedy = (promptIds: number[], maxTokens = 10, extra: Partial<GenerateRequest> = {}) =>
  request(promptIds, { maxTokens, ignoreEos: true, sampling: { logprobs: 3 }, ...extra });

export const strip = (o: Outcome) => ({ tokens: o.tokens, logprobs: o.logprobs, prompt: o.prompt, finish: o.finish });

/** A chat client's conversation: each turn is the last prompt, less its last few tokens (the template's generation prompt), plus the answer and a new message. */
export async function conversation(
  dir: string,
  cacheBlocks: number,
  drop = 4,
): Promise<{ outcomes: Outcome[]; prompts: number[][]; core: EngineCore }> {
  let prompt = ids(45, 1);
  const prompts: number[][] = [];
  const outcomes: Outcome[] = [];
  let core: EngineCore | undefined;
  for (let turn = 0; turn < 5; turn++) {
    prompts.push(prompt);
    const r = await run(dir, [{ req: greedy(prompt) }], { cacheBlocks, core });
    core = r.core;
    outcomes.push(r.outcomes[0]);
    prompt = [...prompt.slice(0, prompt.length - drop), ...r.outcomes[0].tokens, ...ids(23 + turn * 5, turn + 2)];
  }
  return { outcomes, prompts, core: core! };
}

/** Tokens a prompt can take from the cache: whole blocks shared with an earlier prompt's whole blocks, short of its last chunk. */
export function expectedHit(prompts: number[][], i: number): number {
  let best = 0;
  for (let j = 0; j < i; j++) {
    let common = 0;
    while (common < prompts[i].length && common < prompts[j].length && prompts[i][common] === prompts[j][common]) common++;
    best = Math.max(best, Math.min(Math.floor(common / CHUNK), Math.floor(prompts[j].length / CHUNK)));
  }
  return Math.min(best, Math.floor((prompts[i].length - 1) / CHUNK)) * CHUNK;
}

let deeper: string | null = null;
const ownExports = new Map<string, Promise<string>>();

/** A deeper random checkpoint (written once per process) exported in a dtype and layout, once per process each. */
export function ownCheckpoint(dtype: 'fp16' | 'int4', layout: 'fast' | 'standard' = 'fast'): Promise<string> {
  if (!deeper) {
    deeper = join(tempDir(), 'deeper');
    writeRandomCheckpoint(deeper, { hiddenSize: 128, intermediateSize: 256, numLayers: 5, numHeads: 4, numKvHeads: 2, headDim: 32, seed: 7 });
  }
  const out = `${deeper}-${dtype}-${layout}`;
  if (!ownExports.has(out))
    ownExports.set(
      out,
      exportModel({ modelDir: deeper, outDir: out, dtype, layout }).then(() => out),
    );
  return ownExports.get(out)!;
}

export const variants: Array<[string, () => Promise<string>]> = [
  ['fixture, fp32 fast', () => fixtureExport('fast')],
  ['fixture, fp32 standard', () => fixtureExport('standard')],
  ['5-layer checkpoint, int4 fast', () => ownCheckpoint('int4')],
  ['5-layer checkpoint, fp16 fast', () => ownCheckpoint('fp16')],
  // Qwen3-MoE: a dense layer between sparse ones, then every second layer sparse (int4).
  ['MoE checkpoint, fp32 fast', () => moeExport('renorm-dense-middle')],
  ['MoE checkpoint, int4 fast', () => moeExport('softmax-step2-untied', 'int4')],
];
