import { existsSync, readFileSync } from 'node:fs';
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
  /**
   * Positions the model encodes, so the longest context: max_position_embeddings, or
   * original_max_position_embeddings × factor when rope scaling extends it (as vLLM derives it).
   */
  maxPositionEmbeddings: number;
  attentionBias: boolean;
  /** Static RoPE scaling from config.json (Qwen3 documents YaRN for contexts past 32,768). */
  ropeScaling: RopeScaling | null;
  /** Mixture-of-experts MLPs (model_type qwen3_moe); null for dense Qwen3. */
  moe: MoeConfig | null;
}

/** A Qwen3-MoE checkpoint's experts: which layers route, and how. */
export interface MoeConfig {
  numExperts: number;
  /** Experts each token is routed to (num_experts_per_tok). */
  topK: number;
  /** Width of each expert's gated MLP (moe_intermediate_size). */
  expertIntermediateSize: number;
  /** Renormalise the top-k routing weights to sum to 1 (norm_topk_prob). */
  normTopkProb: boolean;
  /** Layers whose MLP is the sparse expert block; the others keep a dense MLP of intermediate_size. */
  sparseLayers: number[];
}

export const moeConfigSchema = z.object({
  numExperts: z.number().int(),
  topK: z.number().int(),
  expertIntermediateSize: z.number().int(),
  normTopkProb: z.boolean(),
  sparseLayers: z.array(z.number().int()),
});

/**
 * RoPE scaling that is fixed at export: the rotary tables change, nothing else. One
 * schema for the parsed config and the export manifest that records it.
 */
export const ropeScalingSchema = z.union([
  z.object({ type: z.literal('linear'), factor: z.number() }),
  z.object({
    type: z.literal('yarn'),
    factor: z.number(),
    /** The context the model was trained at: where interpolation starts. */
    originalMaxPositionEmbeddings: z.number().int(),
    /** Multiplies cos and sin (so scores by its square): 0.1·ln(factor) + 1 unless given. */
    attentionFactor: z.number(),
    betaFast: z.number(),
    betaSlow: z.number(),
    /** Round the correction range outward to whole dimensions (transformers' default). */
    truncate: z.boolean(),
  }),
]);

export type RopeScaling = z.infer<typeof ropeScalingSchema>;

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
  rope_scaling: z.record(z.string(), z.unknown()).nullable().optional(),
  // transformers v5 writes rope_theta and the scaling together under rope_parameters.
  rope_parameters: z.record(z.string(), z.unknown()).nullable().optional(),
  // Sliding-window attention is off in every Qwen3 checkpoint; on, it would change which keys each query sees.
  use_sliding_window: z.boolean().optional(),
  // transformers v5 lists each layer's attention kind; only full attention is Qwen3's.
  layer_types: z.array(z.string()).optional(),
});

const rawMoeSchema = z.object({
  num_experts: positiveInt,
  num_experts_per_tok: positiveInt,
  moe_intermediate_size: positiveInt,
  // transformers' Qwen3MoeConfig defaults: no renormalisation, every layer sparse, none forced dense.
  norm_topk_prob: z.boolean().optional(),
  decoder_sparse_step: positiveInt.optional(),
  mlp_only_layers: z.array(z.number().int().nonnegative()).optional(),
  // Qwen2-MoE's always-on shared expert: Qwen3-MoE has none, and a checkpoint with one computes more than we would.
  shared_expert_intermediate_size: z.number().int().nonnegative().optional(),
});

const rawRopeScalingSchema = z.object({
  rope_type: z.string().optional(),
  type: z.string().optional(),
  rope_theta: z.number().positive().optional(),
  factor: z.number().positive().optional(),
  original_max_position_embeddings: positiveInt.optional(),
  attention_factor: z.number().positive().optional(),
  mscale: z.number().optional(),
  mscale_all_dim: z.number().optional(),
  beta_fast: z.number().positive().optional(),
  beta_slow: z.number().positive().optional(),
  truncate: z.boolean().optional(),
});

/** transformers' YaRN attention scale for a factor (1 when not extending). */
function yarnMscale(factor: number, mscale = 1): number {
  return factor <= 1 ? 1 : 0.1 * mscale * Math.log(factor) + 1;
}

/**
 * Reads rope_scaling (or rope_parameters): static kinds become a RopeScaling, the rest a
 * clear error. Dynamic NTK is refused: its frequencies change with the sequence length,
 * which a KV cache written at earlier lengths cannot follow.
 */
function parseRopeScaling(raw: Record<string, unknown>, maxPositions: number, source: string): RopeScaling | null {
  const parsed = rawRopeScalingSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ModelFormatError(`${source}: rope_scaling.${issue.path.join('.')}: ${issue.message}`);
  }
  const r = parsed.data;
  const kind = r.rope_type ?? r.type ?? 'default';
  if (kind === 'default') return null;
  const factor = r.factor;
  if (factor === undefined) throw new ModelFormatError(`${source}: rope_scaling of type ${JSON.stringify(kind)} needs a factor.`);
  if (kind === 'linear') return { type: 'linear', factor };
  if (kind === 'yarn') {
    const attentionFactor =
      r.attention_factor ?? (r.mscale && r.mscale_all_dim ? yarnMscale(factor, r.mscale) / yarnMscale(factor, r.mscale_all_dim) : yarnMscale(factor));
    return {
      type: 'yarn',
      factor,
      originalMaxPositionEmbeddings: r.original_max_position_embeddings ?? maxPositions,
      attentionFactor,
      betaFast: r.beta_fast ?? 32,
      betaSlow: r.beta_slow ?? 1,
      truncate: r.truncate ?? true,
    };
  }
  throw new ModelFormatError(
    `${source}: rope_scaling type ${JSON.stringify(kind)} is not supported (supported: yarn and linear, which are fixed at export; dynamic scaling changes with the sequence length).`,
  );
}

const SUPPORTED = ['qwen3', 'qwen3_moe'];

/** Layers with the expert block: those not in mlp_only_layers whose number (from 1) is a multiple of decoder_sparse_step. */
export function moeSparseLayers(numLayers: number, decoderSparseStep: number, mlpOnlyLayers: number[]): number[] {
  return Array.from({ length: numLayers }, (_, l) => l).filter((l) => !mlpOnlyLayers.includes(l) && (l + 1) % decoderSparseStep === 0);
}

/** The expert block of a qwen3_moe config, checked; the layers that route follow transformers' Qwen3MoeDecoderLayer. */
function parseMoe(raw: unknown, numLayers: number, source: string): MoeConfig {
  const parsed = rawMoeSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ModelFormatError(`${source}: field ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const m = parsed.data;
  if (m.shared_expert_intermediate_size) {
    throw new ModelFormatError(
      `${source}: shared_expert_intermediate_size ${m.shared_expert_intermediate_size} is not supported (Qwen3-MoE has no shared expert).`,
    );
  }
  if (m.num_experts_per_tok > m.num_experts) {
    throw new ModelFormatError(`${source}: num_experts_per_tok (${m.num_experts_per_tok}) is more than num_experts (${m.num_experts}).`);
  }
  const bad = (m.mlp_only_layers ?? []).find((l) => l >= numLayers);
  if (bad !== undefined) throw new ModelFormatError(`${source}: mlp_only_layers names layer ${bad}, but the model has ${numLayers} layers.`);
  const sparseLayers = moeSparseLayers(numLayers, m.decoder_sparse_step ?? 1, m.mlp_only_layers ?? []);
  return {
    numExperts: m.num_experts,
    topK: m.num_experts_per_tok,
    expertIntermediateSize: m.moe_intermediate_size,
    normTopkProb: m.norm_topk_prob ?? false,
    sparseLayers,
  };
}

export function parseQwen3Config(raw: unknown, source = 'config.json'): Qwen3Config {
  const modelType = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>).model_type : undefined;
  if (modelType === undefined) {
    throw new ModelFormatError(`${source} has no model_type; expected "qwen3" or "qwen3_moe".`);
  }
  if (typeof modelType !== 'string' || !SUPPORTED.includes(modelType)) {
    throw new ModelFormatError(`${source} has model_type ${JSON.stringify(modelType)}; only "qwen3" and "qwen3_moe" are supported.`);
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
  if (c.use_sliding_window) {
    throw new ModelFormatError(`${source}: use_sliding_window true is not supported (Qwen3 attends over the whole context).`);
  }
  const windowed = c.layer_types?.findIndex((t) => t !== 'full_attention') ?? -1;
  if (windowed >= 0) {
    throw new ModelFormatError(
      `${source}: layer_types[${windowed}] is ${JSON.stringify(c.layer_types?.[windowed])}; only "full_attention" is supported.`,
    );
  }
  const maxPositions = c.max_position_embeddings ?? 40960;
  const ropeRaw = c.rope_scaling ?? c.rope_parameters ?? null;
  const ropeScaling = ropeRaw ? parseRopeScaling(ropeRaw, maxPositions, source) : null;
  const ropeTheta = c.rope_theta ?? (typeof c.rope_parameters?.rope_theta === 'number' ? c.rope_parameters.rope_theta : 1_000_000);
  if (!(ropeTheta > 0)) throw new ModelFormatError(`${source}: rope_theta must be positive.`);
  const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % numKvHeads !== 0) {
    throw new ModelFormatError(`${source}: num_attention_heads (${c.num_attention_heads}) is not a multiple of num_key_value_heads (${numKvHeads}).`);
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
    ropeTheta,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    maxPositionEmbeddings:
      ropeScaling?.type === 'yarn'
        ? Math.max(maxPositions, Math.floor(ropeScaling.originalMaxPositionEmbeddings * ropeScaling.factor))
        : ropeScaling?.type === 'linear'
          ? Math.floor(maxPositions * ropeScaling.factor)
          : maxPositions,
    attentionBias: c.attention_bias ?? false,
    ropeScaling,
    moe: modelType === 'qwen3_moe' ? parseMoe(raw, c.num_hidden_layers, source) : null,
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
