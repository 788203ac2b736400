/** The plain data of a comparison (bench:compare): its scenarios, runs and results. */
import type { AgentSize, AgentTurn } from './agent_scenario.js';
import type { LevelResult } from './load_bench.js';
import type { IdleWait } from './proc_stats.js';

/** A quick request's timings: what the duration estimate starts from. */
export interface Probe {
  prefillTokS: number;
  tpotMs: number;
}

/**
 * One workload of a comparison: fixed-length random prompts at a fixed concurrency
 * (`numPrompts` null: the comparison's count), or an agent's two turns.
 */
export type Scenario =
  | { kind: 'load'; inputLen: number; outputLen: number; concurrency: number; numPrompts: number | null }
  | { kind: 'agent'; promptTokens: number; outputLen: number };

/** A server under comparison; `pid` when its process is known (started by us, or given). */
export interface CompareTarget {
  name: string;
  baseUrl: string;
  model: string | null;
  apiKey: string | null;
  pid: number | null;
}

export type Side = 'ours' | 'peer';

/** One scenario run on one server. */
export interface RunRecord {
  round: number;
  side: Side;
  startedAt: string;
  durationS: number;
  /** The wait for an idle machine before the run (null without /proc or when not waiting). */
  idleWait: IdleWait | null;
  /** Share of the machine other processes used during the run (null without /proc or a server's PID). */
  otherCpuShare: number | null;
  /** Share of the machine the load generator (this process) used during the run. */
  clientCpuShare: number | null;
  /** CPU seconds the server used during the run (null when its PID is unknown). */
  serverCpuS: number | null;
  completed: number;
  failed: number;
  failures: Record<string, number>;
  errors: string[];
  /** The models the server said it ran. */
  models: string[];
  level?: LevelResult;
  turns?: AgentTurn[];
}

export interface MeasureRow {
  key: string;
  label: string;
  higherIsBetter: boolean;
  ours: number;
  peer: number;
  ratio: number;
}

export interface ScenarioResult {
  scenario: Scenario;
  label: string;
  ours: RunRecord[];
  peer: RunRecord[];
  /** Per measure: the median over each server's runs that completed, and ours / peer. */
  measures: MeasureRow[];
}

export interface ServerModels {
  /** The model id asked for (given, or the first of GET /models). */
  asked: string | null;
  /** What GET /models listed. */
  listed: string[];
  /** What the server's answers named. */
  answered: string[];
}

/** Everything a comparison found so far: what the reports are written from, at any time. */
export interface ComparisonState {
  results: ScenarioResult[];
  models: Record<Side, ServerModels>;
  probes: Record<Side, Probe | null>;
  agentSizes: Record<number, AgentSize>;
  estimateS: number | null;
  notes: string[];
  interrupted: boolean;
}

/** `128 / 128, 8` (input / output, concurrency), `4,096 / 128, 1 (2 requests)`, `agent 12,000 / 32`. */
export function scenarioLabel(s: Scenario): string {
  const n = (x: number) => x.toLocaleString('en-US');
  return s.kind === 'agent'
    ? `agent ${n(s.promptTokens)} / ${n(s.outputLen)}`
    : `${n(s.inputLen)} / ${n(s.outputLen)}, ${s.concurrency}${s.numPrompts === null ? '' : ` (${s.numPrompts} request${s.numPrompts === 1 ? '' : 's'})`}`;
}

/** `45 s`, `12 min`, `1 h 20 min`. */
export function formatDuration(s: number): string {
  if (s < 90) return `${Math.max(0, Math.round(s))} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** Requests of a load run: the scenario's own count, else at least `numPrompts` and two per client. */
export const requestsOf = (s: Scenario & { kind: 'load' }, numPrompts: number) => s.numPrompts ?? Math.max(numPrompts, 2 * s.concurrency);
