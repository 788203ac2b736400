import { z } from 'zod';
import { EXPORT_DEVICES, EXPORT_DTYPES, EXPORT_LAYOUTS, exportModel } from '../export/exporter.js';
import { createProgress } from '../util/progress.js';
import { type Flags, formatHelp, parseCommand } from './flags.js';

export const EXPORT_FLAGS = {
  model: {
    type: 'string',
    help: 'Hugging Face Qwen3 checkpoint directory (config.json, *.safetensors, tokenizer files)',
    schema: z.string({ error: 'is required' }).min(1),
  },
  out: { type: 'string', help: 'Output directory for the ONNX export', schema: z.string({ error: 'is required' }).min(1) },
  dtype: { type: 'string', default: 'fp32', help: 'Weight type: fp32, fp16 or int4 (MatMulNBits)', schema: z.enum(EXPORT_DTYPES) },
  'block-size': {
    type: 'string',
    defaultText: '32',
    help: 'int4: weights per scale, 16, 32, 64, 128 or 256 (larger is smaller and faster, less exact)',
    schema: z.enum(['16', '32', '64', '128', '256']).transform(Number).optional(),
  },
  layout: {
    type: 'string',
    default: 'fast',
    help: 'fast (our KV-cache contract) or standard (optimum / transformers.js)',
    schema: z.enum(EXPORT_LAYOUTS),
  },
  device: { type: 'string', default: 'cpu', help: 'Target device: cpu, or cuda (fp16 activations)', schema: z.enum(EXPORT_DEVICES) },
  attention: {
    type: 'string',
    defaultText: 'matmul for cpu, gqa for cuda',
    help: 'Fast layout attention: matmul (reads the KV cache in place) or gqa (com.microsoft GroupQueryAttention)',
    schema: z.enum(['matmul', 'gqa']).optional(),
  },
  'kv-dtype': {
    type: 'string',
    defaultText: 'fp16 for int4/fp16/cuda, else fp32',
    help: 'Fast layout KV cache type: fp32, fp16 (half the memory), or int8 (a quarter; per-token scales, CPU only)',
    schema: z.enum(['fp16', 'fp32', 'int8']).optional(),
  },
  force: { type: 'boolean', help: 'Replace the output directory if it exists', schema: z.boolean() },
} satisfies Flags;

export const EXPORT_HELP = formatHelp(
  'qwen3-serve export --model <checkpoint dir> --out <dir> [--dtype fp32|fp16|int4] [--layout fast|standard] [--device cpu|cuda] [--kv-dtype fp16|fp32|int8] [--block-size N] [--force]',
  'Exports a Hugging Face Qwen3 checkpoint to an ONNX directory the server loads (no Python needed).',
  EXPORT_FLAGS,
);

export async function exportCommand(argv: string[]): Promise<void> {
  const o = parseCommand(EXPORT_FLAGS, argv, EXPORT_HELP);
  if (!o) return;
  const started = Date.now();
  const manifest = await exportModel({
    modelDir: o.model,
    outDir: o.out,
    dtype: o.dtype,
    layout: o.layout,
    device: o.device,
    force: o.force,
    attention: o.attention,
    kvDtype: o['kv-dtype'],
    int4BlockSize: o['block-size'],
    progress: createProgress(),
  });
  const c = manifest.config;
  process.stderr.write(
    `exported ${c.numLayers} layers${c.moe ? ` (${c.moe.sparseLayers.length} with ${c.moe.numExperts} experts, top ${c.moe.topK})` : ''}, hidden ${c.hiddenSize}, vocab ${c.vocabSize} as ${o.dtype}/${o.layout} to ${o.out} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
}
