import type { KvBlockPool } from '../runtime/kv_block_pool.js';
import type { ModelRunner } from '../runtime/model_runner.js';
import type { DiskBlockStore } from './disk_block_store.js';
import type { KvCacheManager } from './kv_cache_manager.js';
import { PROMPT_SCORE_SLICE } from './prompt_scores.js';
import type { StepPlan } from './scheduler.js';
import type { Sequence } from './sequence.js';

/** A step's logits: the decode batch's [decode.length × vocab], the prefill chunk's last position's. */
export interface StepLogits {
  decode: Float32Array | null;
  prefill: Float32Array | null;
}

/**
 * Runs a step plan on the model runner, doing what it names and nothing else: frees rows,
 * writes blocks the pool let go to the disk tier, fills the pool with blocks read from it,
 * runs the decode batch, sets up the admitted sequences' rows (prefix blocks loaded),
 * runs the prefill chunk (scoring the prompt if asked) and saves the block it completed.
 */
export class StepExecutor {
  constructor(
    private readonly runner: ModelRunner,
    private readonly kv: KvCacheManager<Sequence>,
  ) {}

  async execute(plan: StepPlan<Sequence>): Promise<StepLogits> {
    let ok = false;
    try {
      const logits = await this.run(plan);
      ok = true;
      return logits;
    } finally {
      this.kv.settle(ok);
    }
  }

  private async run(plan: StepPlan<Sequence>): Promise<StepLogits> {
    const { runner } = this;
    for (const id of plan.kv.free) runner.removeSequence(id);
    // Blocks the pool let go are copied out for the disk before this step reuses their slots.
    for (const s of plan.kv.spill) this.disk().write(s.diskKey, s.tokens, this.pool(), s.slot);
    for (const f of plan.kv.fill) this.pool().writeSlot(f.slot, f.block.payload);
    const decode =
      plan.decode.length > 0
        ? await runner.decode(
            plan.decode.map((s) => s.id),
            plan.decode.map((s) => s.tokens[s.tokens.length - 1]),
          )
        : null;
    // Admitted sequences get their rows after the decode run: a prompt that finished its
    // prefill has then left the staging rows (StagedFastRunner.decode), so the new one
    // takes the row whose pages it wrote, rather than fresh pages and a row move.
    for (const row of plan.kv.rows) {
      if (row.takeOver) runner.handOver(row.takeOver.from, row.id, row.takeOver.length);
      else {
        if (row.free !== null) runner.removeSequence(row.free);
        runner.addSequence(row.id);
        if (row.load.length > 0) runner.loadBlocks(row.id, this.pool(), row.load);
      }
      runner.expect(row.id, row.expect);
    }
    if (!plan.prefill) return { decode, prefill: null };
    const { seq, start, end } = plan.prefill;
    const prefill = seq.prompt?.pending(end)
      ? await this.prefillScoring(seq, start, end)
      : await runner.prefill(seq.id, seq.tokens.slice(start, end));
    const save = plan.kv.save;
    if (save) {
      runner.saveBlock(save.id, save.start, save.tokens, this.pool(), save.slot);
      if (save.diskKey) this.disk().write(save.diskKey, save.tokens, this.pool(), save.slot);
    }
    return { decode, prefill };
  }

  private disk(): DiskBlockStore {
    const disk = this.kv.disk;
    if (!disk) throw new Error('a plan names disk blocks, but the disk tier is off');
    return disk;
  }

  private pool(): KvBlockPool {
    const pool = this.kv.pool;
    if (!pool) throw new Error('a plan names prefix blocks, but prefix caching is off');
    return pool;
  }

  /**
   * Prefills tokens [start, end) of `seq` with every position's logits, in slices,
   * scoring each prompt token from the position before it. Returns the last position's
   * logits, as a plain prefill would.
   */
  private async prefillScoring(seq: Sequence, start: number, end: number): Promise<Float32Array> {
    const v = this.runner.vocabSize;
    let last: Float32Array = new Float32Array(0);
    for (let from = start; from < end; from += PROMPT_SCORE_SLICE) {
      const to = Math.min(end, from + PROMPT_SCORE_SLICE);
      const logits = await this.runner.prefill(seq.id, seq.tokens.slice(from, to), true);
      seq.prompt!.record(logits, from, to, seq.tokens, v);
      last = logits.subarray((to - from - 1) * v, (to - from) * v);
    }
    return last;
  }
}
