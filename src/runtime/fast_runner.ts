import ort from 'onnxruntime-node';
import { ioName, type Manifest } from '../export/manifest.js';
import { kvArray, type KvArray, type ModelRunner } from './model_runner.js';

/** Capacity grows and shrinks in these steps: GQA's cost grows with capacity (DESIGN.md §3). */
export const CAPACITY_STEP = 64;

/**
 * Runs the fast layout. The KV cache is one buffer per layer and K/V of shape
 * [rows, kvHeads, capacity, headDim] (keys [rows, kvHeads, headDim, capacity] for
 * in-place attention exports, manifest keyLayout 'bhdt'), owned here and fed to every step without a
 * copy; the graph returns only this step's keys and values, which are written in place.
 *
 * Each sequence owns a row and rows stay compact: when a sequence leaves, the last row
 * moves into its place. A batched decode feeds rows [0, R); rows that are still
 * prefilling ride along with a dummy token whose outputs are dropped (GQA never writes
 * into our buffer). The buffer holds R rows × capacity, both resized in steps, so memory
 * follows the work: `slotsFor` tells the scheduler what a set of sequences would take.
 */
export class FastRunner implements ModelRunner {
  readonly vocabSize: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly layers: number;
  /** Keys stored [row, head, head_dim, slot] (manifest keyLayout 'bhdt') instead of [row, head, slot, head_dim]. */
  private readonly keysTransposed: boolean;
  private capacity = CAPACITY_STEP;
  private rows = 0;
  private keys: KvArray[] = [];
  private values: KvArray[] = [];
  private readonly rowOf = new Map<number, number>();
  /** The sequence id in each row [0, count). */
  private readonly idOfRow: number[] = [];
  private readonly rowLength: Int32Array;
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
    this.keysTransposed = manifest.keyLayout === 'bhdt';
    this.rowLength = new Int32Array(maxSequences);
    const names = (t: string) => Array.from({ length: this.layers }, (_, l) => ioName(t, l));
    this.pastKeyNames = names(manifest.io.pastKey);
    this.pastValueNames = names(manifest.io.pastValue);
    this.newKeyNames = names(manifest.io.newKey);
    this.newValueNames = names(manifest.io.newValue);
    this.allocate(1, CAPACITY_STEP);
  }

  private rowSize(cap = this.capacity): number {
    return this.kvHeads * cap * this.headDim;
  }

  private allocate(rows: number, cap: number): void {
    const old = { keys: this.keys, values: this.values, cap: this.capacity };
    this.capacity = cap;
    this.rows = rows;
    const size = rows * this.rowSize(cap);
    this.keys = Array.from({ length: this.layers }, () => kvArray(this.manifest.kvDtype, size));
    this.values = Array.from({ length: this.layers }, () => kvArray(this.manifest.kvDtype, size));
    for (let row = 0; row < this.idOfRow.length; row++) this.copyRow(old, row, row);
  }

  /** Copies the cached prefix of row `from` in `src` to row `to` of the current buffers. */
  private copyRow(src: { keys: KvArray[]; values: KvArray[]; cap: number }, from: number, to: number): void {
    const len = this.rowLength[from];
    if (len === 0 || src.keys.length === 0) return;
    const hd = this.headDim;
    for (let l = 0; l < this.layers; l++) {
      for (let h = 0; h < this.kvHeads; h++) {
        const a = (from * this.kvHeads + h) * src.cap * hd;
        const b = (to * this.kvHeads + h) * this.capacity * hd;
        this.values[l].set(src.values[l].subarray(a, a + len * hd), b);
        if (!this.keysTransposed) {
          this.keys[l].set(src.keys[l].subarray(a, a + len * hd), b);
          continue;
        }
        // Transposed keys: one run of `len` slots per head dimension.
        for (let d = 0; d < hd; d++) {
          const ka = a + d * src.cap;
          this.keys[l].set(src.keys[l].subarray(ka, ka + len), b + d * this.capacity);
        }
      }
    }
  }

  private static bucket(length: number): number {
    return Math.max(CAPACITY_STEP, Math.ceil(length / CAPACITY_STEP) * CAPACITY_STEP);
  }

  /** Token slots the cache occupies for these sequences: rows × the longest one's bucket. */
  slotsFor(lengths: number[]): number {
    if (lengths.length === 0) return 0;
    return lengths.length * FastRunner.bucket(Math.max(...lengths));
  }

  /** Resizes to the rows in use and the capacity bucket `needed` tokens require. */
  private fit(needed: number): void {
    if (needed > this.maxLength) throw new Error(`sequence of ${needed} tokens exceeds the runner's limit of ${this.maxLength}`);
    let longest = needed;
    for (let r = 0; r < this.idOfRow.length; r++) longest = Math.max(longest, this.rowLength[r]);
    const cap = FastRunner.bucket(longest);
    const rows = Math.max(1, this.idOfRow.length);
    // Grow at once; shrink only when a size halves, so allocations do not flap.
    const growCap = cap > this.capacity;
    const growRows = rows > this.rows;
    const shrink = cap * 2 <= this.capacity || rows * 2 <= this.rows;
    if (growCap || growRows || shrink) this.allocate(growRows || shrink ? rows : this.rows, growCap || shrink ? cap : this.capacity);
  }

  addSequence(id: number): void {
    if (this.rowOf.has(id)) throw new Error(`sequence ${id} already has a row`);
    if (this.idOfRow.length >= this.maxSequences) throw new Error(`all ${this.maxSequences} KV rows are in use`);
    const row = this.idOfRow.length;
    this.idOfRow.push(id);
    this.rowLength[row] = 0;
    this.rowOf.set(id, row);
  }

  removeSequence(id: number): void {
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    this.rowOf.delete(id);
    const last = this.idOfRow.length - 1;
    if (row !== last) {
      // Keep rows compact: the last row's cache moves into the hole.
      this.copyRow({ keys: this.keys, values: this.values, cap: this.capacity }, last, row);
      this.rowLength[row] = this.rowLength[last];
      this.idOfRow[row] = this.idOfRow[last];
      this.rowOf.set(this.idOfRow[row], row);
    }
    this.idOfRow.pop();
    this.rowLength[last] = 0;
    if (this.idOfRow.length === 0) this.allocate(1, CAPACITY_STEP);
  }

  fillForBenchmark(id: number, length: number): void {
    const row = this.row(id);
    this.fit(length + 1);
    this.rowLength[row] = length;
  }

  cachedLength(id: number): number {
    return this.rowLength[this.row(id)];
  }

  kvBytes(): number {
    const bytesPer = this.manifest.kvDtype === 'float16' ? 2 : 4;
    return 2 * this.layers * this.rows * this.rowSize() * bytesPer;
  }

  private row(id: number): number {
    const row = this.rowOf.get(id);
    if (row === undefined) throw new Error(`sequence ${id} has no KV row`);
    return row;
  }

  private kvTensor(data: KvArray, rows: number, firstRow: number, transposed: boolean): ort.Tensor {
    const size = this.rowSize();
    const view = data.subarray(firstRow * size, (firstRow + rows) * size);
    const dims = transposed ? [rows, this.kvHeads, this.headDim, this.capacity] : [rows, this.kvHeads, this.capacity, this.headDim];
    return new ort.Tensor(this.manifest.kvDtype, view, dims);
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
      feeds[this.pastKeyNames[l]] = this.kvTensor(this.keys[l], rows, firstRow, this.keysTransposed);
      feeds[this.pastValueNames[l]] = this.kvTensor(this.values[l], rows, firstRow, false);
    }
    return this.session.run(feeds);
  }

  /**
   * Copies this step's keys/values into the cache: values (and 'bhtd' keys) arrive as
   * [rows, kvHeads, seqLen, headDim], 'bhdt' keys as [rows, kvHeads, headDim, seqLen].
   */
  private store(out: ort.InferenceSession.OnnxValueMapType, batchIndex: number, row: number, seqLen: number, at: number): void {
    const hd = this.headDim;
    const cap = this.capacity;
    for (let l = 0; l < this.layers; l++) {
      const nk = out[this.newKeyNames[l]].data as KvArray;
      const nv = out[this.newValueNames[l]].data as KvArray;
      const keys = this.keys[l];
      for (let h = 0; h < this.kvHeads; h++) {
        const from = ((batchIndex * this.kvHeads + h) * seqLen) * hd;
        const to = ((row * this.kvHeads + h) * cap + at) * hd;
        this.values[l].set(nv.subarray(from, from + seqLen * hd), to);
        if (!this.keysTransposed) {
          keys.set(nk.subarray(from, from + seqLen * hd), to);
        } else if (seqLen === 1) {
          // A decode step: one element per head dimension, strided by the capacity.
          const base = (row * this.kvHeads + h) * hd * cap + at;
          for (let d = 0; d < hd; d++) keys[base + d * cap] = nk[from + d];
        } else {
          const base = (row * this.kvHeads + h) * hd * cap + at;
          for (let d = 0; d < hd; d++) keys.set(nk.subarray(from + d * seqLen, from + (d + 1) * seqLen), base + d * cap);
        }
      }
    }
  }

  async prefill(id: number, tokens: number[]): Promise<Float32Array> {
    const row = this.row(id);
    const past = this.rowLength[row];
    const s = tokens.length;
    if (s === 0) throw new Error('prefill needs at least one token');
    this.fit(past + s);
    // GQA takes a multi-token step with a past only at batch 1: the row's own slice.
    const positions = Array.from({ length: s }, (_, i) => past + i);
    const out = await this.run(tokens, positions, [past + s - 1], past + s, 1, row, s);
    this.store(out, 0, row, s, past);
    this.rowLength[row] = past + s;
    return out.logits.data as Float32Array;
  }

  async decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    let longest = 0;
    for (const id of ids) longest = Math.max(longest, this.rowLength[this.row(id)] + 1);
    this.fit(longest);
    const rows = this.idOfRow.length;
    const inputIds = new Array<number>(rows).fill(0);
    const positions = new Array<number>(rows);
    let total = 0;
    for (let r = 0; r < rows; r++) {
      positions[r] = this.rowLength[r];
      total = Math.max(total, this.rowLength[r] + 1);
    }
    ids.forEach((id, i) => {
      inputIds[this.row(id)] = tokens[i];
    });
    // For S = 1, seqlens_k (past + S − 1) equals the position.
    const out = await this.run(inputIds, positions, positions, total, rows, 0, 1);
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
