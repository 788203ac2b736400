import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { freemem } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import type { ModelSpec } from '../serving/model_registry.js';
import { SERVE_FLAGS, type ServeConfig } from './serve_flags.js';

/** Settings a model of a models file may set for itself; the others are the server's. */
export const PER_MODEL_SETTINGS = [
  'dtype',
  'kv-dtype',
  'device',
  'layout',
  'task',
  'threads',
  'max-model-len',
  'max-num-seqs',
  'max-num-batched-tokens',
  'max-queue',
  'kv-cache-memory',
  'prefix-cache-memory',
  'no-prefix-caching',
] as const;

/** One model of a server of several: its spec for the registry and the settings it loads with. */
export interface ConfiguredModel {
  spec: ModelSpec;
  /** The serve settings with this model's own applied (`model` is this model alone). */
  config: ServeConfig;
}

const ALIAS = /^([A-Za-z0-9][\w.:-]*)=(.+)$/;

/** Whether the server serves several models: more than one `--model`, an `alias=`, or a models file. */
export function isMultiModel(config: ServeConfig): boolean {
  const models = config.model ?? [];
  return config['models-config'] !== undefined || models.length > 1 || models.some((m) => ALIAS.test(m) && !existsSync(m));
}

/** The name a model is served under without an alias: as resolveModel names it (directory or repo id). */
function defaultName(source: string): string {
  return existsSync(source) ? basename(resolve(source)) : source.split('@')[0];
}

/** Bytes a model is expected to take: its weight files when they are on disk, and its KV cache budget. */
export function estimateBytes(source: string, config: ServeConfig): number {
  const kv = config['kv-cache-memory'];
  let weights = 0;
  if (existsSync(source) && statSync(source).isDirectory()) {
    for (const f of readdirSync(source)) if (/\.(safetensors|onnx|onnx\.data|onnx_data)$/.test(f)) weights += statSync(join(source, f)).size;
  }
  return weights + (kv <= 1 ? kv * freemem() : kv);
}

function withSettings(config: ServeConfig, source: string, settings: Record<string, unknown>, where: string): ServeConfig {
  const out: Record<string, unknown> = { ...config, model: [source] };
  for (const [key, value] of Object.entries(settings)) {
    if (!(PER_MODEL_SETTINGS as readonly string[]).includes(key))
      throw new ConfigError(`${where}: ${JSON.stringify(key)} is not a per-model setting (those are: ${PER_MODEL_SETTINGS.join(', ')}).`);
    const flag = SERVE_FLAGS[key as (typeof PER_MODEL_SETTINGS)[number]];
    const parsed = flag.schema.safeParse(flag.type === 'boolean' ? value === true : String(value));
    if (!parsed.success) throw new ConfigError(`${where}: ${key}: ${parsed.error.issues[0].message}`);
    out[key] = parsed.data;
  }
  return out as ServeConfig;
}

interface FileModel {
  name?: unknown;
  model?: unknown;
  aliases?: unknown;
  preload?: unknown;
  [setting: string]: unknown;
}

/** The models of `--model` (bare or `alias=source`) and of `--models-config`, in that order. */
export async function configuredModels(config: ServeConfig): Promise<ConfiguredModel[]> {
  const out: ConfiguredModel[] = [];
  for (const entry of config.model ?? []) {
    const m = ALIAS.exec(entry);
    const [name, source] = m && !existsSync(entry) ? [m[1], m[2]] : [defaultName(entry), entry];
    const cfg = { ...config, model: [source] };
    out.push({ spec: { name, aliases: [], preload: false, estimatedBytes: estimateBytes(source, cfg) }, config: cfg });
  }
  const file = config['models-config'];
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`--models-config ${file}: ${(err as Error).message}`);
    }
    // yaml is loaded only for a models file (docs/dependencies.md).
    const { parse } = await import('yaml');
    let doc: { models?: unknown };
    try {
      doc = (parse(text) ?? {}) as { models?: unknown };
    } catch (err) {
      throw new ConfigError(`--models-config ${file}: ${(err as Error).message}`);
    }
    const list: FileModel[] = Array.isArray(doc.models)
      ? (doc.models as FileModel[])
      : doc.models && typeof doc.models === 'object'
        ? Object.entries(doc.models as Record<string, FileModel>).map(([name, m]) => ({ ...m, name }))
        : [];
    if (list.length === 0) throw new ConfigError(`--models-config ${file}: expected a "models" list or map.`);
    for (const [i, m] of list.entries()) {
      const where = `--models-config ${file}: models[${typeof m.name === 'string' ? m.name : i}]`;
      if (typeof m.model !== 'string' || m.model === '') throw new ConfigError(`${where}: "model" (a path or Hub repo id) is required.`);
      const { name, model, aliases, preload, ...settings } = m;
      const aliasList = aliases === undefined ? [] : Array.isArray(aliases) ? aliases.map(String) : [String(aliases)];
      const cfg = withSettings(config, model, settings, where);
      out.push({
        spec: {
          name: typeof name === 'string' ? name : defaultName(model),
          aliases: aliasList,
          preload: preload === true,
          estimatedBytes: estimateBytes(model, cfg),
        },
        config: cfg,
      });
    }
  }
  // Requests name a model by its name or an alias: each must be one model's.
  const seen = new Set<string>();
  for (const { spec } of out) {
    for (const name of [spec.name, ...spec.aliases]) {
      if (seen.has(name))
        throw new ConfigError(`the model name ${JSON.stringify(name)} is given twice (as a name or an alias); give each model names of its own.`);
      seen.add(name);
    }
  }
  return out;
}
