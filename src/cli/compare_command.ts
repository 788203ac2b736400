import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { type CompareTarget, type ComparisonState, parseScenarios, runComparison, type Side } from '../bench/compare.js';
import { markdownReport, type ServerReport } from '../bench/compare_report.js';
import { TreeMonitor } from '../bench/proc_stats.js';
import { type LaunchedServer, launchServer } from '../bench/server_process.js';
import { AbortedError, AppError, ConfigError } from '../errors.js';
import { decimal, type Flags, formatHelp, parseCommand, wholeNumber } from './flags.js';

const url = z
  .string()
  .url()
  .transform((s) => s.replace(/\/+$/, ''));

const scenarioList = z.string().transform((s, ctx) => {
  try {
    return parseScenarios(s);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

export const COMPARE_FLAGS = {
  'ours-url': {
    type: 'string',
    default: 'http://127.0.0.1:8000/v1',
    help: 'API base of our server, running already (unless `--ours-serve`)',
    schema: url,
  },
  'ours-serve': {
    type: 'string',
    help: 'Start our server with these `qwen3-serve serve` flags (e.g. "--model /path/to/export --kv-cache-prefault") on a free port, and stop it at the end',
    schema: z.string().min(1).optional(),
  },
  'peer-url': {
    type: 'string',
    help: 'API base of the other OpenAI-compatible server, running already (llama-server: http://127.0.0.1:8080/v1)',
    schema: url.optional(),
  },
  'peer-command': {
    type: 'string',
    help: 'Start the other server with this command line (e.g. "llama-server -m model.gguf -t 2 -np 8 -c 16384"): `--host 127.0.0.1 --port <free port>` is appended, or `{port}` in it replaced; stopped at the end',
    schema: z.string().min(1).optional(),
  },
  'ours-pid': {
    type: 'string',
    help: "Our running server's PID, for its memory and CPU time (known when started here)",
    schema: wholeNumber(1).optional(),
  },
  'peer-pid': { type: 'string', help: "The other running server's PID, likewise", schema: wholeNumber(1).optional() },
  'ours-name': { type: 'string', default: 'qwen3-serve', help: 'Our column in the table', schema: z.string().min(1) },
  'peer-name': { type: 'string', default: 'peer', help: "The other server's column in the table", schema: z.string().min(1) },
  'ours-model': { type: 'string', defaultText: 'the first of its GET /models', help: 'Model id on our server', schema: z.string().optional() },
  'peer-model': { type: 'string', defaultText: 'the first of its GET /models', help: 'Model id on the other server', schema: z.string().optional() },
  'ours-api-key': { type: 'string', help: 'Bearer token for our server', schema: z.string().optional() },
  'peer-api-key': { type: 'string', help: 'Bearer token for the other server', schema: z.string().optional() },
  scenarios: {
    type: 'string',
    default: '128:128:1,128:128:4,128:128:8,1024:128:1,1024:128:8',
    help: 'Workloads, comma-separated: input:output:concurrency[:requests] (token-id prompts on /completions, ignore_eos), or agent:tokens[:output] (a first chat request of that many tokens: a system prompt and tool definitions, then a follow-up turn resending the history; TTFT of each)',
    schema: scenarioList,
  },
  'long-context': {
    type: 'string',
    help: 'Prompt lengths (comma-separated, e.g. 4096,16384) each adding a scenario of 128 output tokens at concurrency 1, two requests',
    schema: z
      .string()
      .regex(/^\d+(,\d+)*$/, 'expected numbers separated by commas')
      .transform((s) => s.split(',').map(Number))
      .optional(),
  },
  rounds: {
    type: 'string',
    default: '2',
    help: 'Alternated rounds; the table reports the median of each server over them',
    schema: wholeNumber(1, 100),
  },
  'num-prompts': { type: 'string', default: '8', help: 'Requests per scenario run (at least two per client)', schema: wholeNumber(1) },
  seed: { type: 'string', default: '0', help: 'Seed of the random prompts', schema: wholeNumber(0) },
  timeout: { type: 'string', default: '600', help: 'Seconds per request', schema: wholeNumber(1) },
  'start-timeout': { type: 'string', default: '900', help: 'Seconds a started server has to answer /health', schema: wholeNumber(1) },
  'idle-threshold': {
    type: 'string',
    default: '0.05',
    help: "Before each run, wait until other processes use at most this share of the machine's CPUs",
    schema: decimal.pipe(z.number().min(0).max(1)),
  },
  'idle-wait': { type: 'string', default: '120', help: 'Seconds to wait for that at most (0: do not wait)', schema: wholeNumber(0) },
  out: {
    type: 'string',
    default: 'bench-results/compare',
    help: "Writes <out>.json and <out>.md (after every run), and started servers' output to <out>.<name>.log",
    schema: z.string(),
  },
} satisfies Flags;

export const COMPARE_HELP = formatHelp(
  'qwen3-serve compare (--peer-url URL | --peer-command CMD) [--ours-url URL | --ours-serve FLAGS] [--scenarios 128:128:1,1024:128:8,agent:12000] [--rounds 2]',
  'Runs `qwen3-serve bench` against our server and another OpenAI-compatible server (llama-server, vLLM, Ollama), alternately and one at a time, and prints each measure of each workload side by side with the ratio ours / theirs (npm run bench:compare -- …). It can start both servers itself, reports their peak memory and CPU time, waits for an idle machine before each run, and keeps going past failed requests.',
  COMPARE_FLAGS,
);

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Command lines as flag values: `--ours-serve "--model x"` would otherwise read as a flag without its value. */
const COMMAND_LINE_FLAGS = new Set(['--ours-serve', '--peer-command']);

export async function compareCommand(argv: string[]): Promise<void> {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) args.push(COMMAND_LINE_FLAGS.has(argv[i]) && i + 1 < argv.length ? `${argv[i]}=${argv[++i]}` : argv[i]);
  const o = parseCommand(COMPARE_FLAGS, args, COMPARE_HELP);
  if (!o) return;
  if (!o['peer-url'] && !o['peer-command'])
    throw new ConfigError('--peer-url or --peer-command is required: the server to compare with, running or to start');
  if (o['peer-url'] && o['peer-command']) throw new ConfigError('give --peer-url or --peer-command, not both');
  const scenarios = [
    ...o.scenarios,
    ...(o['long-context'] ?? []).map((n) => ({ kind: 'load' as const, inputLen: n, outputLen: 128, concurrency: 1, numPrompts: 2 })),
  ];
  const log = (line: string) => process.stderr.write(`${line}\n`);
  mkdirSync(dirname(o.out) || '.', { recursive: true });

  const cli = new URL('../cli.js', import.meta.url).pathname;
  const commands: Record<Side, string | null> = {
    ours: o['ours-serve'] ? `${quote(process.execPath)} ${quote(cli)} serve ${o['ours-serve']}` : null,
    peer: o['peer-command'] ?? null,
  };
  const targets: Record<Side, CompareTarget> = {
    ours: {
      name: o['ours-name'],
      baseUrl: o['ours-url'],
      model: o['ours-model'] ?? null,
      apiKey: o['ours-api-key'] ?? null,
      pid: o['ours-pid'] ?? null,
    },
    peer: {
      name: o['peer-name'],
      baseUrl: o['peer-url'] ?? '',
      model: o['peer-model'] ?? null,
      apiKey: o['peer-api-key'] ?? null,
      pid: o['peer-pid'] ?? null,
    },
  };
  const launched: Partial<Record<Side, LaunchedServer>> = {};
  const monitors: Partial<Record<Side, TreeMonitor>> = {};
  const controller = new AbortController();
  const onSignal = (sig: string) => {
    if (controller.signal.aborted) {
      log(`${sig} again: stopping at once`);
      process.exit(130);
    }
    log(`${sig}: stopping; the reports keep what ran (${sig} again to stop at once)`);
    controller.abort();
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  const started = performance.now();
  let state: ComparisonState | null = null;
  let error: string | null = null;
  // What the run was asked for: written with every report, and what runComparison measures.
  const options = {
    scenarios,
    rounds: o.rounds,
    numPrompts: o['num-prompts'],
    seed: o.seed,
    timeout: o.timeout,
    idleThreshold: o['idle-threshold'],
    idleWaitS: o['idle-wait'],
  };
  const write = (final: boolean) => {
    const report = (side: Side): ServerReport => ({
      name: targets[side].name,
      baseUrl: targets[side].baseUrl,
      command: launched[side]?.command ?? null,
      startS: launched[side]?.startS ?? null,
      exited: launched[side]?.exited ?? null,
      process: monitors[side]?.[final ? 'stop' : 'sample']() ?? null,
    });
    const servers = { ours: report('ours'), peer: report('peer') };
    const s: ComparisonState = state ?? {
      results: [],
      models: { ours: { asked: null, listed: [], answered: [] }, peer: { asked: null, listed: [], answered: [] } },
      probes: { ours: null, peer: null },
      agentSizes: {},
      estimateS: null,
      notes: [],
      interrupted: controller.signal.aborted,
    };
    const heading = `${servers.ours.name} vs ${servers.peer.name}, ${o.rounds} alternated round${o.rounds === 1 ? '' : 's'}, medians; ratio = ${servers.ours.name} / ${servers.peer.name}`;
    const elapsedS = (performance.now() - started) / 1000;
    const json = { date: new Date().toISOString(), complete: final && !error && !s.interrupted, error, elapsedS, options, servers, ...s };
    writeFileSync(
      `${o.out}.json`,
      JSON.stringify(json, (k, v) => (k === 'apiKey' ? undefined : v), 2),
    );
    const md = markdownReport(heading, s, servers, error);
    writeFileSync(`${o.out}.md`, md);
    return md;
  };

  try {
    // Both load at once: the wait is the longer of the two, and nothing is measured yet.
    const starts = await Promise.allSettled(
      (['ours', 'peer'] as const).map(async (side) => {
        const command = commands[side];
        if (command === null) return;
        log(`starting ${targets[side].name}: ${command}`);
        const logFile = `${o.out}.${side}.log`;
        const server = await launchServer({
          name: targets[side].name,
          command,
          startTimeoutS: o['start-timeout'],
          logFile,
          signal: controller.signal,
        });
        launched[side] = server;
        targets[side] = { ...targets[side], baseUrl: server.baseUrl, pid: server.pid };
        log(`${targets[side].name} ready in ${server.startS.toFixed(1)} s at ${server.baseUrl} (pid ${server.pid}; its output: ${logFile})`);
      }),
    );
    for (const s of starts) if (s.status === 'rejected') throw s.reason;
    for (const side of ['ours', 'peer'] as const) {
      const pid = targets[side].pid;
      if (pid !== null) monitors[side] = new TreeMonitor(pid);
    }
    state = await runComparison({ ours: targets.ours, peer: targets.peer, ...options, signal: controller.signal }, log, (s) => {
      state = s;
      write(false);
    });
  } catch (err) {
    error = (err as Error).message;
  } finally {
    const md = write(true);
    await Promise.all(Object.values(launched).map((s) => s.stop()));
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    process.stdout.write(`\n${md}`);
    log(`wrote ${o.out}.json, ${o.out}.md`);
  }
  if (error) throw new AppError(500, 'server_error', `${error}\n(partial results in ${o.out}.json and ${o.out}.md)`);
  if (controller.signal.aborted) throw new AbortedError(`interrupted: partial results in ${o.out}.json and ${o.out}.md`);
}
