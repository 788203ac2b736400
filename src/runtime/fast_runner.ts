import ort from 'onnxruntime-node';
import { ioName, type Manifest } from '../export/manifest.js';
import { BYTES, kvArray, type KvArray, type KvElementType, type ModelRunner } from './model_runner.js';

/** Capacity grows and shrinks in these steps: GQA's cost grows with capacity (docs/architecture.md, KV cache). */
export const CAPACITY_STEP = 64;

/**
 * One cached tensor per layer: keys, values, or (int8 caches) their per-token scales.
 * `width` elements per token and head; `transposed` stores [rows, heads, width, capacity]
 * instead of [rows, heads, capacity, width]. Width-1 planes are fed as [rows, heads, capacity].
 */
interface Plane {
  readonly past: string[];
  readonly fresh: string[];
  readonly type: KvElementType;
  readonly width: number;
  readonly transposed: boolean;
  data: KvArray[];
}

/**
 * Runs the fast layout. The KV cache is one buffer per layer and K/V of shape
 * [rows, kvHeads, capacity, headDim] (keys [rows, kvHeads, headDim, capacity] for
 * in-place attention exports, manifest keyLayout 'bhdt'), owned here and fed to every step without a
 * copy; the graph returns only this step's keys and values, which are written in place.
 *
 * Each sequence owns a row and rows stay compact: when a sequence leaves, the last row
 * moves into its place. A batched decode feeds rows [0, R) up to its last decoding row;
 * rows in between that are still prefilling ride along with a dummy token whose outputs
 * are dropped (GQA never writes into our buffer). The buffer holds R rows × capacity,
 * both resized in steps, so memory follows the work: `slotsFor` tells the scheduler what
 * a set of sequences would take.
 */
/** `logits_start` values, made once: ONNX Runtime only reads its inputs. */
const LAST_POSITION = new ort.Tensor('int64', BigInt64Array.of(-1n), [1]);
const EVERY_POSITION = new ort.Tensor('int64', BigInt64Array.of(0n), [1]);

export class FastRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly promptLogits: boolean;
  private readonly kvHeads: number;
  private readonly layers: number;
  private capacity = CAPACITY_STEP;
  private rows = 0;
  private readonly planes: Plane[];
  private readonly rowOf = new Map<number, number>();
  /** The sequence id in each row [0, count). */
  private readonly idOfRow: number[] = [];
  private readonly rowLength: Int32Array;
  /** One row of logits, kept for reordering rows in place (see gatherRows). */
  private spareRow: Float32Array | null = null;

  constructor(
    private readonly session: ort.InferenceSession,
    readonly manifest: Manifest,
    readonly maxSequences: number,
    /** Longest sequence a row may hold; capacity never grows past it. */
    private readonly maxLength: number,
    /**
     * The scheduler's KV budget in token slots (rows × capacity never exceeds it). Given,
     * each buffer is allocated once at that size: memory is only committed as it is first
     * written, and every later resize happens in place.
     */
    private readonly budgetTokens = 0,
  ) {
    const c = manifest.config;
    this.vocabSize = c.vocabSize;
    this.promptLogits = manifest.io.inputs.includes('logits_start');
    this.kvHeads = c.numKvHeads;
    this.layers = c.numLayers;
    this.rowLength = new Int32Array(maxSequences);
    const names = (t: string) => Array.from({ length: this.layers }, (_, l) => ioName(t, l));
    const io = manifest.io;
    const plane = (past: string, fresh: string, type: KvElementType, width: number, transposed: boolean): Plane => ({
      past: names(past),
      fresh: names(fresh),
      type,
      width,
      transposed,
      data: [],
    });
    this.planes = [
      plane(io.pastKey, io.newKey, manifest.kvDtype, c.headDim, manifest.keyLayout === 'bhdt'),
      plane(io.pastValue, io.newValue, manifest.kvDtype, c.headDim, false),
    ];
    if (manifest.kvDtype === 'int8') {
      if (!io.pastKeyScale || !io.pastValueScale || !io.newKeyScale || !io.newValueScale) {
        throw new Error('an int8 KV export must name its scale tensors (re-export the model)');
      }
      this.planes.push(plane(io.pastKeyScale, io.newKeyScale, 'float32', 1, false), plane(io.pastValueScale, io.newValueScale, 'float32', 1, false));
    }
    this.allocate(1, CAPACITY_STEP);
  }

  /**
   * Writes every byte of the KV buffers, so the OS maps their pages now rather than in
   * the middle of a step that first reaches them, stalling every stream of that step.
   * Returns the bytes written.
   */
  prefault(): number {
    let bytes = 0;
    for (const p of this.planes) {
      for (const buf of p.data) {
        buf.fill(0);
        bytes += buf.byteLength;
      }
    }
    return bytes;
  }

  private planeSize(p: Plane, rows: number, cap: number): number {
    return rows * this.kvHeads * cap * p.width;
  }

  /**
   * Lays the cache out as `rows` × `cap`. A buffer that is big enough is re-laid out in
   * place: first touches of fresh memory are expensive (page faults), so a full
   * reallocation at every capacity step stalled every stream for seconds at long
   * contexts (docs/performance.md). Buffers are sized for the whole budget (else
   * twice what is needed), untouched memory costing nothing, and kept for the process's
   * life like ONNX Runtime's arena (dropping them when idle made V8 account gigabytes of
   * external memory per request, and its extra garbage collections showed as stalls).
   * Buffers are replaced layer by layer, so a reallocation needs one layer of
   * slack, not a second copy of the whole cache.
   */
  private allocate(rows: number, cap: number): void {
    const oldCap = this.capacity;
    const live = this.idOfRow.length;
    this.capacity = cap;
    this.rows = rows;
    for (const p of this.planes) {
      const needed = this.planeSize(p, rows, cap);
      const size = Math.max(2 * needed, this.kvHeads * p.width * this.budgetTokens);
      for (let l = 0; l < this.layers; l++) {
        const src = p.data[l];
        if (src && src.length >= needed) {
          this.restride(p, src, oldCap, live);
          continue;
        }
        p.data[l] = kvArray(p.type, size);
        if (src) for (let row = 0; row < live; row++) this.copyRow(p, src, oldCap, l, row, row);
      }
    }
  }

  /**
   * Moves every live row's entries from capacity `oldCap` to the current capacity within
   * one buffer. Each run of slots starts at (line index) × capacity; growing moves runs
   * up, so going from the last run down never overwrites one not yet moved (shrinking
   * goes the other way). Slots past a row's length keep stale values: finite numbers the
   * length mask hides.
   */
  private restride(p: Plane, buf: KvArray, oldCap: number, live: number): void {
    const cap = this.capacity;
    if (cap === oldCap) return;
    const { perRow, unit } = this.runs(p);
    const move = (row: number, j: number) => {
      const len = this.rowLength[row] * unit;
      if (len === 0) return;
      const line = row * perRow + j;
      const from = line * oldCap * unit;
      buf.copyWithin(line * cap * unit, from, from + len);
    };
    if (cap > oldCap) {
      for (let row = live - 1; row >= 0; row--) for (let j = perRow - 1; j >= 0; j--) move(row, j);
    } else {
      for (let row = 0; row < live; row++) for (let j = 0; j < perRow; j++) move(row, j);
    }
  }

  /**
   * A plane is a sequence of runs, each `capacity` slots of `unit` elements: per (row,
   * head) for [rows, heads, capacity, width], per (row, head, d) for the transposed order.
   */
  private runs(p: Plane): { perRow: number; unit: number } {
    return p.transposed ? { perRow: this.kvHeads * p.width, unit: 1 } : { perRow: this.kvHeads, unit: p.width };
  }

  /**
   * Copies the cached prefix (`length` tokens, row `from`'s own by default) of row `from`
   * of `src` (capacity `srcCap`) to row `to` of the plane's layer `l`.
   */
  private copyRow(p: Plane, src: KvArray, srcCap: number, l: number, from: number, to: number, length = this.rowLength[from]): void {
    const { perRow, unit } = this.runs(p);
    const len = length * unit;
    if (len === 0) return;
    const dst = p.data[l];
    for (let j = 0; j < perRow; j++) {
      const a = (from * perRow + j) * srcCap * unit;
      dst.set(src.subarray(a, a + len), (to * perRow + j) * this.capacity * unit);
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
      for (const p of this.planes) for (let l = 0; l < this.layers; l++) this.copyRow(p, p.data[l], this.capacity, l, last, row);
      this.rowLength[row] = this.rowLength[last];
      this.idOfRow[row] = this.idOfRow[last];
      this.rowOf.set(this.idOfRow[row], row);
    }
    this.idOfRow.pop();
    this.rowLength[last] = 0;
    if (this.idOfRow.length === 0) this.allocate(1, CAPACITY_STEP);
  }

  has(id: number): boolean {
    return this.rowOf.has(id);
  }

  /**
   * Takes sequence `id` over from another runner of the same export: a new row here gets a
   * copy of its cache, and `from` lets it go.
   */
  adoptSequence(id: number, from: FastRunner): void {
    const source = from.row(id);
    const length = from.rowLength[source];
    this.addSequence(id);
    const row = this.row(id);
    this.fit(length + 1);
    for (const [i, p] of this.planes.entries()) {
      for (let l = 0; l < this.layers; l++) this.copyRow(p, from.planes[i].data[l], from.capacity, l, source, row, length);
    }
    this.rowLength[row] = length;
    from.removeSequence(id);
  }

  fillForBenchmark(id: number, length: number): void {
    const row = this.row(id);
    this.fit(length + 1);
    this.rowLength[row] = length;
  }

  cachedLength(id: number): number {
    return this.rowLength[this.row(id)];
  }

  /** Bytes the current layout (rows × capacity) spans; reserved but unwritten memory is not counted. */
  kvBytes(): number {
    let bytes = 0;
    for (const p of this.planes) bytes += this.layers * this.planeSize(p, this.rows, this.capacity) * BYTES[p.type];
    return bytes;
  }

  private row(id: number): number {
    const row = this.rowOf.get(id);
    if (row === undefined) throw new Error(`sequence ${id} has no KV row`);
    return row;
  }

  private planeTensor(p: Plane, l: number, rows: number, firstRow: number): ort.Tensor {
    const size = this.planeSize(p, 1, this.capacity);
    const view = p.data[l].subarray(firstRow * size, (firstRow + rows) * size);
    const dims =
      p.width === 1
        ? [rows, this.kvHeads, this.capacity]
        : p.transposed
          ? [rows, this.kvHeads, p.width, this.capacity]
          : [rows, this.kvHeads, this.capacity, p.width];
    return new ort.Tensor(p.type, view, dims);
  }

  private async run(
    inputIds: number[],
    positions: number[],
    seqlensK: number[],
    total: number,
    rows: number,
    firstRow: number,
    seqLen: number,
    everyPosition = false,
  ): Promise<ort.InferenceSession.OnnxValueMapType> {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(inputIds, BigInt), [rows, seqLen]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(positions, BigInt), [rows, seqLen]),
      seqlens_k: new ort.Tensor('int32', Int32Array.from(seqlensK), [rows]),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(total), []),
    };
    // Exports from before prompt log-probabilities return the last position's logits only.
    if (this.promptLogits) feeds.logits_start = everyPosition ? EVERY_POSITION : LAST_POSITION;
    for (const p of this.planes) for (let l = 0; l < this.layers; l++) feeds[p.past[l]] = this.planeTensor(p, l, rows, firstRow);
    return this.session.run(feeds);
  }

  /**
   * Copies this step's new entries into the cache. The graph returns them in the plane's
   * own order with `seqLen` in place of the capacity: [rows, heads, seqLen, width], or
   * [rows, heads, width, seqLen] for a transposed plane.
   */
  private store(out: ort.InferenceSession.OnnxValueMapType, batchIndex: number, row: number, seqLen: number, at: number): void {
    const cap = this.capacity;
    for (const p of this.planes) {
      // The graph's outputs are runs too, with seqLen slots in place of the capacity.
      const { perRow, unit } = this.runs(p);
      const len = seqLen * unit;
      for (let l = 0; l < this.layers; l++) {
        const fresh = out[p.fresh[l]].data as KvArray;
        const dst = p.data[l];
        for (let j = 0; j < perRow; j++) {
          const from = (batchIndex * perRow + j) * len;
          const to = ((row * perRow + j) * cap + at) * unit;
          // A decode step into a transposed plane moves single elements: skip subarray.
          if (len === 1) dst[to] = fresh[from];
          else dst.set(fresh.subarray(from, from + len), to);
        }
      }
    }
  }

  async prefill(id: number, tokens: number[], everyPosition = false): Promise<Float32Array> {
    const row = this.row(id);
    const past = this.rowLength[row];
    const s = tokens.length;
    if (s === 0) throw new Error('prefill needs at least one token');
    if (everyPosition && !this.promptLogits) throw new Error('this export returns only the last position\'s logits');
    this.fit(past + s);
    // GQA takes a multi-token step with a past only at batch 1: the row's own slice.
    const positions = Array.from({ length: s }, (_, i) => past + i);
    const out = await this.run(tokens, positions, [past + s - 1], past + s, 1, row, s, everyPosition);
    this.store(out, 0, row, s, past);
    this.rowLength[row] = past + s;
    return out.logits.data as Float32Array;
  }

  async decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    // The batch is a prefix of the rows: up to the last one that decodes. A sequence still
    // prefilling is usually the newest, so the last row, and stays out of the batch; one
    // between decoding rows rides along with a dummy token whose outputs are dropped.
    let longest = 0;
    let rows = 0;
    for (const id of ids) {
      const row = this.row(id);
      longest = Math.max(longest, this.rowLength[row] + 1);
      rows = Math.max(rows, row + 1);
    }
    this.fit(longest);
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
    const source = ids.map((id) => {
      const row = this.row(id);
      this.store(out, row, row, 1, this.rowLength[row]);
      this.rowLength[row] += 1;
      return row;
    });
    this.gatherRows(logits, source, rows);
    return logits.subarray(0, ids.length * this.vocabSize);
  }

  /**
   * Reorders the rows of `logits` (a fresh buffer from ONNX Runtime, `rows` × vocab) in
   * place so that row i holds what row source[i] held: a new array per step costs fresh
   * pages every step, and rows usually are in order.
   */
  private gatherRows(logits: Float32Array, source: number[], rows: number): void {
    const v = this.vocabSize;
    if (source.every((row, i) => row === i)) return;
    // A full permutation: the sequences' rows first, then the rows nobody asked for.
    const perm = source.slice();
    const used = new Set(source);
    for (let r = 0; r < rows; r++) if (!used.has(r)) perm.push(r);
    const done = new Uint8Array(rows);
    this.spareRow ??= new Float32Array(v);
    for (let start = 0; start < rows; start++) {
      if (done[start] || perm[start] === start) continue;
      // Follow the cycle: slot d takes row perm[d]; the first slot's row waits in spareRow.
      this.spareRow.set(logits.subarray(start * v, (start + 1) * v));
      let d = start;
      for (;;) {
        done[d] = 1;
        const s = perm[d];
        if (s === start) {
          logits.set(this.spareRow, d * v);
          break;
        }
        logits.copyWithin(d * v, s * v, (s + 1) * v);
        d = s;
      }
    }
  }
}
