/** A comparison's Markdown: the ratio table, then the servers, the failures and the machine's load. */
import type { ComparisonState, ScenarioResult, ServerModels, Side } from './compare_types.js';
import type { TreeStats } from './proc_stats.js';

/** What the report says of one server beyond its runs. */
export interface ServerReport {
  name: string;
  baseUrl: string;
  /** The command line the benchmark started it with (null: it was running already). */
  command: string | null;
  /** Seconds from start to ready, when the benchmark started it. */
  startS: number | null;
  /** How it ended, if it did before the benchmark stopped it. */
  exited: string | null;
  process: TreeStats | null;
}

const fmt = (x: number) => (Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) : '–');
const pct = (x: number | null) => (x === null ? '–' : `${(x * 100).toFixed(0)}%`);
const gib = (b: number | null) => (b === null ? '–' : b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(0)} MiB`);
const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** The ratio table: one row per scenario and measure, ours / peer, and whether that is better for us. */
export function comparisonTable(results: ScenarioResult[], ours: string, peer: string): string {
  const rows = [`| scenario (in / out, concurrency) | measure | ${ours} | ${peer} | ratio | better |`, '|---|---|---|---|---|---|'];
  for (const r of results) {
    for (const m of r.measures) {
      const better = !Number.isFinite(m.ratio) ? '–' : m.ratio === 1 ? 'even' : m.ratio > 1 === m.higherIsBetter ? ours : peer;
      rows.push(`| ${r.label} | ${m.label} | ${fmt(m.ours)} | ${fmt(m.peer)} | ${Number.isFinite(m.ratio) ? m.ratio.toFixed(2) : '–'} | ${better} |`);
    }
  }
  return rows.join('\n');
}

function failuresText(runs: ScenarioResult['ours']): string {
  const kinds: Record<string, number> = {};
  let ok = 0;
  for (const r of runs) {
    ok += r.completed;
    for (const [k, n] of Object.entries(r.failures)) kinds[k] = (kinds[k] ?? 0) + n;
  }
  const failed = Object.entries(kinds).map(([k, n]) => `${n} ${k}`);
  return `${ok} ok${failed.length ? `, ${failed.join(', ')}` : ''}`;
}

const maxOf = (xs: Array<number | null>) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? Math.max(...v) : null;
};

/** Per scenario and server: runs, requests that completed and failed (by kind), others' CPU share, the server's CPU time. */
export function runsTable(results: ScenarioResult[], names: Record<Side, string>): string {
  const rows = [
    "| scenario | server | runs | requests | others' CPU (max over runs) | waited for idle (max) | server CPU s (sum) |",
    '|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    for (const side of ['ours', 'peer'] as const) {
      const runs = r[side];
      const cpu = runs.map((x) => x.serverCpuS).filter((x): x is number => x !== null);
      const waited = maxOf(runs.map((x) => x.idleWait?.waitedS ?? null));
      rows.push(
        `| ${r.label} | ${names[side]} | ${runs.length} | ${failuresText(runs)} | ${pct(maxOf(runs.map((x) => x.otherCpuShare)))} | ${waited === null ? '–' : `${waited.toFixed(1)} s`} | ${cpu.length ? cpu.reduce((a, b) => a + b, 0).toFixed(1) : '–'} |`,
      );
    }
  }
  return rows.join('\n');
}

export function serversTable(servers: Record<Side, ServerReport>, models: Record<Side, ServerModels>): string {
  const rows = [
    '| server | URL | started as | PID | model asked | GET /models | answered with | RSS when ready | peak RSS | CPU s in the run |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const side of ['ours', 'peer'] as const) {
    const s = servers[side];
    const m = models[side];
    const started = s.command === null ? 'running already' : `\`${cell(s.command)}\` (ready in ${s.startS?.toFixed(1)} s)`;
    rows.push(
      `| ${s.name} | ${s.baseUrl} | ${started}${s.exited ? `; ended: ${s.exited}` : ''} | ${s.process?.pid ?? '–'} | ${m.asked ?? '–'} | ${m.listed.join(', ') || '–'} | ${m.answered.join(', ') || '–'} | ${gib(s.process?.rssAtStartBytes ?? null)} | ${gib(s.process?.peakRssBytes ?? null)} | ${s.process?.cpuS?.toFixed(1) ?? '–'} |`,
    );
  }
  return rows.join('\n');
}

/** The whole Markdown report. */
export function markdownReport(heading: string, state: ComparisonState, servers: Record<Side, ServerReport>, error: string | null): string {
  const names = { ours: servers.ours.name, peer: servers.peer.name };
  const status = error ? `**Stopped by an error:** ${error}\n\n` : state.interrupted ? '**Interrupted: partial results.**\n\n' : '';
  const notes = state.notes.length ? `\n\nNotes:\n\n${state.notes.map((n) => `- ${cell(n)}`).join('\n')}` : '';
  return `${heading}\n\n${status}${comparisonTable(state.results, names.ours, names.peer)}\n\nServers (peak RSS: resident memory of the process and its children):\n\n${serversTable(servers, state.models)}\n\nRuns (others' CPU: processes other than the two servers and the load generator, as a share of the whole machine):\n\n${runsTable(state.results, names)}${notes}\n`;
}
