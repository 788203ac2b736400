import type { Manifest } from '../export/manifest.js';
import type { FastRunner } from './fast_runner.js';
import type { KvBlockLayout, KvBlockPool, KvBlockRef } from './kv_block_pool.js';
import type { ModelRunner } from './model_runner.js';

/**
 * The fast layout with prompts prefilled apart. A cache buffer has one capacity for all
 * its rows, and attention reads every row up to it: a long prompt prefilling beside
 * decoding sequences made each of their steps read its length (docs/performance.md). Here
 * a new sequence prefills in a
 * staging runner and moves into the decoding runner, cache copied once, at its first
 * decode, so decode steps read what the decoding sequences hold.
 *
 * Both runners share the session and the KV budget's address space (each buffer is
 * reserved at the budget's size and only written where used). The scheduler's slot count
 * stays the one-buffer bound, rows × the longest bucket, which covers both.
 */
export class StagedFastRunner implements ModelRunner {
  constructor(
    private readonly decoding: FastRunner,
    private readonly staging: FastRunner,
  ) {}

  get manifest(): Manifest {
    return this.decoding.manifest;
  }

  get vocabSize(): number {
    return this.decoding.vocabSize;
  }

  get promptLogits(): boolean {
    return this.decoding.promptLogits;
  }

  get maxSequences(): number {
    return this.decoding.maxSequences;
  }

  private holder(id: number): FastRunner {
    return this.staging.has(id) ? this.staging : this.decoding;
  }

  addSequence(id: number): void {
    if (this.decoding.has(id)) throw new Error(`sequence ${id} already has a row`);
    this.staging.addSequence(id);
  }

  removeSequence(id: number): void {
    this.holder(id).removeSequence(id);
  }

  handOver(from: number, to: number, length: number): void {
    if (this.has(to)) throw new Error(`sequence ${to} already has a row`);
    this.holder(from).handOver(from, to, length);
  }

  private has(id: number): boolean {
    return this.staging.has(id) || this.decoding.has(id);
  }

  expect(id: number, length: number): void {
    this.holder(id).expect(id, length);
  }

  cachedLength(id: number): number {
    return this.holder(id).cachedLength(id);
  }

  prefill(id: number, tokens: number[], everyPosition = false): Promise<Float32Array> {
    return this.holder(id).prefill(id, tokens, everyPosition);
  }

  decode(ids: number[], tokens: number[]): Promise<Float32Array> {
    for (const id of ids) if (this.staging.has(id)) this.decoding.adoptSequence(id, this.staging);
    return this.decoding.decode(ids, tokens);
  }

  blockLayout(tokens: number): KvBlockLayout {
    return this.decoding.blockLayout(tokens);
  }

  saveBlock(id: number, start: number, tokens: number, pool: KvBlockPool, slot: number): void {
    this.holder(id).saveBlock(id, start, tokens, pool, slot);
  }

  loadBlocks(id: number, pool: KvBlockPool, blocks: ReadonlyArray<KvBlockRef>): void {
    this.holder(id).loadBlocks(id, pool, blocks);
  }

  kvBytes(): number {
    return this.decoding.kvBytes() + this.staging.kvBytes();
  }

  /** Writes the decoding buffers (staging pages are written by the first prompts instead). */
  prefault(): number {
    return this.decoding.prefault();
  }

  reserve(id: number, length: number): void {
    if (this.staging.has(id)) this.decoding.adoptSequence(id, this.staging);
    this.decoding.reserve(id, length);
  }
}
