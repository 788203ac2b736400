import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { Engine } from '../engine/engine.js';
import { defaultCacheDir, resolveExportTarget, resolveModel } from '../export/model_source.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { samplingDefaults } from '../runtime/sampler.js';
import { cudaUsable } from '../runtime/session.js';
import { ChatTemplate } from '../text/chat_template.js';
import { QwenTokenizer } from '../text/tokenizer.js';
import { createProgress } from '../util/progress.js';
import { decimal, type Flags, formatHelp, parseCommand } from './flags.js';

export const GENERATE_FLAGS = {
  model: {
    type: 'string',
    env: 'QWEN3_SERVE_MODEL',
    defaultText: 'the demo model',
    help: 'Export or checkpoint directory',
    schema: z.string().optional(),
  },
  prompt: { type: 'string', help: 'The user message (or raw text with --raw)', schema: z.string({ error: 'is required' }) },
  raw: { type: 'boolean', help: 'Send the prompt as is, without the chat template', schema: z.boolean() },
  thinking: { type: 'string', default: 'on', help: 'Qwen3 thinking: on or off', schema: z.enum(['on', 'off']) },
  'max-tokens': { type: 'string', default: '256', help: 'Tokens to generate at most', schema: decimal.pipe(z.number().int().min(1)) },
  temperature: {
    type: 'string',
    defaultText: 'generation_config.json',
    help: 'Sampling temperature (0 = greedy)',
    schema: decimal.pipe(z.number().min(0).max(2)).optional(),
  },
  'top-p': {
    type: 'string',
    defaultText: 'generation_config.json',
    help: 'Nucleus sampling mass',
    schema: decimal.pipe(z.number().gt(0).max(1)).optional(),
  },
  'top-k': {
    type: 'string',
    defaultText: 'generation_config.json',
    help: 'Sample among the k most likely tokens',
    schema: decimal.pipe(z.number().int().min(-1)).optional(),
  },
  seed: { type: 'string', help: 'Seed for reproducible sampling', schema: decimal.pipe(z.number().int()).optional() },
  device: { type: 'string', env: 'QWEN3_SERVE_DEVICE', default: 'auto', help: 'auto, cuda or cpu', schema: z.enum(['auto', 'cuda', 'cpu']) },
  threads: {
    type: 'string',
    env: 'QWEN3_SERVE_THREADS',
    defaultText: 'all cores',
    help: "ONNX Runtime's intra-op threads",
    schema: decimal.pipe(z.number().int().min(1)).optional(),
  },
  dtype: {
    type: 'string',
    env: 'QWEN3_SERVE_DTYPE',
    defaultText: 'fp32 on CPU, fp16 on CUDA',
    help: 'Weights when exporting a checkpoint: fp32, fp16 or int4',
    schema: z.enum(['fp32', 'fp16', 'int4']).optional(),
  },
  'cache-dir': { type: 'string', env: 'QWEN3_SERVE_CACHE', help: 'Export cache directory', schema: z.string().optional() },
} satisfies Flags;

export const GENERATE_HELP = formatHelp(
  'qwen3-serve generate --prompt "…" [--model DIR] [--max-tokens N] [--temperature T] [--seed S]',
  'Generates from a prompt in the terminal, streaming the text as it comes (no HTTP server).',
  GENERATE_FLAGS,
);

export async function generateCommand(argv: string[]): Promise<void> {
  const o = parseCommand(GENERATE_FLAGS, argv, GENERATE_HELP);
  if (!o) return;
  const target = resolveExportTarget(o.device, o.dtype, cudaUsable());
  const resolved = await resolveModel({
    model: o.model,
    cacheDir: o['cache-dir'] ?? defaultCacheDir(),
    dtype: target.dtype,
    layout: 'fast',
    device: target.device,
    progress: createProgress(),
    log: (m) => process.stderr.write(`${m}\n`),
  });
  if (resolved.demo) process.stderr.write('note: no --model given; the demo model has random weights and writes noise.\n');
  const engine = await Engine.start({
    modelDir: resolved.exportDir,
    device: o.device,
    threads: o.threads ?? availableParallelism(),
    maxNumSeqs: 1,
    maxNumBatchedTokens: 512,
    maxQueue: 1,
    maxModelLen: null,
    kvCacheMemory: 0.25,
  });
  try {
    const tokenizer = QwenTokenizer.fromDir(resolved.exportDir);
    const { files } = tokenizer;
    const gen = readGenerationConfig(resolved.exportDir);
    const defaults = samplingDefaults(gen);
    const text = o.raw
      ? o.prompt
      : ChatTemplate.fromTokenizerConfig(files.config).render([{ role: 'user', content: o.prompt }], { enableThinking: o.thinking === 'on' });
    const promptIds = tokenizer.encode(text);
    const started = performance.now();
    let first = 0;
    let count = 0;
    for await (const ev of engine.generate({
      requestId: 'cli',
      promptIds,
      maxTokens: Math.min(o['max-tokens'], engine.info!.limits.maxModelLen - promptIds.length),
      stopTokenIds: gen.eosTokenIds,
      stop: [],
      ignoreEos: false,
      skipSpecialTokens: true,
      sampling: {
        ...defaults,
        temperature: o.temperature ?? defaults.temperature,
        topP: o['top-p'] ?? defaults.topP,
        topK: o['top-k'] ?? defaults.topK,
        seed: o.seed ?? null,
      },
    })) {
      if (count === 0 && ev.tokenIds.length > 0) first = performance.now();
      count += ev.tokenIds.length;
      process.stdout.write(ev.text);
    }
    const end = performance.now();
    const rate = count > 1 ? ((count - 1) / ((end - first) / 1000)).toFixed(1) : '-';
    process.stderr.write(
      `\n[${promptIds.length} prompt tokens, ${count} generated; first token ${((first - started) / 1000).toFixed(2)} s, ${rate} tokens/s]\n`,
    );
  } finally {
    await engine.close();
  }
}
