import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { ConfigError, ModelFormatError } from '../errors.js';
import { loadQwen3Config } from '../model/config.js';
import { downloadFromHub, HUB_REPO_ID } from '../model/hub.js';
import { writeRandomCheckpoint } from '../model/random_checkpoint.js';
import { detectTask, type ModelTask } from '../model/task.js';
import { availableBytes, checkFits } from '../runtime/memory_plan.js';
import type { Progress } from '../util/progress.js';
import { estimateWeightBytes } from './export_size.js';
import { exportModel } from './exporter.js';
import type { Layout } from './graph_io.js';
import { GRAPH_REVISION, isExportDir, readManifest } from './manifest.js';
import { type ExportDtype, INT4_BLOCK_SIZE } from './weights.js';

export interface ModelSourceOptions {
  /** An export directory, a Hugging Face checkpoint directory, or undefined for the demo model. */
  model: string | undefined;
  cacheDir: string;
  dtype: ExportDtype;
  /** The KV cache's type; absent: the exporter's default for the dtype and device. */
  kvDtype?: 'fp16' | 'fp32' | 'int8';
  layout: Layout;
  device: 'cpu' | 'cuda';
  progress: Progress;
  log: (msg: string) => void;
  /** What to export the checkpoint for; absent: what it says (src/model/task.ts). */
  task?: ModelTask;
}

export interface ResolvedModel {
  /** The export directory the engine loads. */
  exportDir: string;
  /** Default served name. */
  name: string;
  demo: boolean;
}

/**
 * What a checkpoint is exported as for a device choice: the dtype asked, else fp16 for
 * CUDA and fp32 for the CPU; fp16 and int4 exports target CUDA's graph when the device is
 * CUDA or the dtype is fp16, fp32 always the CPU's. `auto` picks CUDA (fp16) when it can
 * run here (`cudaUsable`: its provider is installed and ONNX Runtime lists it), so a GPU
 * host serves from the GPU without being told. One rule for every command.
 */
export function resolveExportTarget(
  device: 'auto' | 'cuda' | 'cpu',
  dtype: ExportDtype | undefined,
  cudaUsable: boolean,
): { dtype: ExportDtype; device: 'cpu' | 'cuda'; note: string | null } {
  const wantsCuda = device === 'cuda' || (device === 'auto' && cudaUsable);
  const d = dtype ?? (wantsCuda ? 'fp16' : 'fp32');
  const cuda = (wantsCuda || d === 'fp16') && d !== 'fp32';
  const note =
    device === 'auto' && dtype === undefined
      ? cudaUsable
        ? 'device auto: the CUDA execution provider is installed, so the checkpoint is exported in fp16 for the GPU'
        : 'device auto: no CUDA execution provider, so the checkpoint is exported in fp32 for the CPU'
      : null;
  return { dtype: d, device: cuda ? 'cuda' : 'cpu', note };
}

export function defaultCacheDir(): string {
  return process.env.QWEN3_SERVE_CACHE || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'qwen3-serve');
}

/** The demo model: a small random-weight Qwen3 with the real tokenizer, built once. */
export const DEMO_SHAPE = {
  hiddenSize: 256,
  intermediateSize: 768,
  numLayers: 4,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 32,
  maxPositionEmbeddings: 40960,
  seed: 20260101,
};
export const DEMO_NAME = 'qwen3-demo-random';

/**
 * Is the export in `dir` still the export of `source` as it is now (sizes and mtimes), by
 * the graphs this version writes?
 */
function exportIsCurrent(dir: string, source: string, task: ModelTask): boolean {
  if (!isExportDir(dir)) return false;
  try {
    const m = readManifest(dir);
    if (m.exporter.graphRevision !== GRAPH_REVISION || m.task !== task) return false;
    return m.source.files.every((f) => {
      const p = join(source, f.name);
      if (!existsSync(p)) return false;
      const st = statSync(p);
      return st.size === f.bytes && (f.mtimeMs === undefined || Math.abs(st.mtimeMs - f.mtimeMs) < 1);
    });
  } catch {
    return false;
  }
}

/**
 * Turns `--model` into an export directory: an export is used as is; a checkpoint is
 * exported once into the cache (reused while its files are unchanged); nothing means the
 * demo model, built deterministically at first start.
 */
export async function resolveModel(o: ModelSourceOptions): Promise<ResolvedModel> {
  if (o.model === undefined) {
    const src = join(o.cacheDir, 'checkpoints', DEMO_NAME);
    // A demo built by an earlier version with another shape is built again.
    if (
      !existsSync(join(src, 'config.json')) ||
      (JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as { max_position_embeddings?: number }).max_position_embeddings !==
        DEMO_SHAPE.maxPositionEmbeddings
    ) {
      o.log(`building the demo model (random weights, real Qwen3 tokenizer) in ${src}`);
      writeRandomCheckpoint(src, DEMO_SHAPE);
    }
    const exportDir = await exportCached(src, DEMO_NAME, o);
    return { exportDir, name: DEMO_NAME, demo: true };
  }
  const dir = resolve(o.model);
  if (existsSync(dir) && statSync(dir).isDirectory()) {
    if (isExportDir(dir)) return { exportDir: dir, name: basename(dir), demo: false };
    if (existsSync(join(dir, 'config.json'))) return { exportDir: await exportCached(dir, basename(dir), o), name: basename(dir), demo: false };
    throw new ModelFormatError(`${dir} is neither a qwen3-serve export nor a Hugging Face checkpoint (no config.json).`);
  }
  if (HUB_REPO_ID.test(o.model)) {
    const [repo, revision] = o.model.split('@');
    let checkpoint: string;
    try {
      checkpoint = await downloadFromHub({
        repo,
        revision,
        cacheDir: join(o.cacheDir, 'hub'),
        endpoint: process.env.HF_ENDPOINT || undefined,
        token: process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN || undefined,
        progress: o.progress,
        log: o.log,
      });
    } catch (err) {
      // A relative path with a typo looks like a repo id: say both readings failed.
      const why = err instanceof ModelFormatError ? err.message : `the Hugging Face Hub could not be reached (${describeFetchError(err)})`;
      throw new ConfigError(`--model ${o.model}: there is no directory ${dir}, and as a Hub repo id: ${why}`);
    }
    return { exportDir: await exportCached(checkpoint, repo.split('/')[1], o), name: repo, demo: false };
  }
  throw new ConfigError(`--model ${o.model}: there is no directory ${dir}, and it is not a Hugging Face repo id (org/name) either.`);
}

/** fetch's TypeError says only "fetch failed"; its cause names the network error. */
function describeFetchError(err: unknown): string {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  return [e.message, e.cause?.code ?? e.cause?.message].filter(Boolean).join(': ');
}

async function exportCached(source: string, name: string, o: ModelSourceOptions): Promise<string> {
  const key = createHash('sha256').update(resolve(source)).digest('hex').slice(0, 12);
  const task = o.task ?? detectTask(source).task;
  // An embedding graph differs (no head): it has an export of its own.
  const kv = o.kvDtype ? `-kv${o.kvDtype}` : '';
  const dir = join(o.cacheDir, 'exports', `${name}-${key}-${o.dtype}${kv}-${o.layout}-${o.device}${task === 'embed' ? '-embed' : ''}`);
  if (exportIsCurrent(dir, source, task)) {
    o.log(`using the cached export ${dir}`);
    return dir;
  }
  // A model that cannot fit is refused now, not after minutes of exporting what could never be served.
  const weights = estimateWeightBytes(loadQwen3Config(source), o.dtype, o.dtype === 'fp16' || o.device === 'cuda', INT4_BLOCK_SIZE);
  checkFits(weights, 0, availableBytes(), o.device);
  o.log(`exporting ${source} to ${dir} (${o.dtype}, ${o.layout} layout, weights about ${Math.ceil(weights / 2 ** 20)} MiB); later starts reuse it`);
  await exportModel({
    modelDir: source,
    outDir: dir,
    dtype: o.dtype,
    ...(o.kvDtype ? { kvDtype: o.kvDtype } : {}),
    layout: o.layout,
    device: o.device,
    force: true,
    progress: o.progress,
    task,
  });
  return dir;
}
