import { floatsToHalf } from '../model/dtype.js';
import type { SafetensorsCheckpoint } from '../model/safetensors.js';
import { DataType, type ElemType, type GraphBuilder, int } from './onnx_builder.js';
import { quantizeInt4 } from './quantize.js';

export type ExportDtype = 'fp32' | 'fp16' | 'int4';

/** Default MatMulNBits block: weights sharing one scale (ORT's quantizer and GPTQ use 32–128). */
export const INT4_BLOCK_SIZE = 32;

export type WeightProgress = (tensorName: string, bytes: number) => void;

/** A stack of experts' weights in the graph (see WeightEmitter.expertStack). */
export interface ExpertStack {
  weight: string;
  /** int4 only: the blocks' scales. */
  scales?: string;
  n: number;
  k: number;
}

/** [rows, cols] row-major → [cols, rows]. */
export function transpose(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[base + c];
  }
  return out;
}

/**
 * Turns checkpoint tensors into graph initializers and the ops that use them, in the
 * export's dtype: one source tensor is read, converted, written and dropped at a time.
 */
export class WeightEmitter {
  /** Element type of activations, KV cache and float weights. */
  readonly act: ElemType;

  constructor(
    private readonly g: GraphBuilder,
    private readonly ckpt: SafetensorsCheckpoint,
    readonly dtype: ExportDtype,
    activationFp16: boolean,
    private readonly int4: { blockSize: number; accuracyLevel: number },
    private readonly progress: WeightProgress,
  ) {
    this.act = activationFp16 ? DataType.FLOAT16 : DataType.FLOAT;
  }

  private read(name: string, shape: number[]): Float32Array {
    const data = this.ckpt.readFloat32(name, shape);
    const info = this.ckpt.info(name);
    this.progress(name, info.end - info.start);
    return data;
  }

  /** A float tensor in the activation dtype. */
  floatTensor(name: string, dims: number[], data: Float32Array): string {
    return this.act === DataType.FLOAT16
      ? this.g.weight(name, DataType.FLOAT16, dims, floatsToHalf(data))
      : this.g.weight(name, DataType.FLOAT, dims, data);
  }

  /** A float tensor stored as fp16 whatever the activation dtype. */
  halfTensor(name: string, dims: number[], data: Float32Array): string {
    return this.g.weight(name, DataType.FLOAT16, dims, floatsToHalf(data));
  }

  /** A 1-D weight (norm scales, biases). */
  vector(srcName: string, n: number): string {
    return this.floatTensor(srcName, [n], this.read(srcName, [n]));
  }

  /** A 1-D weight multiplied by `factor` (a constant folded into the norm it follows). */
  scaledVector(srcName: string, n: number, factor: number): string {
    const data = this.read(srcName, [n]).map((v) => v * factor);
    return this.floatTensor(`${srcName}.scaled`, [n], data);
  }

  /** Reads a whole [rows, cols] source tensor (e.g. the embedding, used twice when tied). */
  matrix(srcName: string, rows: number, cols: number): Float32Array {
    return this.read(srcName, [rows, cols]);
  }

  /** y = x · Wᵀ for a HF Linear weight W [n, k]; x has any leading dims. */
  linear(x: string, srcName: string, n: number, k: number): string {
    return this.linearFrom(x, srcName, this.read(srcName, [n, k]), n, k);
  }

  /**
   * Several HF Linear layers over the same input as one projection, then split: y_i =
   * x · W_iᵀ for W_i [n_i, k]. One wide MatMulNBits is faster than its parts apart
   * (docs/performance.md), as vLLM's merged QKV / gate-up layers are on GPUs. int4 blocks run along
   * k, so the stacked rows quantize exactly as each weight alone would.
   */
  linearStack(x: string, parts: Array<{ srcName: string; n: number }>, k: number, name: string): string[] {
    if (parts.length === 1) return [this.linear(x, parts[0].srcName, parts[0].n, k)];
    const total = parts.reduce((sum, p) => sum + p.n, 0);
    const stacked = new Float32Array(total * k);
    let row = 0;
    for (const p of parts) {
      stacked.set(this.read(p.srcName, [p.n, k]), row * k);
      row += p.n;
    }
    const y = this.linearFrom(x, name, stacked, total, k);
    const outs = parts.map((p) => `${name}.${p.srcName}`);
    return this.g.node('Split', [y, this.g.int64s(parts.map((p) => p.n))], { outputs: outs, attrs: { axis: int(-1) } });
  }

  /** The int4 settings of this export, or null when its weights are float. */
  get int4Settings(): { blockSize: number; accuracyLevel: number } | null {
    return this.dtype === 'int4' ? this.int4 : null;
  }

  /**
   * One int4 tensor for a stack of experts in com.microsoft QMoE's layout: weights [E, n, k/2]
   * and scales [E, n, k/block], expert e's rows given by `rowsOf(e)` ([n, k] row-major).
   * Quantized one expert at a time, so a layer's experts never sit in memory as floats together.
   */
  int4Experts(name: string, experts: number, n: number, k: number, rowsOf: (e: number) => Float32Array): { weight: string; scales: string } {
    const { packed, scales, blocks } = this.stackInt4(experts, n, k, rowsOf);
    return {
      weight: this.g.weight(`${name}.qweight`, DataType.UINT8, [experts, n, k / 2], packed),
      scales: this.g.weight(`${name}.scales`, DataType.FLOAT, [experts, n, blocks], scales),
    };
  }

  /** Experts' [n, k] rows quantized one expert at a time into one buffer of blocks and one of scales. */
  private stackInt4(experts: number, n: number, k: number, rowsOf: (e: number) => Float32Array) {
    const { blockSize } = this.int4;
    const blocks = Math.ceil(k / blockSize);
    const per = n * blocks * (blockSize / 2);
    const packed = new Uint8Array(experts * per);
    const scales = new Float32Array(experts * n * blocks);
    for (let e = 0; e < experts; e++) {
      const q = quantizeInt4(rowsOf(e), n, k, blockSize);
      packed.set(q.packed, e * per);
      scales.set(q.scales, e * n * blocks);
    }
    return { packed, scales, blocks };
  }

  /**
   * Experts' HF Linear weights [n, k] stacked so that a Gather by expert index gives one expert's
   * operand: float [E, k, n] (transposed, as MatMul takes it) or int4 MatMulNBits blocks
   * [E, n, blocks, block/2] with scales [E, n, blocks]. Written one expert at a time.
   */
  expertStack(name: string, experts: number, n: number, k: number, rowsOf: (e: number) => Float32Array): ExpertStack {
    if (this.dtype === 'int4') {
      const { packed, scales, blocks } = this.stackInt4(experts, n, k, rowsOf);
      return {
        weight: this.g.weight(`${name}.qweight`, DataType.UINT8, [experts, n, blocks, this.int4.blockSize / 2], packed),
        scales: this.floatTensor(`${name}.scales`, [experts, n, blocks], scales),
        n,
        k,
      };
    }
    const half = this.act === DataType.FLOAT16;
    const data = half ? new Uint16Array(experts * n * k) : new Float32Array(experts * n * k);
    for (let e = 0; e < experts; e++) {
      const t = transpose(rowsOf(e), n, k);
      data.set(half ? floatsToHalf(t) : t, e * n * k);
    }
    return { weight: this.g.weight(name, half ? DataType.FLOAT16 : DataType.FLOAT, [experts, k, n], data), n, k };
  }

  /** x · W_eᵀ inside a subgraph `gb`, for the expert whose index `e` holds (a scalar). */
  expertLinear(gb: GraphBuilder, x: string, stack: ExpertStack, e: string): string {
    const pick = (t: string) => gb.op('Gather', [t, e], { axis: int(0) });
    if (!stack.scales) {
      // A row of zeros below the rows: MatMul with a weight that is not an initializer takes
      // another kernel for one row than for several, so a lone row's bits would differ.
      const padded = gb.op('MatMul', [gb.op('Pad', [x, gb.int64s([0, 0, 1, 0])]), pick(stack.weight)]);
      return gb.op('Slice', [padded, gb.int64s([0]), gb.op('Shape', [x], { end: int(1) })]);
    }
    const { blockSize, accuracyLevel } = this.int4;
    return gb.op(
      'MatMulNBits',
      [x, pick(stack.weight), pick(stack.scales)],
      { K: int(stack.k), N: int(stack.n), bits: int(4), block_size: int(blockSize), accuracy_level: int(accuracyLevel) },
      'com.microsoft',
    );
  }

  linearFrom(x: string, name: string, w: Float32Array, n: number, k: number): string {
    if (this.dtype === 'int4') {
      const { blockSize, accuracyLevel } = this.int4;
      const q = quantizeInt4(w, n, k, blockSize);
      const b = this.g.weight(`${name}.qweight`, DataType.UINT8, [n, q.blocksPerRow, blockSize / 2], q.packed);
      const s = this.floatTensor(`${name}.scales`, [n, q.blocksPerRow], q.scales);
      return this.g.op(
        'MatMulNBits',
        [x, b, s],
        { K: int(k), N: int(n), bits: int(4), block_size: int(blockSize), accuracy_level: int(accuracyLevel) },
        'com.microsoft',
      );
    }
    const wt = this.floatTensor(name, [k, n], transpose(w, n, k));
    return this.g.op('MatMul', [x, wt]);
  }
}
