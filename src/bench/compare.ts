import { type LevelResult, runLoadBench, summarize } from './load_bench.js';

/** One workload of a comparison: fixed-length random prompts at a fixed concurrency. */
export interface Scenario {
  inputLen: number;
  outputLen: number;
  concurrency: number;
}

/** A server under comparison. */
export interface CompareTarget {
  name: string;
  baseUrl: string;
  model: string | null;
  apiKey: string | null;
}

export interface CompareOptions {
  ours: CompareTarget;
  peer: CompareTarget;
  scenarios: Scenario[];
  rounds: number;
  /** Requests per scenario run: at least this many, and at least two per client. */
  numPrompts: number;
  seed: number;
  timeout: number;
}

/** What the table reports of a run, and which way is better. */
export const MEASURES = [
  { key: 'outputThroughput', label: 'output tok/s', higherIsBetter: true, of: (l: LevelResult) => l.outputThroughput },
  { key: 'ttftMean', label: 'TTFT mean (ms)', higherIsBetter: false, of: (l: LevelResult) => l.ttftMs.mean },
  { key: 'ttftP99', label: 'TTFT p99 (ms)', higherIsBetter: false, of: (l: LevelResult) => l.ttftMs.p99 },
  { key: 'tpotMean', label: 'TPOT mean (ms)', higherIsBetter: false, of: (l: LevelResult) => l.tpotMs.mean },
] as const;

export type MeasureKey = (typeof MEASURES)[number]['key'];

export interface ScenarioResult {
  scenario: Scenario;
  /** Each round's run, in the order the rounds ran. */
  ours: LevelResult[];
  peer: LevelResult[];
  /** Per measure: the median over rounds of each server, and ours / peer. */
  measures: Record<MeasureKey, { ours: number; peer: number; ratio: number }>;
}

/** Parses `128:128:1,1024:128:8` (input:output:concurrency, comma-separated). */
export function parseScenarios(text: string): Scenario[] {
  return text.split(',').map((part) => {
    const m = /^(\d+):(\d+):(\d+)$/.exec(part.trim());
    if (!m) throw new Error(`scenario ${JSON.stringify(part)}: expected input:output:concurrency, e.g. 128:128:8`);
    const [inputLen, outputLen, concurrency] = m.slice(1).map(Number);
    if (inputLen < 1 || outputLen < 1 || concurrency < 1) throw new Error(`scenario ${JSON.stringify(part)}: every number must be at least 1`);
    return { inputLen, outputLen, concurrency };
  });
}

/**
 * Runs every scenario against both servers, alternating, one at a time: a round runs each
 * scenario on one server and then the other, and the next round starts with the other
 * server, so a machine whose speed drifts over the session favours neither. Both servers
 * get the same prompts within a round, and new ones in the next (a prefix cache cannot
 * answer a round from an earlier one). A failed request fails the comparison: a ratio
 * over different work would mislead.
 */
export async function runComparison(o: CompareOptions, log: (line: string) => void = () => {}): Promise<ScenarioResult[]> {
  const runs = o.scenarios.map(() => ({ ours: [] as LevelResult[], peer: [] as LevelResult[] }));
  for (let round = 0; round < o.rounds; round++) {
    const order = round % 2 === 0 ? (['ours', 'peer'] as const) : (['peer', 'ours'] as const);
    for (const [i, s] of o.scenarios.entries()) {
      for (const side of order) {
        const target = o[side];
        const { levels } = await runLoadBench({
          baseUrl: target.baseUrl,
          model: target.model,
          apiKey: target.apiKey,
          endpoint: 'completions',
          inputLen: s.inputLen,
          outputLen: s.outputLen,
          numPrompts: Math.max(o.numPrompts, 2 * s.concurrency),
          concurrency: [s.concurrency],
          requestRate: null,
          seed: o.seed + 7919 * round + 31 * i,
          timeout: o.timeout,
        });
        const level = levels[0];
        if (level.failed > 0)
          throw new Error(
            `${target.name}: ${level.failed} of ${level.failed + level.completed} requests failed (${s.inputLen}:${s.outputLen}:${s.concurrency}): ${level.errors.join('; ')}`,
          );
        // A server that reports no usage is counted by its streamed chunks, which may merge or hold back tokens.
        if (level.meanOutputTokens !== s.outputLen) {
          log(
            `note: ${target.name} returned ${level.meanOutputTokens.toFixed(1)} tokens per request on average, not ${s.outputLen} (no usage in its stream, or ignore_eos not honoured)`,
          );
        }
        runs[i][side].push(level);
        log(
          `round ${round + 1}, ${s.inputLen} in / ${s.outputLen} out, concurrency ${s.concurrency}, ${target.name}: ${level.outputThroughput.toFixed(1)} output tok/s, TTFT mean ${level.ttftMs.mean.toFixed(0)} ms, TPOT mean ${level.tpotMs.mean.toFixed(1)} ms`,
        );
      }
    }
  }
  return o.scenarios.map((scenario, i) => {
    const { ours, peer } = runs[i];
    const measures = Object.fromEntries(
      MEASURES.map((m) => {
        const a = summarize(ours.map(m.of)).median;
        const b = summarize(peer.map(m.of)).median;
        return [m.key, { ours: a, peer: b, ratio: b === 0 ? NaN : a / b }];
      }),
    ) as ScenarioResult['measures'];
    return { scenario, ours, peer, measures };
  });
}

const fmt = (x: number) => (Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) : '–');

/** The ratio table: one row per scenario and measure, ours / peer, and whether that is better for us. */
export function comparisonTable(results: ScenarioResult[], ours: string, peer: string): string {
  const rows = [`| scenario (in / out, concurrency) | measure | ${ours} | ${peer} | ratio | better |`, '|---|---|---|---|---|---|'];
  for (const r of results) {
    const s = r.scenario;
    for (const m of MEASURES) {
      const v = r.measures[m.key];
      const better = !Number.isFinite(v.ratio) ? '–' : v.ratio === 1 ? 'even' : v.ratio > 1 === m.higherIsBetter ? ours : peer;
      rows.push(
        `| ${s.inputLen} / ${s.outputLen}, ${s.concurrency} | ${m.label} | ${fmt(v.ours)} | ${fmt(v.peer)} | ${Number.isFinite(v.ratio) ? v.ratio.toFixed(2) : '–'} | ${better} |`,
      );
    }
  }
  return rows.join('\n');
}
