import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { ConfigError, ModelFormatError } from '../errors.js';
import { loadQwen3Config, type Qwen3Config } from '../model/config.js';
import { SafetensorsCheckpoint } from '../model/safetensors.js';
import { detectTask, MODEL_TASKS, type ModelTask } from '../model/task.js';
import { type Progress, silentProgress } from '../util/progress.js';
import { PACKAGE_VERSION } from '../version.js';
import type { GraphIo, Layout } from './graph_io.js';
import { GRAPH_REVISION, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, type Manifest } from './manifest.js';
import { DataType, ExternalDataWriter, GraphBuilder } from './onnx_builder.js';
import { type AttentionKind, buildFastGraph, buildStandardGraph } from './qwen3_graph.js';
import { type ExportDtype, INT4_BLOCK_SIZE, WeightEmitter } from './weights.js';

export const EXPORT_DTYPES = ['fp32', 'fp16', 'int4'] as const;
export const EXPORT_LAYOUTS = ['fast', 'standard'] as const;
export const EXPORT_DEVICES = ['cpu', 'cuda'] as const;

export interface ExportOptions {
  modelDir: string;
  outDir: string;
  dtype?: ExportDtype;
  layout?: Layout;
  /** The device the graph is meant for: CUDA's GQA needs fp16 activations. */
  device?: 'cpu' | 'cuda';
  force?: boolean;
  /** Fast layout attention: in-place MatMul/Softmax (CPU default) or ONNX Runtime's GQA (CUDA default). */
  attention?: AttentionKind;
  /** KV cache element type of the fast layout (default: fp16 for int4 and fp16 exports, else fp32). */
  /** Fast layout KV cache: fp16, fp32, or int8 (per-token scales; CPU in-place attention only). */
  kvDtype?: 'fp16' | 'fp32' | 'int8';
  /** MatMulNBits accuracy_level: 4 computes with int8 activations (fast on CPU), 0 in float. */
  int4AccuracyLevel?: number;
  /** int4: weights per scale along the input dimension (a power of two, 16–256). */
  int4BlockSize?: number;
  /** What the model is for (default: what the checkpoint says, src/model/task.ts); `embed` graphs output the last hidden state. */
  task?: ModelTask;
  progress?: Progress;
}

/** Files copied beside the graph so an export directory is self-contained. */
const REQUIRED_FILES = ['config.json', 'tokenizer.json'];
const OPTIONAL_FILES = [
  'tokenizer_config.json',
  'chat_template.jinja',
  'generation_config.json',
  'special_tokens_map.json',
  'vocab.json',
  'merges.txt',
];

/** Every tensor the graph reads, with the shape config.json implies. */
export function expectedTensors(cfg: Qwen3Config, task: ModelTask = 'chat'): Map<string, number[]> {
  const { hiddenSize: H, numHeads: NH, numKvHeads: KVH, headDim: HD, intermediateSize: I, vocabSize: V } = cfg;
  const m = new Map<string, number[]>();
  m.set('model.embed_tokens.weight', [V, H]);
  m.set('model.norm.weight', [H]);
  // An embedding model has no head (Qwen3-Embedding ships none).
  if (!cfg.tieWordEmbeddings && task !== 'embed') m.set('lm_head.weight', [V, H]);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, [H]);
    m.set(`${p}.post_attention_layernorm.weight`, [H]);
    m.set(`${p}.self_attn.q_proj.weight`, [NH * HD, H]);
    m.set(`${p}.self_attn.k_proj.weight`, [KVH * HD, H]);
    m.set(`${p}.self_attn.v_proj.weight`, [KVH * HD, H]);
    m.set(`${p}.self_attn.o_proj.weight`, [H, NH * HD]);
    m.set(`${p}.self_attn.q_norm.weight`, [HD]);
    m.set(`${p}.self_attn.k_norm.weight`, [HD]);
    if (cfg.attentionBias) {
      m.set(`${p}.self_attn.q_proj.bias`, [NH * HD]);
      m.set(`${p}.self_attn.k_proj.bias`, [KVH * HD]);
      m.set(`${p}.self_attn.v_proj.bias`, [KVH * HD]);
    }
    if (cfg.moe?.sparseLayers.includes(l)) {
      const { numExperts: E, expertIntermediateSize: EI } = cfg.moe;
      m.set(`${p}.mlp.gate.weight`, [E, H]);
      for (let e = 0; e < E; e++) {
        m.set(`${p}.mlp.experts.${e}.gate_proj.weight`, [EI, H]);
        m.set(`${p}.mlp.experts.${e}.up_proj.weight`, [EI, H]);
        m.set(`${p}.mlp.experts.${e}.down_proj.weight`, [H, EI]);
      }
      continue;
    }
    m.set(`${p}.mlp.gate_proj.weight`, [I, H]);
    m.set(`${p}.mlp.up_proj.weight`, [I, H]);
    m.set(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  return m;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Identity of the source checkpoint: the cache re-exports when any of these change. */
export async function sourceFingerprint(modelDir: string, weightFiles: string[]): Promise<Manifest['source']['files']> {
  const names = [...REQUIRED_FILES, ...OPTIONAL_FILES.filter((f) => existsSync(join(modelDir, f)))];
  const files = [...names.map((n) => join(modelDir, n)), ...weightFiles];
  const idx = join(modelDir, 'model.safetensors.index.json');
  if (existsSync(idx)) files.push(idx);
  const out: Manifest['source']['files'] = [];
  for (const f of files) {
    const st = statSync(f);
    out.push({ name: relative(modelDir, f), bytes: st.size, sha256: await sha256File(f), mtimeMs: st.mtimeMs });
  }
  return out;
}

type ValidOptions = Required<Omit<ExportOptions, 'progress' | 'int4AccuracyLevel' | 'int4BlockSize' | 'task'>> & {
  int4: { blockSize: number; accuracyLevel: number };
};

function validateOptions(o: ExportOptions): ValidOptions {
  const dtype = o.dtype ?? 'fp32';
  const layout = o.layout ?? 'fast';
  const device = o.device ?? 'cpu';
  if (!(EXPORT_DTYPES as readonly string[]).includes(dtype)) {
    throw new ConfigError(`unknown dtype ${JSON.stringify(dtype)}; expected one of ${EXPORT_DTYPES.join(', ')}.`);
  }
  if (!(EXPORT_LAYOUTS as readonly string[]).includes(layout)) {
    throw new ConfigError(`unknown layout ${JSON.stringify(layout)}; expected one of ${EXPORT_LAYOUTS.join(', ')}.`);
  }
  if (!(EXPORT_DEVICES as readonly string[]).includes(device)) {
    throw new ConfigError(`unknown device ${JSON.stringify(device)}; expected cpu or cuda.`);
  }
  if (device === 'cuda' && dtype === 'fp32' && layout === 'fast') {
    throw new ConfigError('GroupQueryAttention on CUDA runs in fp16 only: export with --dtype fp16 or int4 for --device cuda.');
  }
  const activationFp16 = dtype === 'fp16' || device === 'cuda';
  const kvDtype = o.kvDtype ?? (activationFp16 || dtype === 'int4' ? 'fp16' : 'fp32');
  if (!['fp16', 'fp32', 'int8'].includes(kvDtype))
    throw new ConfigError(`unknown KV cache dtype ${JSON.stringify(kvDtype)}; expected fp16, fp32 or int8.`);
  const attention = o.attention ?? (device === 'cuda' ? 'gqa' : 'matmul');
  if (kvDtype === 'int8' && (layout !== 'fast' || attention !== 'matmul' || activationFp16)) {
    throw new ConfigError('--kv-dtype int8 needs the fast layout with in-place attention on the CPU, and fp32 or int4 weights.');
  }
  if (layout === 'standard' && kvDtype === 'fp16' && !activationFp16 && o.kvDtype === 'fp16') {
    throw new ConfigError('the standard layout keeps its KV cache in the activation type; --kv-dtype fp16 needs the fast layout or fp16 weights.');
  }
  const level = o.int4AccuracyLevel ?? 4;
  if (![0, 1, 2, 3, 4].includes(level)) throw new ConfigError(`int4 accuracy level must be 0-4, got ${level}.`);
  if (o.int4BlockSize !== undefined && dtype !== 'int4')
    throw new ConfigError(`a block size applies to int4 weights only (this export is ${dtype}).`);
  const blockSize = o.int4BlockSize ?? INT4_BLOCK_SIZE;
  if (![16, 32, 64, 128, 256].includes(blockSize)) throw new ConfigError(`int4 block size must be 16, 32, 64, 128 or 256, got ${blockSize}.`);
  return {
    modelDir: resolve(o.modelDir),
    outDir: resolve(o.outDir),
    dtype,
    layout,
    device,
    force: o.force ?? false,
    int4: { blockSize, accuracyLevel: level },
    attention,
    // The standard layout's KV follows its activations (what transformers.js expects).
    kvDtype: layout === 'standard' ? (activationFp16 ? 'fp16' : 'fp32') : (kvDtype as 'fp16' | 'fp32' | 'int8'),
  };
}

/**
 * Exports a Hugging Face Qwen3 checkpoint to an ONNX directory the runtime loads.
 * Everything is written into a sibling temporary directory and renamed into place at the
 * end, so a failure never leaves a half-written export behind.
 */
export async function exportModel(options: ExportOptions): Promise<Manifest> {
  const o = validateOptions(options);
  const progress = options.progress ?? silentProgress;
  if (!existsSync(o.modelDir) || !statSync(o.modelDir).isDirectory()) {
    throw new ModelFormatError(`model directory ${o.modelDir} does not exist.`);
  }
  if (existsSync(o.outDir) && !o.force) {
    throw new ConfigError(`output directory ${o.outDir} exists; pass --force to replace it.`);
  }
  const cfg = loadQwen3Config(o.modelDir);
  const task = options.task ?? detectTask(o.modelDir).task;
  if (!MODEL_TASKS.includes(task)) throw new ConfigError(`unknown task ${JSON.stringify(task)}; expected ${MODEL_TASKS.join(', ')}.`);
  for (const f of REQUIRED_FILES) {
    if (!existsSync(join(o.modelDir, f))) throw new ModelFormatError(`${o.modelDir} is missing ${f}.`);
  }
  const ckpt = new SafetensorsCheckpoint(o.modelDir);
  // Check every tensor before writing anything: a missing or mis-shaped tensor is
  // reported in a second, not after minutes of export.
  for (const [name, shape] of expectedTensors(cfg, task)) ckpt.info(name, shape);

  const activationFp16 = o.dtype === 'fp16' || o.device === 'cuda';
  const kvType = { fp16: DataType.FLOAT16, fp32: DataType.FLOAT, int8: DataType.INT8 }[o.kvDtype];
  const tmp = join(dirname(o.outDir), `.${basename(o.outDir)}.partial-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(dirname(o.outDir), { recursive: true });
  const modelRel = o.layout === 'fast' ? 'model.onnx' : 'onnx/model.onnx';
  // transformers.js looks for `<name>.onnx_data`; our own layout uses the ONNX default name.
  const dataRel = o.layout === 'fast' ? 'model.onnx.data' : 'onnx/model.onnx_data';
  mkdirSync(dirname(join(tmp, modelRel)), { recursive: true });
  try {
    const writer = new ExternalDataWriter(join(tmp, dataRel), basename(dataRel));
    let io: GraphIo;
    const total = [...expectedTensors(cfg, task).keys()].reduce((n, name) => n + ckpt.info(name).end - ckpt.info(name).start, 0);
    progress.start(total, `export ${o.dtype}/${o.layout}`);
    try {
      const g = new GraphBuilder(writer);
      const w = new WeightEmitter(g, ckpt, o.dtype, activationFp16, o.int4, (name, bytes) => progress.advance(bytes, name));
      const output = task === 'embed' ? 'hidden' : 'logits';
      io = o.layout === 'fast' ? buildFastGraph(g, w, cfg, kvType, o.attention, output) : buildStandardGraph(g, w, cfg, output);
      writeFileSync(join(tmp, modelRel), g.encode({ '': 17, 'com.microsoft': 1 }, 'qwen3-serve'));
    } finally {
      writer.close();
      progress.stop();
    }
    for (const f of [...REQUIRED_FILES, ...OPTIONAL_FILES]) {
      if (existsSync(join(o.modelDir, f))) copyFileSync(join(o.modelDir, f), join(tmp, f));
    }
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      layout: o.layout,
      task,
      dtype: o.dtype,
      kvDtype: ({ fp16: 'float16', fp32: 'float32', int8: 'int8' } as const)[o.kvDtype],
      activationDtype: activationFp16 ? 'float16' : 'float32',
      attention: o.layout === 'fast' ? o.attention : 'matmul',
      keyLayout: o.layout === 'fast' && o.attention === 'matmul' ? 'bhdt' : 'bhtd',
      device: o.device,
      model: modelRel,
      externalData: dataRel,
      config: cfg,
      io,
      int4: o.dtype === 'int4' ? o.int4 : null,
      source: { files: await sourceFingerprint(o.modelDir, ckpt.files) },
      exporter: { name: 'qwen3-serve', version: PACKAGE_VERSION, graphRevision: GRAPH_REVISION },
    };
    writeFileSync(join(tmp, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    if (existsSync(o.outDir)) rmSync(o.outDir, { recursive: true, force: true });
    renameSync(tmp, o.outDir);
    return manifest;
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}
