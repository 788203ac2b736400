import type { GrammarStats } from './grammar_service.js';
import type { Scheduler } from './scheduler.js';
import type { Sequence } from './sequence.js';
import type { EngineLimits, EngineStats } from './types.js';

/** What the engine has done since it started. */
export interface EngineTotals {
  prompt: number;
  generation: number;
  finished: number;
  steps: number;
  warmed: number;
}

/** The engine's gauges and counters (for /health and /metrics) from its parts. */
export function engineStats(o: {
  sequences: Iterable<Sequence>;
  scheduler: Scheduler<Sequence>;
  limits: EngineLimits;
  totals: EngineTotals;
  grammar: GrammarStats | null;
  kvBytes: number;
}): EngineStats {
  let used = 0;
  for (const s of o.sequences) if (s.state === 'prefill' || s.state === 'decode') used += s.numComputed;
  const { prefixCache, disk, diskHitTokens } = o.scheduler.kv;
  return {
    running: o.scheduler.numRunning,
    waiting: o.scheduler.numWaiting,
    kvUsedTokens: used,
    kvBudgetTokens: o.limits.kvBudgetTokens,
    kvBytes: o.kvBytes,
    promptTokensTotal: o.totals.prompt,
    generationTokensTotal: o.totals.generation,
    warmedTokensTotal: o.totals.warmed,
    requestsFinished: o.totals.finished,
    steps: o.totals.steps,
    grammar: o.grammar,
    prefixCache: prefixCache ? { ...prefixCache.stats(), disk: disk?.stats(diskHitTokens) ?? null } : null,
  };
}
