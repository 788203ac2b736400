import { type AgentTurn, runAgentTurns, sizeAgentPrompt } from './agent_scenario.js';
import { estimateRunS, probeServer } from './compare_estimate.js';
import {
  type CompareTarget,
  type ComparisonState,
  formatDuration,
  type MeasureRow,
  type RunRecord,
  requestsOf,
  type Scenario,
  type Side,
  scenarioLabel,
} from './compare_types.js';
import { type LevelResult, runLoadBench, summarize } from './load_bench.js';
import { loadBetween, loadSnapshot, waitForIdle } from './proc_stats.js';

export * from './compare_types.js';

export interface CompareOptions {
  ours: CompareTarget;
  peer: CompareTarget;
  scenarios: Scenario[];
  rounds: number;
  /** Requests per load run: at least this many, and at least two per client. */
  numPrompts: number;
  seed: number;
  timeout: number;
  /** Before each run: wait until other processes use at most this fraction of the machine… */
  idleThreshold: number;
  /** …for at most this many seconds (0: do not wait). */
  idleWaitS: number;
  signal?: AbortSignal;
}

type Measure<T> = { key: string; label: string; higherIsBetter: boolean; of: (r: T) => number | null };

/** What the table reports of a load run, and which way is better. */
export const MEASURES: Measure<LevelResult>[] = [
  { key: 'outputThroughput', label: 'output tok/s', higherIsBetter: true, of: (l) => l.outputThroughput },
  { key: 'ttftMean', label: 'TTFT mean (ms)', higherIsBetter: false, of: (l) => l.ttftMs.mean },
  { key: 'ttftP99', label: 'TTFT p99 (ms)', higherIsBetter: false, of: (l) => l.ttftMs.p99 },
  { key: 'tpotMean', label: 'TPOT mean (ms)', higherIsBetter: false, of: (l) => l.tpotMs.mean },
];

const turn = (t: AgentTurn[], i: number) => (t[i]?.ok ? t[i] : null);

/** What the table reports of an agent's two turns. */
export const AGENT_MEASURES: Measure<AgentTurn[]>[] = [
  { key: 'ttftTurn1', label: 'TTFT turn 1 (ms)', higherIsBetter: false, of: (t) => turn(t, 0)?.ttftMs ?? null },
  { key: 'tpotTurn1', label: 'TPOT turn 1 (ms)', higherIsBetter: false, of: (t) => turn(t, 0)?.tpotMs ?? null },
  { key: 'ttftTurn2', label: 'TTFT turn 2 (ms)', higherIsBetter: false, of: (t) => turn(t, 1)?.ttftMs ?? null },
];

/**
 * Parses `128:128:1,1024:128:8,4096:128:1:2,agent:12000` — input:output:concurrency with
 * an optional request count, or `agent:<first prompt tokens>[:<output tokens>]`.
 */
export function parseScenarios(text: string): Scenario[] {
  return text.split(',').map((part): Scenario => {
    const agent = /^agent:(\d+)(?::(\d+))?$/.exec(part.trim());
    if (agent) {
      const [promptTokens, outputLen] = [Number(agent[1]), Number(agent[2] ?? 32)];
      if (promptTokens < 1 || outputLen < 2)
        throw new Error(`scenario ${JSON.stringify(part)}: an agent needs at least 1 prompt and 2 output tokens`);
      return { kind: 'agent', promptTokens, outputLen };
    }
    const m = /^(\d+):(\d+):(\d+)(?::(\d+))?$/.exec(part.trim());
    if (!m)
      throw new Error(`scenario ${JSON.stringify(part)}: expected input:output:concurrency[:requests] or agent:tokens[:output], e.g. 128:128:8`);
    const [inputLen, outputLen, concurrency] = m.slice(1, 4).map(Number);
    const numPrompts = m[4] === undefined ? null : Number(m[4]);
    if (inputLen < 1 || outputLen < 1 || concurrency < 1 || numPrompts === 0)
      throw new Error(`scenario ${JSON.stringify(part)}: every number must be at least 1`);
    return { kind: 'load', inputLen, outputLen, concurrency, numPrompts };
  });
}

async function listModels(t: CompareTarget): Promise<string[]> {
  const res = await fetch(`${t.baseUrl}/models`, {
    headers: t.apiKey ? { authorization: `Bearer ${t.apiKey}` } : {},
    signal: AbortSignal.timeout(30_000),
  });
  if (!res.ok) throw new Error(`GET ${t.baseUrl}/models: HTTP ${res.status}`);
  return ((await res.json()) as { data: Array<{ id: string }> }).data.map((d) => d.id);
}

function measuresOf(s: Scenario, ours: RunRecord[], peer: RunRecord[]): MeasureRow[] {
  const median = (runs: RunRecord[], of: (r: RunRecord) => number | null) => {
    const xs = runs.map(of).filter((x): x is number => x !== null && Number.isFinite(x));
    return xs.length === 0 ? NaN : summarize(xs).median;
  };
  const rows =
    s.kind === 'load'
      ? MEASURES.map((m) => ({ ...m, get: (r: RunRecord) => (r.level && r.level.completed > 0 ? m.of(r.level) : null) }))
      : AGENT_MEASURES.map((m) => ({ ...m, get: (r: RunRecord) => (r.turns ? m.of(r.turns) : null) }));
  return rows.map(({ key, label, higherIsBetter, get }) => {
    const a = median(ours, get);
    const b = median(peer, get);
    return { key, label, higherIsBetter, ours: a, peer: b, ratio: b === 0 ? NaN : a / b };
  });
}

const countFailures = (kinds: Array<string | null>) =>
  kinds.reduce<Record<string, number>>((f, k) => {
    if (k) f[k] = (f[k] ?? 0) + 1;
    return f;
  }, {});

/**
 * Runs every scenario against both servers, alternating, one at a time: a round runs each
 * scenario on one server and then the other, and the next round starts with the other
 * server, so a machine whose speed drifts over the session favours neither. Both servers
 * get the same prompts within a round, and new ones in the next (a prefix cache cannot
 * answer a round from an earlier one). Failed requests are counted by kind and the run
 * goes on; `onRun` sees the state after every run, so a report survives an interruption.
 */
export async function runComparison(
  o: CompareOptions,
  log: (line: string) => void = () => {},
  onRun: (state: ComparisonState) => void = () => {},
): Promise<ComparisonState> {
  const sides: Side[] = ['ours', 'peer'];
  const state: ComparisonState = {
    results: o.scenarios.map((scenario) => ({
      scenario,
      label: scenarioLabel(scenario),
      ours: [],
      peer: [],
      measures: measuresOf(scenario, [], []),
    })),
    models: { ours: { asked: null, listed: [], answered: [] }, peer: { asked: null, listed: [], answered: [] } },
    probes: { ours: null, peer: null },
    agentSizes: {},
    estimateS: null,
    notes: [],
    interrupted: false,
  };
  const note = (line: string) => {
    state.notes.push(line);
    log(`note: ${line}`);
  };
  for (const side of sides) {
    const t = o[side];
    try {
      state.models[side].listed = await listModels(t);
    } catch (err) {
      note(`${t.name}: ${(err as Error).message}`);
    }
    state.models[side].asked = t.model ?? state.models[side].listed[0] ?? null;
    if (t.model && state.models[side].listed.length > 0 && !state.models[side].listed.includes(t.model))
      note(`${t.name} lists ${state.models[side].listed.join(', ')}, not the model asked for, ${t.model}`);
  }
  const target = (side: Side) => ({ baseUrl: o[side].baseUrl, apiKey: o[side].apiKey, model: state.models[side].asked ?? 'default' });
  for (const s of o.scenarios) {
    if (s.kind !== 'agent' || state.agentSizes[s.promptTokens]) continue;
    log(`sizing a ${s.promptTokens}-token agent prompt (three short requests)`);
    for (const side of sides) {
      try {
        state.agentSizes[s.promptTokens] = await sizeAgentPrompt(target(side), s.promptTokens, o.timeout, o.signal);
        break;
      } catch (err) {
        note(`${o[side].name}: ${(err as Error).message}`);
      }
    }
    // Neither server answered: a guess of about two tokens a word, and the runs will count the failures.
    state.agentSizes[s.promptTokens] ??= { systemWords: Math.round(s.promptTokens / 10), tools: Math.max(1, Math.round(s.promptTokens / 200)) };
  }
  log('probing both servers with one short request each, for an estimate of the duration');
  const inputs = o.scenarios.flatMap((s) => (s.kind === 'load' ? [s.inputLen] : []));
  for (const side of sides) state.probes[side] = await probeServer(target(side), Math.min(128, ...inputs), o.timeout, o.signal);
  const plan = Array.from({ length: o.rounds }, (_, round) =>
    o.scenarios.flatMap((s, i) => (round % 2 === 0 ? sides : [...sides].reverse()).map((side) => ({ round, i, s, side }))),
  ).flat();
  const estimates = plan.map(
    (p) => estimateRunS(p.s, state.probes[p.side] ?? state.probes.ours ?? state.probes.peer, o.numPrompts) + (o.idleWaitS > 0 ? 0.5 : 0),
  );
  state.estimateS = estimates.every((e) => Number.isFinite(e)) ? estimates.reduce((a, b) => a + b, 0) : null;
  log(
    state.estimateS === null
      ? `${plan.length} runs; no estimate of their duration (neither server answered the probe)`
      : `${plan.length} runs (${o.rounds} round${o.rounds === 1 ? '' : 's'} × ${o.scenarios.length} scenarios × 2 servers), about ${formatDuration(state.estimateS)} in all (from a probe: ${sides.map((side) => `${o[side].name} ${state.probes[side] ? `${state.probes[side].prefillTokS.toFixed(0)} prompt tok/s, ${state.probes[side].tpotMs.toFixed(0)} ms per output token` : 'no answer'}`).join('; ')}); long prompts may take longer`,
  );
  const pids = sides.map((side) => o[side].pid).filter((p): p is number => p !== null);
  if (pids.length < 2) note("a server's PID is unknown: its CPU time is not measured, and other processes' CPU share is not reported");
  const started = performance.now();
  let estimatedDone = 0;
  for (const [k, { round, i, s, side }] of plan.entries()) {
    if (o.signal?.aborted) break;
    const t = o[side];
    const idleWait = o.idleWaitS > 0 ? await waitForIdle(pids, o.idleThreshold, o.idleWaitS, 0.5, o.signal) : null;
    if (idleWait && !idleWait.idle)
      note(
        `round ${round + 1}, ${state.results[i].label}, ${t.name}: other processes still used ${(idleWait.others * 100).toFixed(0)}% of the machine after ${idleWait.waitedS.toFixed(0)} s; measured anyway`,
      );
    const before = loadSnapshot(pids);
    const runStarted = performance.now();
    const startedAt = new Date().toISOString();
    const seed = o.seed + 7919 * round + 31 * i;
    let record: Omit<RunRecord, 'round' | 'side' | 'startedAt' | 'durationS' | 'idleWait' | 'otherCpuShare' | 'clientCpuShare' | 'serverCpuS'>;
    if (s.kind === 'load') {
      const { levels } = await runLoadBench({
        ...target(side),
        endpoint: 'completions',
        inputLen: s.inputLen,
        outputLen: s.outputLen,
        numPrompts: requestsOf(s, o.numPrompts),
        concurrency: [s.concurrency],
        requestRate: null,
        seed,
        timeout: o.timeout,
        signal: o.signal,
      });
      const level = levels[0];
      record = { completed: level.completed, failed: level.failed, failures: level.failures, errors: level.errors, models: level.models, level };
      // A server that reports no usage is counted by its streamed chunks, which may merge or hold back tokens.
      if (level.completed > 0 && level.meanOutputTokens !== s.outputLen)
        note(
          `${t.name} returned ${level.meanOutputTokens.toFixed(1)} tokens per request on average in ${state.results[i].label}, not ${s.outputLen} (no usage in its stream, or ignore_eos not honoured)`,
        );
    } else {
      const turns = await runAgentTurns(target(side), state.agentSizes[s.promptTokens], seed, s.outputLen, o.timeout, o.signal);
      const ok = turns.filter((x) => x.ok);
      record = {
        completed: ok.length,
        failed: turns.length - ok.length,
        failures: countFailures(turns.map((x) => x.failure)),
        errors: turns.flatMap((x) => (x.error ? [x.error] : [])),
        models: [...new Set(turns.flatMap((x) => (x.model ? [x.model] : [])))],
        turns,
      };
    }
    // A run cut short by an interruption measured nothing whole: it is left out.
    if (o.signal?.aborted) break;
    const after = loadSnapshot(pids);
    const load = before && after ? loadBetween(before, after) : null;
    const pidIndex = t.pid === null ? -1 : pids.indexOf(t.pid);
    const run: RunRecord = {
      round: round + 1,
      side,
      startedAt,
      durationS: (performance.now() - runStarted) / 1000,
      idleWait,
      otherCpuShare: load && pids.length === 2 ? load.others : null,
      clientCpuShare: load ? load.self : null,
      serverCpuS: load && pidIndex >= 0 ? load.known[pidIndex] : null,
      ...record,
    };
    const result = state.results[i];
    result[side].push(run);
    result.measures = measuresOf(s, result.ours, result.peer);
    const models = state.models[side];
    for (const m of run.models) {
      if (models.answered.includes(m)) continue;
      models.answered.push(m);
      if (models.asked !== null && m !== models.asked) note(`${t.name} answered with model ${m}, not ${models.asked} as asked`);
    }
    if (run.failed > 0)
      note(
        `round ${round + 1}, ${result.label}, ${t.name}: ${run.failed} of ${run.failed + run.completed} requests failed (${Object.entries(
          run.failures,
        )
          .map(([kind, n]) => `${n} ${kind}`)
          .join(', ')}): ${run.errors.slice(0, 2).join('; ')}`,
      );
    onRun(state);
    estimatedDone += estimates[k];
    const elapsed = (performance.now() - started) / 1000;
    const left =
      state.estimateS === null ? '' : `, about ${formatDuration(((state.estimateS - estimatedDone) * elapsed) / Math.max(estimatedDone, 1e-9))} left`;
    const summary = run.level
      ? run.level.completed === 0
        ? 'no request completed'
        : `${run.level.outputThroughput.toFixed(1)} output tok/s, TTFT mean ${run.level.ttftMs.mean.toFixed(0)} ms, TPOT mean ${run.level.tpotMs.mean.toFixed(1)} ms`
      : (run.turns ?? [])
          .map((x, n) => `turn ${n + 1}: ${x.ok ? `TTFT ${x.ttftMs.toFixed(0)} ms (${x.cachedTokens}/${x.promptTokens} cached)` : x.failure}`)
          .join(', ');
    const cpu = run.otherCpuShare === null ? '' : `; others ${(run.otherCpuShare * 100).toFixed(0)}% CPU`;
    log(
      `[${k + 1}/${plan.length}] round ${round + 1}, ${result.label}, ${t.name}: ${summary}${run.failed > 0 ? `; ${run.failed} failed` : ''}${cpu} (${formatDuration(elapsed)} so far${left})`,
    );
  }
  state.interrupted = o.signal?.aborted ?? false;
  return state;
}
