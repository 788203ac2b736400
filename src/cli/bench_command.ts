import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { renderChart } from '../bench/chart.js';
import { markdownTable, runLoadBench } from '../bench/load_bench.js';
import { retrievalTable, runRetrievalBench } from '../bench/retrieval_bench.js';
import { type Flags, formatHelp, parseCommand, seconds, wholeNumber } from './flags.js';

export const BENCH_FLAGS = {
  'base-url': {
    type: 'string',
    default: 'http://127.0.0.1:8000/v1',
    help: 'OpenAI-compatible API base (ours or another server)',
    schema: z.string().url(),
  },
  model: { type: 'string', defaultText: 'the first of GET /models', help: 'Model id', schema: z.string().optional() },
  'api-key': { type: 'string', env: 'OPENAI_API_KEY', help: 'Bearer token', schema: z.string().optional() },
  endpoint: {
    type: 'string',
    default: 'completions',
    help: 'completions (token-id prompts, exact lengths) or chat; `embeddings` or `rerank` measure inputs per second at each `--batch` size',
    schema: z.enum(['completions', 'chat', 'embeddings', 'rerank']),
  },
  batch: {
    type: 'string',
    default: '1,32',
    help: 'embeddings / rerank: inputs per request (rerank: documents per query), comma-separated sizes',
    schema: z
      .string()
      .regex(/^\d+(,\d+)*$/, 'expected numbers separated by commas')
      .transform((s) => s.split(',').map(Number)),
  },
  dataset: {
    type: 'string',
    default: 'random',
    help: '`random` (independent prompts), `shared-prefix` (every prompt of a level starts with one `--prefix-len` prefix, then `--input-len` of its own), `multi-turn` (`--num-prompts` conversations of `--turns` turns, each sending the history, the answers and a new `--input-len`-word message; chat only)',
    schema: z.enum(['random', 'shared-prefix', 'multi-turn']),
  },
  'input-len': {
    type: 'string',
    default: '128',
    help: "Prompt length (tokens for completions, words for chat); a shared prefix's suffix, a conversation's user message",
    schema: wholeNumber(1),
  },
  'prefix-len': { type: 'string', default: '1024', help: 'shared-prefix: length of the common prefix', schema: wholeNumber(1) },
  turns: { type: 'string', default: '10', help: 'multi-turn: turns per conversation', schema: wholeNumber(1, 1000) },
  'think-time': {
    type: 'string',
    default: '0',
    help: 'multi-turn: seconds a user reads each answer before sending the next turn',
    schema: seconds(0, 3600),
  },
  thinking: {
    type: 'string',
    help: "Chat: ask for thinking `on` or `off` (Qwen3's `enable_thinking`); unset sends nothing",
    schema: z.enum(['on', 'off']).optional(),
  },
  'output-len': { type: 'string', default: '128', help: 'Tokens generated per request (ignore_eos)', schema: wholeNumber(1) },
  'num-prompts': { type: 'string', default: '32', help: 'Requests (multi-turn: conversations) per concurrency level', schema: wholeNumber(1) },
  concurrency: {
    type: 'string',
    default: '1,4,8,16',
    help: 'Comma-separated concurrency levels',
    schema: z
      .string()
      .regex(/^\d+(,\d+)*$/, 'expected numbers separated by commas')
      .transform((s) => s.split(',').map(Number)),
  },
  'request-rate': {
    type: 'string',
    help: 'Requests per second with Poisson arrivals (instead of --concurrency); inf = all at once',
    schema: z
      .string()
      .regex(/^(inf|\d+(\.\d+)?)$/, 'expected a number or inf')
      .transform((s) => (s === 'inf' ? Infinity : Number(s)))
      .optional(),
  },
  seed: { type: 'string', default: '0', help: 'Seed of the random prompts', schema: wholeNumber(0) },
  timeout: { type: 'string', default: '600', help: 'Seconds per request', schema: wholeNumber(1) },
  out: { type: 'string', default: 'bench-results/bench', help: 'Writes <out>.json, <out>.md and <out>.png', schema: z.string() },
} satisfies Flags;

export const BENCH_HELP = formatHelp(
  'qwen3-serve bench [--base-url URL] [--endpoint completions|chat] [--input-len N] [--output-len N] [--concurrency 1,4,8,16]',
  "Measures an OpenAI-compatible server the way vLLM's `bench serve` does: TTFT, TPOT, ITL, E2E latency (mean, median, p99), request and token throughput.",
  BENCH_FLAGS,
);

export async function benchCommand(argv: string[]): Promise<void> {
  const o = parseCommand(BENCH_FLAGS, argv, BENCH_HELP);
  if (!o) return;
  if (o.endpoint === 'embeddings' || o.endpoint === 'rerank') return retrievalBench(o);
  const endpoint = o.endpoint;
  const { model, levels } = await runLoadBench(
    {
      baseUrl: o['base-url'].replace(/\/+$/, ''),
      model: o.model ?? null,
      apiKey: o['api-key'] ?? null,
      endpoint,
      inputLen: o['input-len'],
      outputLen: o['output-len'],
      numPrompts: o['num-prompts'],
      concurrency: o.concurrency,
      requestRate: o['request-rate'] ?? null,
      seed: o.seed,
      timeout: o.timeout,
      dataset: o.dataset,
      prefixLen: o['prefix-len'],
      turns: o.turns,
      thinkTime: o['think-time'],
      thinking: o.thinking === undefined ? null : o.thinking === 'on',
    },
    (line) => process.stderr.write(`${line}\n`),
  );
  const table = markdownTable(levels);
  const dataset =
    o.dataset === 'shared-prefix' ? `, shared prefix ${o['prefix-len']}` : o.dataset === 'multi-turn' ? `, ${o.turns}-turn conversations` : '';
  process.stdout.write(
    `\n${model} via ${o.endpoint}${dataset}, input ${o['input-len']}, output ${o['output-len']}, ${o['num-prompts']} ${o.dataset === 'multi-turn' ? 'conversations' : 'requests'} per level\n\n${table}\n`,
  );
  mkdirSync(dirname(o.out) || '.', { recursive: true });
  const meta = {
    model,
    baseUrl: o['base-url'],
    endpoint: o.endpoint,
    dataset: o.dataset,
    prefixLen: o['prefix-len'],
    turns: o.turns,
    thinkTime: o['think-time'],
    thinking: o.thinking ?? null,
    inputLen: o['input-len'],
    outputLen: o['output-len'],
    numPrompts: o['num-prompts'],
    date: new Date().toISOString(),
  };
  writeFileSync(`${o.out}.json`, JSON.stringify({ ...meta, levels }, null, 2));
  writeFileSync(`${o.out}.md`, `${table}\n`);
  if (levels.length > 0 && levels[0].concurrency !== null) {
    writeFileSync(`${o.out}.png`, await renderChart(levels, `${model}: input ${o['input-len']}, output ${o['output-len']}`));
  }
  process.stderr.write(`wrote ${o.out}.json, ${o.out}.md${levels[0]?.concurrency !== null ? `, ${o.out}.png` : ''}\n`);
}

/** `--endpoint embeddings|rerank`: inputs per second at each batch size. */
async function retrievalBench(o: NonNullable<ReturnType<typeof parseCommand<typeof BENCH_FLAGS>>>): Promise<void> {
  const endpoint = o.endpoint as 'embeddings' | 'rerank';
  const { model, levels } = await runRetrievalBench(
    {
      baseUrl: o['base-url'].replace(/\/+$/, ''),
      model: o.model ?? null,
      apiKey: o['api-key'] ?? null,
      endpoint,
      inputLen: o['input-len'],
      batchSizes: o.batch,
      numInputs: o['num-prompts'],
      seed: o.seed,
      timeout: o.timeout,
    },
    (line) => process.stderr.write(`${line}\n`),
  );
  const table = retrievalTable(levels);
  process.stdout.write(`\n${model} via ${endpoint}, ${o['input-len']} words per input, ${o['num-prompts']} inputs per batch size\n\n${table}\n`);
  mkdirSync(dirname(o.out) || '.', { recursive: true });
  const meta = { model, baseUrl: o['base-url'], endpoint, inputLen: o['input-len'], numInputs: o['num-prompts'], date: new Date().toISOString() };
  writeFileSync(`${o.out}.json`, JSON.stringify({ ...meta, levels }, null, 2));
  writeFileSync(`${o.out}.md`, `${table}\n`);
  process.stderr.write(`wrote ${o.out}.json, ${o.out}.md\n`);
}
