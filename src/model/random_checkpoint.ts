import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '../util/random.js';
import { moeSparseLayers } from './config.js';
import { floatToBf16, floatToHalf } from './dtype.js';

/** The real Qwen3 tokenizer files, shipped with the package. */
export const TOKENIZER_ASSETS = fileURLToPath(new URL('../../../assets/tokenizer/', import.meta.url));

export interface RandomCheckpointOptions {
  vocabSize?: number;
  hiddenSize?: number;
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  headDim?: number;
  tieWordEmbeddings?: boolean;
  maxPositionEmbeddings?: number;
  ropeTheta?: number;
  /** config.json's rope_scaling as written (e.g. Qwen3's documented YaRN block). */
  ropeScaling?: Record<string, unknown> | null;
  /** q/k/v projection biases (config attention_bias), as Qwen2-style checkpoints have. */
  attentionBias?: boolean;
  /** Element type of the safetensors files. */
  dtype?: 'bf16' | 'f16' | 'f32';
  /** Split the weights over this many files with an index (Hugging Face's sharded layout). */
  shards?: number;
  seed?: number;
  /** Standard deviation of the projection weights (trained Qwen3 models are near 0.02). */
  std?: number;
  /**
   * What the checkpoint is laid out as: a causal LM (default); Qwen3-Embedding's bare
   * Qwen3Model (no `model.` prefix, no lm_head) with its sentence-transformers files and
   * end-of-text post-processor; or Qwen3-Reranker's causal LM with a `text-ranking` model card.
   */
  kind?: 'causal' | 'embedding' | 'reranker';
  /** Values for chosen tensors instead of random ones (e.g. hand-built test models). */
  override?: (name: string, shape: number[]) => Float32Array | null;
  /** A Qwen3-MoE checkpoint (model_type qwen3_moe) with these experts. */
  moe?: RandomMoeOptions | null;
}

/** config.json's expert keys, as Qwen3MoeConfig names them. */
export interface RandomMoeOptions {
  numExperts: number;
  topK: number;
  expertIntermediateSize: number;
  normTopkProb: boolean;
  decoderSparseStep?: number;
  mlpOnlyLayers?: number[];
}

/** The 0.6B shape (Qwen3-0.6B's config), for benchmarks. */
export const QWEN3_0_6B_SHAPE: RandomCheckpointOptions = {
  vocabSize: 151936,
  hiddenSize: 1024,
  intermediateSize: 3072,
  numLayers: 28,
  numHeads: 16,
  numKvHeads: 8,
  headDim: 128,
  tieWordEmbeddings: true,
  maxPositionEmbeddings: 40960,
};

/** Qwen3-30B-A3B's layer shape (48 layers in the real model; callers choose fewer to fit a disk). */
export const QWEN3_30B_A3B_SHAPE: RandomCheckpointOptions = {
  vocabSize: 151936,
  hiddenSize: 2048,
  intermediateSize: 6144,
  numLayers: 48,
  numHeads: 32,
  numKvHeads: 4,
  headDim: 128,
  tieWordEmbeddings: false,
  maxPositionEmbeddings: 40960,
  moe: { numExperts: 128, topK: 8, expertIntermediateSize: 768, normTopkProb: true },
};

function normal(rand: () => number): number {
  // Box–Muller; 1 - u keeps log away from 0.
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

interface PlannedTensor {
  name: string;
  shape: number[];
  /** Generates value i of the tensor. */
  kind: 'weight' | 'norm';
}

function plan(o: Required<Omit<RandomCheckpointOptions, 'shards' | 'seed' | 'std' | 'dtype' | 'override' | 'kind'>>): PlannedTensor[] {
  const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD, intermediateSize: I, vocabSize: V } = o;
  const t: PlannedTensor[] = [{ name: 'model.embed_tokens.weight', shape: [V, H], kind: 'weight' }];
  const sparse = o.moe ? moeSparseLayers(o.numLayers, o.moe.decoderSparseStep ?? 1, o.moe.mlpOnlyLayers ?? []) : [];
  /** Hugging Face's names: a router `mlp.gate` and `mlp.experts.N.*` projections on sparse layers. */
  const mlp = (p: string, l: number): PlannedTensor[] => {
    if (!o.moe || !sparse.includes(l)) {
      return [
        { name: `${p}.mlp.gate_proj.weight`, shape: [I, H], kind: 'weight' },
        { name: `${p}.mlp.up_proj.weight`, shape: [I, H], kind: 'weight' },
        { name: `${p}.mlp.down_proj.weight`, shape: [H, I], kind: 'weight' },
      ];
    }
    const EI = o.moe.expertIntermediateSize;
    const experts: PlannedTensor[] = [{ name: `${p}.mlp.gate.weight`, shape: [o.moe.numExperts, H], kind: 'weight' }];
    for (let e = 0; e < o.moe.numExperts; e++) {
      experts.push(
        { name: `${p}.mlp.experts.${e}.gate_proj.weight`, shape: [EI, H], kind: 'weight' },
        { name: `${p}.mlp.experts.${e}.up_proj.weight`, shape: [EI, H], kind: 'weight' },
        { name: `${p}.mlp.experts.${e}.down_proj.weight`, shape: [H, EI], kind: 'weight' },
      );
    }
    return experts;
  };
  for (let l = 0; l < o.numLayers; l++) {
    const p = `model.layers.${l}`;
    t.push(
      { name: `${p}.input_layernorm.weight`, shape: [H], kind: 'norm' },
      { name: `${p}.self_attn.q_proj.weight`, shape: [NH * HD, H], kind: 'weight' },
      { name: `${p}.self_attn.k_proj.weight`, shape: [KVH * HD, H], kind: 'weight' },
      { name: `${p}.self_attn.v_proj.weight`, shape: [KVH * HD, H], kind: 'weight' },
      ...(o.attentionBias
        ? ([
            { name: `${p}.self_attn.q_proj.bias`, shape: [NH * HD], kind: 'weight' },
            { name: `${p}.self_attn.k_proj.bias`, shape: [KVH * HD], kind: 'weight' },
            { name: `${p}.self_attn.v_proj.bias`, shape: [KVH * HD], kind: 'weight' },
          ] as PlannedTensor[])
        : []),
      { name: `${p}.self_attn.o_proj.weight`, shape: [H, NH * HD], kind: 'weight' },
      { name: `${p}.self_attn.q_norm.weight`, shape: [HD], kind: 'norm' },
      { name: `${p}.self_attn.k_norm.weight`, shape: [HD], kind: 'norm' },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H], kind: 'norm' },
      ...mlp(p, l),
    );
  }
  t.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });
  if (!o.tieWordEmbeddings) t.push({ name: 'lm_head.weight', shape: [V, H], kind: 'weight' });
  return t;
}

const ST_DTYPE = { bf16: 'BF16', f16: 'F16', f32: 'F32' } as const;

/**
 * Writes a Qwen3 checkpoint with deterministic random weights in Hugging Face layout
 * (config.json, safetensors, the real tokenizer), for tests, benchmarks and the demo
 * model. Tensors are generated and written one at a time: memory stays small even for
 * the 0.6B shape.
 */
export function writeRandomCheckpoint(dir: string, options: RandomCheckpointOptions = {}): void {
  const o = {
    vocabSize: 151936,
    hiddenSize: 64,
    intermediateSize: 128,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    tieWordEmbeddings: true,
    maxPositionEmbeddings: 40960,
    ropeTheta: 1_000_000,
    attentionBias: false,
    ropeScaling: null,
    moe: null,
    ...options,
  };
  const dtype = options.dtype ?? 'bf16';
  const shards = options.shards ?? 1;
  const std = options.std ?? 0.02;
  const rand = mulberry32(options.seed ?? 1234);
  const bytesPer = dtype === 'f32' ? 4 : 2;
  mkdirSync(dir, { recursive: true });

  const kind = options.kind ?? 'causal';
  // The bare model's names lose the prefix; random values are drawn in the same order, so
  // an embedding checkpoint has the weights of the causal one with the same seed.
  const tensors = plan(o)
    .filter((t) => kind !== 'embedding' || t.name !== 'lm_head.weight')
    .map((t) => (kind === 'embedding' ? { ...t, name: t.name.replace(/^model\./, '') } : t));
  const perShard = Math.ceil(tensors.length / shards);
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let s = 0; s < shards; s++) {
    const group = tensors.slice(s * perShard, (s + 1) * perShard);
    const file = shards === 1 ? 'model.safetensors' : `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    let offset = 0;
    for (const t of group) {
      const n = t.shape.reduce((a, d) => a * d, 1) * bytesPer;
      header[t.name] = { dtype: ST_DTYPE[dtype], shape: t.shape, data_offsets: [offset, offset + n] };
      offset += n;
      weightMap[t.name] = file;
    }
    totalSize += offset;
    let headerText = JSON.stringify(header);
    headerText += ' '.repeat((8 - (headerText.length % 8)) % 8);
    const fd = openSync(join(dir, file), 'w');
    try {
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(headerText.length));
      writeSync(fd, len);
      writeSync(fd, headerText);
      for (const t of group) {
        const n = t.shape.reduce((a, d) => a * d, 1);
        const buf = new Uint8Array(n * bytesPer);
        // A DataView, not Buffer's write methods, whose argument checks cost more than the values here.
        const view = new DataView(buf.buffer);
        const given = options.override?.(t.name, t.shape) ?? null;
        for (let i = 0; i < n; i++) {
          const v = given ? given[i] : t.kind === 'norm' ? 1 + 0.1 * normal(rand) : std * normal(rand);
          if (dtype === 'f32') view.setFloat32(i * 4, v, true);
          else view.setUint16(i * 2, dtype === 'bf16' ? floatToBf16(v) : floatToHalf(v), true);
        }
        writeSync(fd, buf);
      }
    } finally {
      closeSync(fd);
    }
  }
  if (shards > 1) {
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  }
  const moe = o.moe
    ? {
        num_experts: o.moe.numExperts,
        num_experts_per_tok: o.moe.topK,
        moe_intermediate_size: o.moe.expertIntermediateSize,
        norm_topk_prob: o.moe.normTopkProb,
        decoder_sparse_step: o.moe.decoderSparseStep ?? 1,
        mlp_only_layers: o.moe.mlpOnlyLayers ?? [],
        router_aux_loss_coef: 0.001,
        output_router_logits: false,
      }
    : {};
  const config = {
    architectures: [o.moe ? 'Qwen3MoeForCausalLM' : 'Qwen3ForCausalLM'],
    model_type: o.moe ? 'qwen3_moe' : 'qwen3',
    vocab_size: o.vocabSize,
    hidden_size: o.hiddenSize,
    intermediate_size: o.intermediateSize,
    num_hidden_layers: o.numLayers,
    num_attention_heads: o.numHeads,
    num_key_value_heads: o.numKvHeads,
    head_dim: o.headDim,
    hidden_act: 'silu',
    max_position_embeddings: o.maxPositionEmbeddings,
    rms_norm_eps: 1e-6,
    rope_theta: o.ropeTheta,
    rope_scaling: o.ropeScaling ?? null,
    tie_word_embeddings: o.tieWordEmbeddings,
    attention_bias: o.attentionBias,
    torch_dtype: { bf16: 'bfloat16', f16: 'float16', f32: 'float32' }[dtype],
    bos_token_id: 151643,
    eos_token_id: 151645,
    use_sliding_window: false,
    ...moe,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  writeFileSync(
    join(dir, 'generation_config.json'),
    JSON.stringify(
      { bos_token_id: 151643, eos_token_id: [151645, 151643], pad_token_id: 151643, do_sample: true, temperature: 0.6, top_p: 0.95, top_k: 20 },
      null,
      2,
    ),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(TOKENIZER_ASSETS, f), join(dir, f));
  if (kind === 'embedding') writeEmbeddingFiles(dir);
  if (kind === 'reranker')
    writeFileSync(join(dir, 'README.md'), '---\nlicense: apache-2.0\npipeline_tag: text-ranking\n---\n# A random Qwen3 reranker\n');
}

/** What Qwen3-Embedding ships beside its weights: sentence-transformers' modules and a tokenizer that appends `<|endoftext|>`. */
function writeEmbeddingFiles(dir: string): void {
  const modules = [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    { idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' },
  ];
  writeFileSync(join(dir, 'modules.json'), JSON.stringify(modules, null, 2));
  mkdirSync(join(dir, '1_Pooling'), { recursive: true });
  writeFileSync(
    join(dir, '1_Pooling', 'config.json'),
    JSON.stringify({ word_embedding_dimension: 0, pooling_mode_cls_token: false, pooling_mode_mean_tokens: false, pooling_mode_lasttoken: true }),
  );
  const tokenizer = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const eot = '<|endoftext|>';
  tokenizer.post_processor = {
    type: 'TemplateProcessing',
    single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: eot, type_id: 0 } }],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: eot, type_id: 1 } }],
    special_tokens: { [eot]: { id: eot, ids: [151643], tokens: [eot] } },
  };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
}
