import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { Engine } from '../engine/engine.js';
import { defaultCacheDir, resolveModel } from '../engine/model_source.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { DEFAULT_SAMPLING } from '../runtime/sampler.js';
import { ChatTemplate } from '../text/chat_template.js';
import { readTokenizerFiles, QwenTokenizer } from '../text/tokenizer.js';
import { createProgress } from '../util/progress.js';
import { formatHelp, parseCommand, type FlagSpec } from './flags.js';

export const GENERATE_FLAGS: FlagSpec[] = [
  { name: 'model', type: 'string', env: 'QWEN3_SERVE_MODEL', help: 'Export or checkpoint directory (none: the demo model)' },
  { name: 'prompt', type: 'string', help: 'The user message (or raw text with --raw)' },
  { name: 'raw', type: 'boolean', help: 'Send the prompt as is, without the chat template' },
  { name: 'thinking', type: 'string', default: 'on', help: 'Qwen3 thinking: on or off' },
  { name: 'max-tokens', type: 'string', default: '256', help: 'Tokens to generate at most' },
  { name: 'temperature', type: 'string', default: 'generation_config.json', help: 'Sampling temperature (0 = greedy)' },
  { name: 'top-p', type: 'string', help: 'Nucleus sampling mass' },
  { name: 'top-k', type: 'string', help: 'Sample among the k most likely tokens' },
  { name: 'seed', type: 'string', help: 'Seed for reproducible sampling' },
  { name: 'device', type: 'string', env: 'QWEN3_SERVE_DEVICE', default: 'auto', help: 'auto, cuda or cpu' },
  { name: 'threads', type: 'string', env: 'QWEN3_SERVE_THREADS', help: "ONNX Runtime's intra-op threads" },
  { name: 'dtype', type: 'string', env: 'QWEN3_SERVE_DTYPE', help: 'Weights when exporting a checkpoint: fp32, fp16 or int4' },
  { name: 'cache-dir', type: 'string', env: 'QWEN3_SERVE_CACHE', help: 'Export cache directory' },
];

const num = z.string().regex(/^-?\d+(\.\d+)?$/, 'expected a number').transform(Number);
const schema = z.object({
  model: z.string().optional(),
  prompt: z.string({ error: 'is required' }),
  raw: z.boolean().default(false),
  thinking: z.enum(['on', 'off']).default('on'),
  'max-tokens': num.pipe(z.number().int().min(1)).default(256),
  temperature: num.pipe(z.number().min(0).max(2)).optional(),
  'top-p': num.pipe(z.number().gt(0).max(1)).optional(),
  'top-k': num.pipe(z.number().int().min(-1)).optional(),
  seed: num.pipe(z.number().int()).optional(),
  device: z.enum(['auto', 'cuda', 'cpu']).default('auto'),
  threads: num.pipe(z.number().int().min(1)).optional(),
  dtype: z.enum(['fp32', 'fp16', 'int4']).optional(),
  'cache-dir': z.string().optional(),
});

export const GENERATE_HELP = formatHelp(
  'qwen3-serve generate --prompt "…" [--model DIR] [--max-tokens N] [--temperature T] [--seed S]',
  'Generates from a prompt in the terminal, streaming the text as it comes (no HTTP server).',
  GENERATE_FLAGS,
);

export async function generateCommand(argv: string[]): Promise<void> {
  const o = parseCommand(GENERATE_FLAGS, schema, argv, GENERATE_HELP);
  if (!o) return;
  const dtype = o.dtype ?? (o.device === 'cuda' ? 'fp16' : 'fp32');
  const resolved = await resolveModel({
    model: o.model,
    cacheDir: o['cache-dir'] ?? defaultCacheDir(),
    dtype,
    layout: 'fast',
    device: dtype === 'fp16' ? 'cuda' : 'cpu',
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
    const files = readTokenizerFiles(resolved.exportDir);
    const tokenizer = new QwenTokenizer(files);
    const gen = readGenerationConfig(resolved.exportDir);
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
        ...DEFAULT_SAMPLING,
        temperature: o.temperature ?? gen.temperature ?? 1,
        topP: o['top-p'] ?? gen.topP ?? 1,
        topK: o['top-k'] ?? gen.topK ?? 0,
        seed: o.seed ?? null,
      },
    })) {
      if (count === 0 && ev.tokenIds.length > 0) first = performance.now();
      count += ev.tokenIds.length;
      process.stdout.write(ev.text);
    }
    const end = performance.now();
    const rate = count > 1 ? ((count - 1) / ((end - first) / 1000)).toFixed(1) : '-';
    process.stderr.write(`\n[${promptIds.length} prompt tokens, ${count} generated; first token ${((first - started) / 1000).toFixed(2)} s, ${rate} tokens/s]\n`);
  } finally {
    await engine.close();
  }
}
