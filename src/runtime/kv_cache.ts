import type { Manifest } from '../export/manifest.js';
import { BYTES, copyRuns, type KvArray, kvArray } from './kv_array.js';
import type { KvBlockLayout, KvBlockPool, KvBlockRef } from './kv_block_pool.js';
import { CAPACITY_STEP, capacityBucket } from './kv_cost.js';
import { kvPlanes, type Plane, type PlaneRuns, planeRuns, planeTensor } from './kv_planes.js';
import type ort from './ort.js';

/**
 * How far past what a step needs capacity may grow at once toward a row's expected
 * length (`expect`): each growth moves every live row (tens of milliseconds at long
 * contexts), each unused step costs every later step a little attention (docs/performance.md).
 */
export const GROW_AHEAD = 4 * CAPACITY_STEP;

/**
 * The fast layout's KV cache: one buffer per layer and plane of shape
 * [rows, kvHeads, capacity, headDim] (keys [rows, kvHeads, headDim, capacity] for
 * in-place attention exports, manifest keyLayout 'bhdt'), fed to every step without a
 * copy. Each sequence owns a row and rows stay compact: when a sequence leaves, the last
 * row moves into its place. Rows × capacity both resize in steps, so memory follows the
 * work; `kvCostModel` (kv_cost.ts) tells the scheduler what a set of sequences would take.
 */
export class KvCache {
  private readonly kvHeads: number;
  private readonly layers: number;
  private capacity = CAPACITY_STEP;
  private rows = 0;
  readonly planes: Plane[];
  private readonly rowOf = new Map<number, number>();
  /** The sequence id in each row [0, count). */
  private readonly idOfRow: number[] = [];
  private readonly rowLength: Int32Array;
  /** The length each row is expected to reach soon (its prompt's end), 0 if none (see `expect`). */
  private readonly rowReach: Int32Array;

  constructor(
    manifest: Manifest,
    readonly maxSequences: number,
    /** Longest sequence a row may hold; capacity never grows past it. */
    private readonly maxLength: number,
    /**
     * The scheduler's KV budget in token slots (rows × capacity never exceeds it). Given,
     * each buffer is allocated once at that size: memory is only committed as it is first
     * written, and every later resize happens in place.
     */
    private readonly kvBudgetTokens = 0,
  ) {
    const c = manifest.config;
    this.kvHeads = c.numKvHeads;
    this.layers = c.numLayers;
    this.rowLength = new Int32Array(maxSequences);
    this.rowReach = new Int32Array(maxSequences);
    this.planes = kvPlanes(manifest);
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
      const size = Math.max(2 * needed, this.kvHeads * p.width * this.kvBudgetTokens);
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

  private runs(p: Plane): PlaneRuns {
    return planeRuns(p, this.kvHeads);
  }

  /**
   * Copies the cached prefix (`length` tokens, row `from`'s own by default) of row `from`
   * of `src` (capacity `srcCap`) to row `to` of the plane's layer `l`.
   */
  private copyRow(p: Plane, src: KvArray, srcCap: number, l: number, from: number, to: number, length = this.rowLength[from]): void {
    const { perRow, unit } = this.runs(p);
    if (length === 0) return;
    copyRuns(
      src,
      from * perRow * srcCap * unit,
      srcCap * unit,
      p.data[l],
      to * perRow * this.capacity * unit,
      this.capacity * unit,
      perRow,
      length * unit,
    );
  }

  /**
   * Resizes to the rows in use and the capacity bucket `needed` tokens require. Growing,
   * capacity goes on toward the longest row's expected length (`expect`), at most
   * GROW_AHEAD further, so a prompt's prefill moves its row once per few chunks, not per chunk.
   */
  fit(needed: number): void {
    if (needed > this.maxLength) throw new Error(`sequence of ${needed} tokens exceeds the runner's limit of ${this.maxLength}`);
    let longest = needed;
    let reach = 0;
    for (let r = 0; r < this.idOfRow.length; r++) {
      longest = Math.max(longest, this.rowLength[r]);
      reach = Math.max(reach, this.rowReach[r]);
    }
    // What this step needs, and what to take when the capacity moves anyway.
    const needCap = capacityBucket(longest);
    const cap = capacityBucket(Math.min(this.maxLength, Math.max(longest, Math.min(reach, longest + GROW_AHEAD))));
    const rows = Math.max(1, this.idOfRow.length);
    // Grow at once; shrink only when a size halves, so allocations do not flap.
    const growCap = needCap > this.capacity;
    const growRows = rows > this.rows;
    const shrink = cap * 2 <= this.capacity || rows * 2 <= this.rows;
    if (growCap || growRows || shrink) this.allocate(growRows || shrink ? rows : this.rows, growCap || shrink ? cap : this.capacity);
  }

  /**
   * `id` will hold `length` tokens soon (a prompt's end): capacity then grows toward it in
   * one move rather than a step per chunk. The expectation ends when the row leaves.
   */
  expect(id: number, length: number): void {
    this.rowReach[this.row(id)] = length;
  }

  /** Gives sequence `id` a new, empty row. */
  add(id: number): void {
    if (this.rowOf.has(id)) throw new Error(`sequence ${id} already has a row`);
    if (this.idOfRow.length >= this.maxSequences) throw new Error(`all ${this.maxSequences} KV rows are in use`);
    const row = this.idOfRow.length;
    this.idOfRow.push(id);
    this.rowLength[row] = 0;
    this.rowReach[row] = 0;
    this.rowOf.set(id, row);
  }

  /** Frees `id`'s row; the last row moves into its place, so rows stay compact. */
  free(id: number): void {
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    this.rowOf.delete(id);
    const last = this.idOfRow.length - 1;
    if (row !== last) {
      for (const p of this.planes) for (let l = 0; l < this.layers; l++) this.copyRow(p, p.data[l], this.capacity, l, last, row);
      this.rowLength[row] = this.rowLength[last];
      this.rowReach[row] = this.rowReach[last];
      this.idOfRow[row] = this.idOfRow[last];
      this.rowOf.set(this.idOfRow[row], row);
    }
    this.idOfRow.pop();
    this.rowLength[last] = 0;
    this.rowReach[last] = 0;
    if (this.idOfRow.length === 0) this.allocate(1, CAPACITY_STEP);
  }

  has(id: number): boolean {
    return this.rowOf.has(id);
  }

  /** Sequence `to` takes `from`'s row, keeping its first `length` cached tokens. */
  handOver(from: number, to: number, length: number): void {
    const row = this.row(from);
    if (this.rowOf.has(to)) throw new Error(`sequence ${to} already has a row`);
    if (length > this.rowLength[row]) throw new Error(`sequence ${from} holds ${this.rowLength[row]} tokens, not ${length}`);
    this.rowOf.delete(from);
    this.rowOf.set(to, row);
    this.idOfRow[row] = to;
    this.rowLength[row] = length;
    this.rowReach[row] = 0;
  }

  /**
   * Gives `id` a cache of `length` tokens whose entries are not computed here: for a caller
   * that writes them itself, or never reads them (decode speed does not depend on them).
   */
  reserve(id: number, length: number): void {
    const row = this.row(id);
    this.fit(length + 1);
    this.rowLength[row] = length;
  }

  /** Copies the first `length` cached tokens of `id` in `source` (another cache of the same export) into a new row here. */
  copyFrom(id: number, source: KvCache, length = source.length(id)): void {
    const from = source.row(id);
    this.add(id);
    const row = this.row(id);
    this.fit(length + 1);
    for (const [i, p] of this.planes.entries()) {
      for (let l = 0; l < this.layers; l++) this.copyRow(p, source.planes[i].data[l], source.capacity, l, from, row, length);
    }
    this.rowLength[row] = length;
  }

  /** A block of `tokens` positions in this cache's run order: per layer and plane, each run's slots. */
  blockLayout(tokens: number): KvBlockLayout {
    return { layers: this.layers, planes: this.planes.map((p) => ({ type: p.type, elements: this.runs(p).perRow * tokens * this.runs(p).unit })) };
  }

  /** Copies `id`'s cached positions [start, start + pool's block) into the pool's slot `slot`. */
  saveBlock(id: number, start: number, tokens: number, pool: KvBlockPool, slot: number): void {
    const row = this.row(id);
    if (start + tokens > this.rowLength[row]) throw new Error(`positions ${start}–${start + tokens} of sequence ${id} are not cached`);
    for (const [i, p] of this.planes.entries()) {
      const { perRow, unit } = this.runs(p);
      for (let l = 0; l < this.layers; l++) {
        copyRuns(
          p.data[l],
          (row * perRow * this.capacity + start) * unit,
          this.capacity * unit,
          pool.view(i, l, slot),
          0,
          tokens * unit,
          perRow,
          tokens * unit,
        );
      }
    }
  }

  /** Fills `id`'s empty row with the pool's `blocks`, in order, as its first cached positions. */
  loadBlocks(id: number, pool: KvBlockPool, blocks: ReadonlyArray<KvBlockRef>): void {
    const row = this.row(id);
    if (this.rowLength[row] !== 0) throw new Error(`sequence ${id} already has cached tokens`);
    const length = blocks.reduce((n, b) => n + b.tokens, 0);
    this.fit(length + 1);
    for (const [i, p] of this.planes.entries()) {
      const { perRow, unit } = this.runs(p);
      for (let l = 0; l < this.layers; l++) {
        let at = 0;
        for (const { slot, tokens } of blocks) {
          copyRuns(
            pool.view(i, l, slot),
            0,
            tokens * unit,
            p.data[l],
            (row * perRow * this.capacity + at) * unit,
            this.capacity * unit,
            perRow,
            tokens * unit,
          );
          at += tokens;
        }
      }
    }
    this.rowLength[row] = length;
  }

  /** Tokens of `id` whose keys and values are cached. */
  length(id: number): number {
    return this.rowLength[this.row(id)];
  }

  /** Cached tokens of each row [0, rows). */
  lengthOfRow(row: number): number {
    return this.rowLength[row];
  }

  row(id: number): number {
    const row = this.rowOf.get(id);
    if (row === undefined) throw new Error(`sequence ${id} has no KV row`);
    return row;
  }

  /** Bytes the current layout (rows × capacity) spans; reserved but unwritten memory is not counted. */
  bytes(): number {
    let bytes = 0;
    for (const p of this.planes) bytes += this.layers * this.planeSize(p, this.rows, this.capacity) * BYTES[p.type];
    return bytes;
  }

  /** The past inputs of a step over rows [firstRow, firstRow + rows), as views of the buffers. */
  pastFeeds(feeds: Record<string, ort.Tensor>, rows: number, firstRow: number): void {
    for (const p of this.planes) for (let l = 0; l < this.layers; l++) feeds[p.past[l]] = this.planeTensor(p, l, rows, firstRow);
  }

  private planeTensor(p: Plane, l: number, rows: number, firstRow: number): ort.Tensor {
    return planeTensor(p, l, this.kvHeads, this.capacity, rows, firstRow);
  }

  /**
   * Writes a step's new entries for row `row` (batch index `batchIndex` of the outputs) at
   * position `at`, and counts them. The graph returns them in the plane's own order with
   * `seqLen` in place of the capacity: [rows, heads, seqLen, width], or [rows, heads,
   * width, seqLen] for a transposed plane.
   */
  append(out: ort.InferenceSession.OnnxValueMapType, batchIndex: number, row: number, seqLen: number, at: number): void {
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
    this.rowLength[row] = at + seqLen;
  }
}
