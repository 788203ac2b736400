import ort from 'onnxruntime-node';
import { ioName, type Manifest } from '../export/manifest.js';
import { kvArray, type KvArray, type ModelRunner } from './model_runner.js';

/** Capacity grows and shrinks in these steps: GQA's cost grows with capacity (DESIGN.md §3). */
export const CAPACITY_STEP = 256;

/**
 * Runs the fast layout. The KV cache is one buffer per layer and K/V of shape
 * [maxSequences, kvHeads, capacity, headDim], owned here and fed to every step without a
 * copy; the graph returns only this step's keys and values, which are written in place.
 *
 * Each sequence owns a row. A batched decode feeds rows [0, R) where R is one past the
 * highest row in use: rows that are free or not decoding this step ride along with a
 * dummy token whose outputs are ignored (GQA never writes into our buffer), so joining
 * or leaving the batch never moves KV data.
 */
export class FastRunner implements ModelRunner {
  readonly vocabSize: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly layers: number;
  private capacity = CAPACITY_STEP;
  private keys: KvArray[] = [];
  private values: KvArray[] = [];
  private readonly rowOf = new Map<number, number>();
  private readonly rowLength: Int32Array;
  private readonly rowUsed: Uint8Array;
  private readonly pastKeyNames: string[];
  private readonly pastValueNames: string[];
  private readonly newKeyNames: string[];
  private readonly newValueNames: string[];

  constructor(
    private readonly session: ort.InferenceSession,
    readonly manifest: Manifest,
    readonly maxSequences: number,
    /** Longest sequence a row may hold; capacity never grows past it. */
    private readonly maxLength: number,
  ) {
    const c = manifest.config;
    this.vocabSize = c.vocabSize;
    this.kvHeads = c.numKvHeads;
    this.headDim = c.headDim;
    this.layers = c.numLayers;
    this.rowLength = new Int32Array(maxSequences);
    this.rowUsed = new Uint8Array(maxSequences);
    const names = (t: string) => Array.from({ length: this.layers }, (_, l) => ioName(t, l));
    this.pastKeyNames = names(manifest.io.pastKey);
    this.pastValueNames = names(manifest.io.pastValue);
    this.newKeyNames = names(manifest.io.newKey);
    this.newValueNames = names(manifest.io.newValue);
    this.allocate(CAPACITY_STEP);
  }

  private rowSize(cap = this.capacity): number {
    return this.kvHeads * cap * this.headDim;
  }

  private allocate(cap: number): void {
    const old = { keys: this.keys, values: this.values, cap: this.capacity };
    this.capacity = cap;
    this.keys = Array.from({ length: this.layers }, () => kvArray(this.manifest.kvDtype, this.maxSequences * this.rowSize(cap)));
    this.values = Array.from({ length: this.layers }, () => kvArray(this.manifest.kvDtype, this.maxSequences * this.rowSize(cap)));
    if (old.keys.length === 0) return;
    const hd = this.headDim;
    for (let row = 0; row < this.maxSequences; row++) {
      const len = this.rowUsed[row] ? this.rowLength[row] : 0;
      if (len === 0) continue;
      for (let l = 0; l < this.layers; l++) {
        for (let h = 0; h < this.kvHeads; h++) {
          const from = ((row * this.kvHeads + h) * old.cap) * hd;
          const to = ((row * this.kvHeads + h) * cap) * hd;
          this.keys[l].set(old.keys[l].subarray(from, from + len * hd), to);
          this.values[l].set(old.values[l].subarray(from, from + len * hd), to);
        }
      }
    }
  }

  /** Re-lays out the cache when the longest row needs another capacity bucket. */
  private fitCapacity(needed: number): void {
    if (needed > this.maxLength) throw new Error(`sequence of ${needed} tokens exceeds the runner's limit of ${this.maxLength}`);
    let longest = needed;
    for (let r = 0; r < this.maxSequences; r++) if (this.rowUsed[r]) longest = Math.max(longest, this.rowLength[r]);
    const bucket = Math.ceil(longest / CAPACITY_STEP) * CAPACITY_STEP;
    // Grow at once; shrink only when the bucket halves, so sizes do not flap.
    if (bucket > this.capacity || bucket * 2 <= this.capacity) this.allocate(Math.max(bucket, CAPACITY_STEP));
  }

  addSequence(id: number): void {
    if (this.rowOf.has(id)) throw new Error(`sequence ${id} already has a row`);
    const row = this.rowUsed.indexOf(0);
    if (row < 0) throw new Error(`all ${this.maxSequences} KV rows are in use`);
    this.rowUsed[row] = 1;
    this.rowLength[row] = 0;
    this.rowOf.set(id, row);
  }

  removeSequence(id: number): void {
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    this.rowOf.delete(id);
    this.rowUsed[row] = 0;
    this.rowLength[row] = 0;
  }

  cachedLength(id: number): number {
    return this.rowLength[this.row(id)];
  }

  kvBytes(): number {
    const bytesPer = this.manifest.kvDtype === 'float16' ? 2 : 4;
    return 2 * this.layers * this.maxSequences * this.rowSize() * bytesPer;
  }

  private row(id: number): number {
    const row = this.rowOf.get(id);
    if (row === undefined) throw new Error(`sequence ${id} has no KV row`);
    return row;
  }

  private kvTensor(data: KvArray, rows: number, firstRow: number): ort.Tensor {
    const size = this.rowSize();
    const view = data.subarray(firstRow * size, (firstRow + rows) * size);
    return new ort.Tensor(this.manifest.kvDtype, view, [rows, this.kvHeads, this.capacity, this.headDim]);
  }

  private async run(
    inputIds: number[],
    positions: number[],
    seqlensK: number[],
    total: number,
    rows: number,
    firstRow: number,
    seqLen: number,
  ): Promise<ort.InferenceSession.OnnxValueMapType> {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(inputIds, BigInt), [rows, seqLen]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(positions, BigInt), [rows, seqLen]),
      seqlens_k: new ort.Tensor('int32', Int32Array.from(seqlensK), [rows]),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(total), []),
    };
    for (let l = 0; l < this.layers; l++) {
      feeds[this.pastKeyNames[l]] = this.kvTensor(this.keys[l], rows, firstRow);
      feeds[this.pastValueNames[l]] = this.kvTensor(this.values[l], rows, firstRow);
    }
    return this.session.run(feeds);
  }

  /** Copies this step's keys/values ([rows, kvHeads, seqLen, headDim]) into the cache. */
  private store(out: ort.InferenceSession.OnnxValueMapType, batchIndex: number, row: number, seqLen: number, at: number): void {
    const hd = this.headDim;
    for (let l = 0; l < this.layers; l++) {
      const nk = out[this.newKeyNames[l]].data as KvArray;
      const nv = out[this.newValueNames[l]].data as KvArray;
      for (let h = 0; h < this.kvHeads; h++) {
        const from = ((batchIndex * this.kvHeads + h) * seqLen) * hd;
        const to = ((row * this.kvHeads + h) * this.capacity + at) * hd;
        this.keys[l].set(nk.subarray(from, from + seqLen * hd), to);
        this.values[l].set(nv.subarray(from, from + seqLen * hd), to);
      }
    }
  }

  async prefill(id: number, tokens: number[]): Promise<Float32Array> {
    const row = this.row(id);
    const past = this.rowLength[row];
    const s = tokens.length;
    if (s === 0) throw new Error('prefill needs at least one token');
    this.fitCapacity(past + s);
    // GQA takes a multi-token step with a past only at batch 1: the row's own slice.
    const positions = Array.from({ length: s }, (_, i) => past + i);
    const out = await this.run(tokens, positions, [past + s - 1], past + s, 1, row, s);
    this.store(out, 0, row, s, past);
    this.rowLength[row] = past + s;
    return out.logits.data as Float32Array;
  }

  async decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    let rows = 0;
    for (const id of ids) rows = Math.max(rows, this.row(id) + 1);
    let longest = 0;
    for (const id of ids) longest = Math.max(longest, this.rowLength[this.row(id)] + 1);
    this.fitCapacity(longest);
    const inputIds = new Array<number>(rows).fill(0);
    const positions = new Array<number>(rows);
    const seqlensK = new Array<number>(rows);
    let total = 0;
    for (let r = 0; r < rows; r++) {
      // Rows that ride along (free or prefilling) attend to their own cached prefix and
      // their outputs are dropped; their length bounds stay inside the buffer.
      const len = this.rowUsed[r] ? Math.min(this.rowLength[r], this.capacity - 1) : 0;
      positions[r] = len;
      seqlensK[r] = len;
      total = Math.max(total, len + 1);
    }
    ids.forEach((id, i) => {
      inputIds[this.row(id)] = tokens[i];
    });
    const out = await this.run(inputIds, positions, seqlensK, total, rows, 0, 1);
    const logits = out.logits.data as Float32Array;
    const result = new Float32Array(ids.length * this.vocabSize);
    ids.forEach((id, i) => {
      const row = this.row(id);
      this.store(out, row, row, 1, this.rowLength[row]);
      this.rowLength[row] += 1;
      result.set(logits.subarray(row * this.vocabSize, (row + 1) * this.vocabSize), i * this.vocabSize);
    });
    return result;
  }
}
