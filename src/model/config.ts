import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelFormatError } from '../errors.js';

/** The sizes of a Qwen3 model, read from its config.json and nothing else. */
export interface Qwen3Config {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** Qwen3 sets head_dim explicitly; heads × head_dim need not equal hidden_size. */
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  attentionBias: boolean;
}

const positiveInt = z.number().int().positive();

const rawConfigSchema = z.object({
  model_type: z.string().optional(),
  vocab_size: positiveInt,
  hidden_size: positiveInt,
  intermediate_size: positiveInt,
  num_hidden_layers: positiveInt,
  num_attention_heads: positiveInt,
  num_key_value_heads: positiveInt.optional(),
  head_dim: positiveInt.optional().nullable(),
  rope_theta: z.number().positive().optional(),
  rms_norm_eps: z.number().positive().optional(),
  tie_word_embeddings: z.boolean().optional(),
  max_position_embeddings: positiveInt.optional(),
  attention_bias: z.boolean().optional(),
  hidden_act: z.string().optional(),
  rope_scaling: z.unknown().optional(),
});

const SUPPORTED = 'qwen3';
const NOT_YET: Record<string, string> = {
  qwen3_moe: 'qwen3_moe (mixture-of-experts) checkpoints are not supported yet; only dense Qwen3 (model_type "qwen3") is.',
};

export function parseQwen3Config(raw: unknown, source = 'config.json'): Qwen3Config {
  const modelType = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>).model_type : undefined;
  if (modelType === undefined) {
    throw new ModelFormatError(`${source} has no model_type; expected "${SUPPORTED}".`);
  }
  if (typeof modelType === 'string' && NOT_YET[modelType]) throw new ModelFormatError(`${source}: ${NOT_YET[modelType]}`);
  if (modelType !== SUPPORTED) {
    throw new ModelFormatError(`${source} has model_type ${JSON.stringify(modelType)}; only "${SUPPORTED}" is supported.`);
  }
  const parsed = rawConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ModelFormatError(`${source}: field ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const c = parsed.data;
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') {
    throw new ModelFormatError(`${source}: hidden_act ${JSON.stringify(c.hidden_act)} is not supported (Qwen3 uses "silu").`);
  }
  if (c.rope_scaling !== undefined && c.rope_scaling !== null) {
    throw new ModelFormatError(`${source}: rope_scaling is not supported yet (got ${JSON.stringify(c.rope_scaling)}).`);
  }
  const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % numKvHeads !== 0) {
    throw new ModelFormatError(
      `${source}: num_attention_heads (${c.num_attention_heads}) is not a multiple of num_key_value_heads (${numKvHeads}).`,
    );
  }
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelFormatError(`${source}: head_dim ${headDim} must be an even integer.`);
  }
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads,
    headDim,
    ropeTheta: c.rope_theta ?? 1_000_000,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    maxPositionEmbeddings: c.max_position_embeddings ?? 40960,
    attentionBias: c.attention_bias ?? false,
  };
}

export function readJsonFile(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ModelFormatError(`cannot read ${path}: ${(err as Error).message}`);
  }
}

export function loadQwen3Config(modelDir: string): Qwen3Config {
  const path = join(modelDir, 'config.json');
  if (!existsSync(path)) throw new ModelFormatError(`${modelDir} has no config.json: is it a Hugging Face checkpoint directory?`);
  return parseQwen3Config(readJsonFile(path), path);
}
