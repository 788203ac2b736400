import { graphOutput, ioName, type Manifest } from '../export/manifest.js';
import { BYTES, copyRuns, type KvArray, kvArray } from './kv_array.js';
import type { KvBlockLayout, KvBlockPool, KvBlockRef } from './kv_block_pool.js';
import type { ModelRunner } from './model_runner.js';
import ort from './ort.js';

interface SequenceKv {
  length: number;
  capacity: number;
  /** Per layer, [kvHeads, capacity, headDim]. */
  keys: KvArray[];
  values: KvArray[];
}

/**
 * Runs the standard (optimum / onnx-community) layout: the graph takes the whole past
 * and returns the whole present, so every step copies KV proportional to the context.
 * Kept for models exported by other tools and as the benchmark's baseline. A batched
 * decode left-pads shorter pasts and masks the padding with attention_mask.
 */
export class StandardRunner implements ModelRunner {
  readonly vocabSize: number;
  /** The standard graph returns logits for every position anyway. */
  readonly promptLogits = true;
  private readonly outputName: string;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly layers: number;
  private readonly seqs = new Map<number, SequenceKv>();
  private readonly names: { pk: string[]; pv: string[]; nk: string[]; nv: string[] };

  constructor(
    private readonly session: ort.InferenceSession,
    readonly manifest: Manifest,
    readonly maxSequences: number,
  ) {
    const c = manifest.config;
    const output = graphOutput(manifest);
    this.vocabSize = output.width;
    this.outputName = output.name;
    this.kvHeads = c.numKvHeads;
    this.headDim = c.headDim;
    this.layers = c.numLayers;
    const n = (t: string) => Array.from({ length: this.layers }, (_, l) => ioName(t, l));
    this.names = { pk: n(manifest.io.pastKey), pv: n(manifest.io.pastValue), nk: n(manifest.io.newKey), nv: n(manifest.io.newValue) };
  }

  addSequence(id: number): void {
    if (this.seqs.size >= this.maxSequences) throw new Error(`all ${this.maxSequences} sequences are in use`);
    this.seqs.set(id, { length: 0, capacity: 0, keys: [], values: [] });
  }

  removeSequence(id: number): void {
    this.seqs.delete(id);
  }

  reserve(id: number, length: number): void {
    const s = this.seq(id);
    this.grow(s, length);
    s.length = length;
  }

  handOver(from: number, to: number, length: number): void {
    const s = this.seq(from);
    if (this.seqs.has(to)) throw new Error(`sequence ${to} already has a row`);
    if (length > s.length) throw new Error(`sequence ${from} holds ${s.length} tokens, not ${length}`);
    this.seqs.delete(from);
    s.length = length;
    this.seqs.set(to, s);
  }

  /** Its buffers grow per step: the standard layout's feeds are copied anyway, so no hint helps. */
  expect(): void {}

  cachedLength(id: number): number {
    return this.seq(id).length;
  }

  blockLayout(tokens: number): KvBlockLayout {
    const elements = this.kvHeads * tokens * this.headDim;
    return {
      layers: this.layers,
      planes: [
        { type: this.manifest.kvDtype, elements },
        { type: this.manifest.kvDtype, elements },
      ],
    };
  }

  saveBlock(id: number, start: number, tokens: number, pool: KvBlockPool, slot: number): void {
    const s = this.seq(id);
    if (start + tokens > s.length) throw new Error(`positions ${start}–${start + tokens} of sequence ${id} are not cached`);
    const hd = this.headDim;
    for (let l = 0; l < this.layers; l++) {
      [s.keys[l], s.values[l]].forEach((src, plane) =>
        copyRuns(src, start * hd, s.capacity * hd, pool.view(plane, l, slot), 0, tokens * hd, this.kvHeads, tokens * hd),
      );
    }
  }

  loadBlocks(id: number, pool: KvBlockPool, blocks: ReadonlyArray<KvBlockRef>): void {
    const s = this.seq(id);
    if (s.length !== 0) throw new Error(`sequence ${id} already has cached tokens`);
    const hd = this.headDim;
    const length = blocks.reduce((n, b) => n + b.tokens, 0);
    this.grow(s, length);
    for (let l = 0; l < this.layers; l++) {
      [s.keys[l], s.values[l]].forEach((dst, plane) => {
        let at = 0;
        for (const { slot, tokens } of blocks) {
          copyRuns(pool.view(plane, l, slot), 0, tokens * hd, dst, at * hd, s.capacity * hd, this.kvHeads, tokens * hd);
          at += tokens;
        }
      });
    }
    s.length = length;
  }

  kvBytes(): number {
    const bytesPer = BYTES[this.manifest.kvDtype];
    let n = 0;
    for (const s of this.seqs.values()) n += 2 * this.layers * this.kvHeads * s.capacity * this.headDim * bytesPer;
    return n;
  }

  private seq(id: number): SequenceKv {
    const s = this.seqs.get(id);
    if (!s) throw new Error(`sequence ${id} has no KV state`);
    return s;
  }

  private grow(s: SequenceKv, needed: number): void {
    if (needed <= s.capacity) return;
    const cap = Math.max(needed, s.capacity * 2, 64);
    const hd = this.headDim;
    const grow = (old: KvArray | undefined): KvArray => {
      const next = kvArray(this.manifest.kvDtype, this.kvHeads * cap * hd);
      if (old) for (let h = 0; h < this.kvHeads; h++) next.set(old.subarray(h * s.capacity * hd, (h * s.capacity + s.length) * hd), h * cap * hd);
      return next;
    };
    s.keys = Array.from({ length: this.layers }, (_, l) => grow(s.keys[l]));
    s.values = Array.from({ length: this.layers }, (_, l) => grow(s.values[l]));
    s.capacity = cap;
  }

  /**
   * One step over `batch` sequences that each add `seqLen` tokens. Pasts are right-aligned
   * to the longest one; `present` rows are read back at the same alignment.
   */
  private async step(batch: SequenceKv[], tokens: number[], seqLen: number, everyPosition = false): Promise<Float32Array> {
    const b = batch.length;
    const hd = this.headDim;
    const past = Math.max(...batch.map((s) => s.length));
    const total = past + seqLen;
    const mask = new BigInt64Array(b * total);
    const positions = new BigInt64Array(b * seqLen);
    batch.forEach((s, i) => {
      const pad = past - s.length;
      for (let t = pad; t < total; t++) mask[i * total + t] = 1n;
      for (let t = 0; t < seqLen; t++) positions[i * seqLen + t] = BigInt(s.length + t);
    });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [b, seqLen]),
      attention_mask: new ort.Tensor('int64', mask, [b, total]),
      position_ids: new ort.Tensor('int64', positions, [b, seqLen]),
    };
    for (let l = 0; l < this.layers; l++) {
      for (const [names, pick] of [
        [this.names.pk, (s: SequenceKv) => s.keys[l]],
        [this.names.pv, (s: SequenceKv) => s.values[l]],
      ] as const) {
        const data = kvArray(this.manifest.kvDtype, b * this.kvHeads * past * hd);
        batch.forEach((s, i) => {
          const pad = past - s.length;
          const src = pick(s);
          for (let h = 0; h < this.kvHeads; h++) {
            if (s.length === 0) continue;
            data.set(src.subarray(h * s.capacity * hd, (h * s.capacity + s.length) * hd), ((i * this.kvHeads + h) * past + pad) * hd);
          }
        });
        feeds[names[l]] = new ort.Tensor(this.manifest.kvDtype, data, [b, this.kvHeads, past, hd]);
      }
    }
    const out = await this.session.run(feeds);
    batch.forEach((s, i) => {
      this.grow(s, s.length + seqLen);
      for (let l = 0; l < this.layers; l++) {
        for (const [name, dst] of [
          [this.names.nk[l], s.keys[l]],
          [this.names.nv[l], s.values[l]],
        ] as const) {
          const present = out[name].data as KvArray;
          for (let h = 0; h < this.kvHeads; h++) {
            const from = ((i * this.kvHeads + h) * total + past) * hd;
            dst.set(present.subarray(from, from + seqLen * hd), (h * s.capacity + s.length) * hd);
          }
        }
      }
      s.length += seqLen;
    });
    // logits [b, seqLen, vocab]: keep each row's last position, or all of them when asked.
    const logits = out[this.outputName].data as Float32Array;
    if (everyPosition) return logits;
    const v = this.vocabSize;
    const result = new Float32Array(b * v);
    for (let i = 0; i < b; i++) result.set(logits.subarray(((i + 1) * seqLen - 1) * v, (i + 1) * seqLen * v), i * v);
    return result;
  }

  prefill(id: number, tokens: number[], everyPosition = false): Promise<Float32Array> {
    if (tokens.length === 0) throw new Error('prefill needs at least one token');
    return this.step([this.seq(id)], tokens, tokens.length, everyPosition);
  }

  decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    return this.step(
      ids.map((id) => this.seq(id)),
      tokens,
      1,
    );
  }
}
