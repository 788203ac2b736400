import { graphOutput, type Manifest } from '../export/manifest.js';
import type { KvBlockLayout, KvBlockPool, KvBlockRef } from './kv_block_pool.js';
import { KvCache } from './kv_cache.js';
import type { ModelRunner } from './model_runner.js';
import ort from './ort.js';

/**
 * Runs the fast layout over a KvCache (kv_cache.ts): the graph reads the cache's buffers
 * in place and returns only this step's keys and values, which are written back. A
 * batched decode feeds rows [0, R) up to its last decoding row; rows in between that are
 * still prefilling ride along with a dummy token whose outputs are dropped.
 */
/** `logits_start` values, made once: ONNX Runtime only reads its inputs. */
const LAST_POSITION = new ort.Tensor('int64', BigInt64Array.of(-1n), [1]);
const EVERY_POSITION = new ort.Tensor('int64', BigInt64Array.of(0n), [1]);

export class FastRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly promptLogits: boolean;
  readonly cache: KvCache;
  private readonly outputName: string;
  /** One row of logits, kept for reordering rows in place (see gatherRows). */
  private spareRow: Float32Array | null = null;

  constructor(
    private readonly session: ort.InferenceSession,
    readonly manifest: Manifest,
    readonly maxSequences: number,
    /** Longest sequence a row may hold. */
    maxLength: number,
    /** The KV budget in token slots; each buffer is reserved at that size once. */
    kvBudgetTokens = 0,
  ) {
    const output = graphOutput(manifest);
    // An embedding model's rows are hidden states: the engine handles them as logits of that width.
    this.vocabSize = output.width;
    this.outputName = output.name;
    this.promptLogits = manifest.io.inputs.includes('logits_start');
    this.cache = new KvCache(manifest, maxSequences, maxLength, kvBudgetTokens);
  }

  /** Writes the whole budget now (see KvCache.prefault). */
  prefault(): number {
    return this.cache.prefault();
  }

  addSequence(id: number): void {
    this.cache.add(id);
  }

  removeSequence(id: number): void {
    this.cache.free(id);
  }

  has(id: number): boolean {
    return this.cache.has(id);
  }

  /**
   * Takes sequence `id` over from another runner of the same export: a new row here gets a
   * copy of its cache, and `from` lets it go.
   */
  adoptSequence(id: number, from: FastRunner): void {
    this.cache.copyFrom(id, from.cache);
    from.removeSequence(id);
  }

  reserve(id: number, length: number): void {
    this.cache.reserve(id, length);
  }

  handOver(from: number, to: number, length: number): void {
    this.cache.handOver(from, to, length);
  }

  expect(id: number, length: number): void {
    this.cache.expect(id, length);
  }

  cachedLength(id: number): number {
    return this.cache.length(id);
  }

  blockLayout(tokens: number): KvBlockLayout {
    return this.cache.blockLayout(tokens);
  }

  saveBlock(id: number, start: number, tokens: number, pool: KvBlockPool, slot: number): void {
    this.cache.saveBlock(id, start, tokens, pool, slot);
  }

  loadBlocks(id: number, pool: KvBlockPool, blocks: ReadonlyArray<KvBlockRef>): void {
    this.cache.loadBlocks(id, pool, blocks);
  }

  kvBytes(): number {
    return this.cache.bytes();
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
    this.cache.pastFeeds(feeds, rows, firstRow);
    return this.session.run(feeds);
  }

  async prefill(id: number, tokens: number[], everyPosition = false): Promise<Float32Array> {
    const row = this.cache.row(id);
    const past = this.cache.lengthOfRow(row);
    const s = tokens.length;
    if (s === 0) throw new Error('prefill needs at least one token');
    if (everyPosition && !this.promptLogits) throw new Error("this export returns only the last position's logits");
    this.cache.fit(past + s);
    // GQA takes a multi-token step with a past only at batch 1: the row's own slice.
    const positions = Array.from({ length: s }, (_, i) => past + i);
    const out = await this.run(tokens, positions, [past + s - 1], past + s, 1, row, s, everyPosition);
    this.cache.append(out, 0, row, s, past);
    return out[this.outputName].data as Float32Array;
  }

  async decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    // The batch is a prefix of the rows: up to the last one that decodes. A sequence still
    // prefilling is usually the newest, so the last row, and stays out of the batch; one
    // between decoding rows rides along with a dummy token whose outputs are dropped.
    let longest = 0;
    let rows = 0;
    for (const id of ids) {
      const row = this.cache.row(id);
      longest = Math.max(longest, this.cache.lengthOfRow(row) + 1);
      rows = Math.max(rows, row + 1);
    }
    this.cache.fit(longest);
    const inputIds = new Array<number>(rows).fill(0);
    const positions = new Array<number>(rows);
    let total = 0;
    for (let r = 0; r < rows; r++) {
      positions[r] = this.cache.lengthOfRow(r);
      total = Math.max(total, positions[r] + 1);
    }
    ids.forEach((id, i) => {
      inputIds[this.cache.row(id)] = tokens[i];
    });
    // For S = 1, seqlens_k (past + S − 1) equals the position.
    const out = await this.run(inputIds, positions, positions, total, rows, 0, 1);
    const logits = out[this.outputName].data as Float32Array;
    const source = ids.map((id) => {
      const row = this.cache.row(id);
      this.cache.append(out, row, row, 1, this.cache.lengthOfRow(row));
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
