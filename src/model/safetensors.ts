import { closeSync, existsSync, fstatSync, openSync, readdirSync, readSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ModelFormatError } from '../errors.js';
import { readJsonFile } from './config.js';
import { decodeToFloat32, SOURCE_DTYPE_BYTES, type SourceDtype } from './dtype.js';

export interface TensorInfo {
  name: string;
  dtype: SourceDtype;
  shape: number[];
  file: string;
  /** Absolute byte range in `file`. */
  start: number;
  end: number;
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function readExactly(fd: number, length: number, position: number, file: string): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) throw new ModelFormatError(`${file} is truncated: wanted ${length} bytes at offset ${position}.`);
    done += n;
  }
  return buf;
}

/** Reads and validates one safetensors header; the data is read later, tensor by tensor. */
export function readSafetensorsHeader(file: string): TensorInfo[] {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new ModelFormatError(`${file} is truncated (${size} bytes): not a safetensors file.`);
    const headerLen = Number(readExactly(fd, 8, 0, file).readBigUInt64LE(0));
    if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > size) {
      throw new ModelFormatError(`${file} has a header of ${headerLen} bytes but the file holds ${size}: truncated or not safetensors.`);
    }
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(readExactly(fd, headerLen, 8, file).toString('utf8')) as Record<string, unknown>;
    } catch {
      throw new ModelFormatError(`${file} has an unreadable header: not a safetensors file.`);
    }
    const dataStart = 8 + headerLen;
    const out: TensorInfo[] = [];
    for (const [name, value] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const v = value as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
      const dtype = v.dtype as SourceDtype;
      if (!(dtype in SOURCE_DTYPE_BYTES)) {
        throw new ModelFormatError(`${file}: tensor ${name} has dtype ${v.dtype}; supported are F32, F16 and BF16.`);
      }
      const shape = v.shape ?? [];
      const [b, e] = v.data_offsets ?? [0, 0];
      const expected = shape.reduce((a, d) => a * d, 1) * SOURCE_DTYPE_BYTES[dtype];
      if (e - b !== expected) {
        throw new ModelFormatError(`${file}: tensor ${name} has ${e - b} bytes but shape [${shape}] needs ${expected}.`);
      }
      if (dataStart + e > size) {
        throw new ModelFormatError(`${file} is truncated: tensor ${name} ends at byte ${dataStart + e} but the file has ${size} bytes.`);
      }
      out.push({ name, dtype, shape, file, start: dataStart + b, end: dataStart + e });
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/**
 * All tensors of a checkpoint: one model.safetensors, or shards listed by
 * model.safetensors.index.json (or, without an index, every *.safetensors file).
 * Tensor data is read on demand, one tensor at a time, so memory stays bounded.
 */
export class SafetensorsCheckpoint {
  readonly tensors = new Map<string, TensorInfo>();
  readonly files: string[];

  constructor(modelDir: string) {
    const indexPath = join(modelDir, 'model.safetensors.index.json');
    let files: string[];
    if (existsSync(indexPath)) {
      const index = readJsonFile(indexPath) as { weight_map?: Record<string, string> };
      if (!index.weight_map) throw new ModelFormatError(`${indexPath} has no weight_map.`);
      files = [...new Set(Object.values(index.weight_map))].map((f) => join(modelDir, f));
      for (const f of files) {
        if (!existsSync(f)) throw new ModelFormatError(`${indexPath} lists ${basename(f)}, which is missing.`);
      }
    } else {
      files = readdirSync(modelDir)
        .filter((f) => f.endsWith('.safetensors'))
        .sort()
        .map((f) => join(modelDir, f));
    }
    if (files.length === 0) throw new ModelFormatError(`${modelDir} has no *.safetensors weights.`);
    this.files = files;
    for (const f of files) {
      for (const t of readSafetensorsHeader(f)) this.tensors.set(t.name, t);
    }
    // Qwen3-Embedding ships a bare Qwen3Model: its tensors lack the causal LM's `model.` prefix.
    if (!this.tensors.has('model.embed_tokens.weight') && this.tensors.has('embed_tokens.weight')) {
      for (const [name, t] of [...this.tensors]) {
        if (name.startsWith('model.') || name === 'lm_head.weight') continue;
        this.tensors.delete(name);
        this.tensors.set(`model.${name}`, { ...t, name: `model.${name}` });
      }
    }
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string, expectedShape?: number[]): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelFormatError(`checkpoint is missing tensor ${name}.`);
    if (expectedShape && (t.shape.length !== expectedShape.length || t.shape.some((d, i) => d !== expectedShape[i]))) {
      throw new ModelFormatError(`tensor ${name} has shape [${t.shape}] but config.json implies [${expectedShape}].`);
    }
    return t;
  }

  /** Reads one tensor as float32 (bf16/f16 sources are widened exactly). */
  readFloat32(name: string, expectedShape?: number[]): Float32Array {
    const t = this.info(name, expectedShape);
    const fd = openSync(t.file, 'r');
    try {
      return decodeToFloat32(readExactly(fd, t.end - t.start, t.start, t.file), t.dtype);
    } finally {
      closeSync(fd);
    }
  }

  totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.end - t.start;
    return n;
  }
}
