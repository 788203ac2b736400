import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelFormatError } from '../errors.js';
import { moeConfigSchema, readJsonFile, ropeScalingSchema } from '../model/config.js';

export const MANIFEST_FILE = 'qwen3-serve.json';
export const MANIFEST_FORMAT = 'qwen3-serve-onnx';
export const MANIFEST_VERSION = 1;
/**
 * Revision of the graphs the exporter writes, raised whenever they change (inputs, fixes):
 * cached exports of checkpoints are redone when theirs differs. 2: the fast graph's
 * `logits_start` input (prompt log-probabilities). 3: in-place attention with one product
 * per query head, the 1/√HD scale in q_norm's weight. 4: int4 CPU MoE experts in one QMoE node.
 * 5: the other MoE exports' experts in one Loop per layer. 6: in-place attention's products
 * with the step's own keys and values without broadcasting.
 */
export const GRAPH_REVISION = 6;

const configSchema = z.object({
  vocabSize: z.number().int(),
  hiddenSize: z.number().int(),
  intermediateSize: z.number().int(),
  numLayers: z.number().int(),
  numHeads: z.number().int(),
  numKvHeads: z.number().int(),
  headDim: z.number().int(),
  ropeTheta: z.number(),
  rmsNormEps: z.number(),
  tieWordEmbeddings: z.boolean(),
  maxPositionEmbeddings: z.number().int(),
  attentionBias: z.boolean(),
  /** Baked into the rotary tables at export; recorded for what the export is. */
  ropeScaling: ropeScalingSchema.nullable().default(null),
  /** Qwen3-MoE's experts (null for dense models and exports before MoE support). */
  moe: moeConfigSchema.nullable().default(null),
});

const manifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  version: z.literal(MANIFEST_VERSION),
  layout: z.enum(['fast', 'standard']),
  /** What the model serves: `embed` graphs output `hidden_states` (the final norm's, per position) instead of logits. */
  task: z.enum(['chat', 'embed', 'rerank']).default('chat'),
  dtype: z.enum(['fp32', 'fp16', 'int4']),
  /** Element type of the KV cache inputs/outputs (activations may differ, see below). */
  kvDtype: z.enum(['float32', 'float16', 'int8']),
  activationDtype: z.enum(['float32', 'float16']),
  /** How the graph attends: in-place MatMul/Softmax over the cache, or com.microsoft GQA. */
  attention: z.enum(['matmul', 'gqa']).default('gqa'),
  /**
   * Order of the fast layout's key cache: 'bhtd' = [batch, kv_heads, capacity, head_dim]
   * (GQA's, and every export before this field existed); 'bhdt' = [batch, kv_heads,
   * head_dim, capacity], which in-place attention multiplies by without a transpose.
   * Values are always 'bhtd'.
   */
  keyLayout: z.enum(['bhtd', 'bhdt']).default('bhtd'),
  device: z.enum(['cpu', 'cuda']),
  /** Model path relative to the export directory; its external data sits beside it. */
  model: z.string(),
  externalData: z.string(),
  config: configSchema,
  io: z.object({
    inputs: z.array(z.string()),
    outputs: z.array(z.string()),
    /** Name templates with `{layer}` for the per-layer KV tensors. */
    pastKey: z.string(),
    pastValue: z.string(),
    newKey: z.string(),
    newValue: z.string(),
    /** int8 caches only: per-token, per-head float32 scales of keys and values. */
    pastKeyScale: z.string().optional(),
    pastValueScale: z.string().optional(),
    newKeyScale: z.string().optional(),
    newValueScale: z.string().optional(),
  }),
  int4: z.object({ blockSize: z.number().int(), accuracyLevel: z.number().int() }).nullable(),
  source: z.object({
    files: z.array(z.object({ name: z.string(), bytes: z.number(), sha256: z.string(), mtimeMs: z.number().optional() })),
  }),
  /** `graphRevision` is absent from exports before it existed (revision 1). */
  exporter: z.object({ name: z.string(), version: z.string(), graphRevision: z.number().int().default(1) }),
});

export type Manifest = z.infer<typeof manifestSchema>;

/** The graph output the runtime reads, and its width per position. */
export function graphOutput(m: Manifest): { name: 'logits' | 'hidden_states'; width: number } {
  return m.task === 'embed' ? { name: 'hidden_states', width: m.config.hiddenSize } : { name: 'logits', width: m.config.vocabSize };
}

export function ioName(template: string, layer: number): string {
  return template.replace('{layer}', String(layer));
}

export function isExportDir(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE));
}

export function readManifest(dir: string): Manifest {
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) throw new ModelFormatError(`${dir} has no ${MANIFEST_FILE}: not a qwen3-serve export.`);
  const parsed = manifestSchema.safeParse(readJsonFile(path));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ModelFormatError(`${path}: ${issue.path.join('.')}: ${issue.message} (re-export the model).`);
  }
  return parsed.data;
}
