#!/usr/bin/env node
/**
 * Three replicas behind HAProxy (Debian's `haproxy`, health-checked on /health, least
 * connections, L7 retries), a load run through it with `qwen3-serve bench`, and during
 * the run one replica restarted (SIGTERM, drained, started again) and another killed
 * (SIGKILL, started again):
 *   npm run cluster:test [-- --model DIR --requests 120 --concurrency 6 --output-len 64]
 * Prints requests sent, completed and failed by kind, latency before and during the
 * restarts, and when HAProxy stopped routing to the draining replica; exits 1 if a
 * request hung or failed in a way a client could not retry, or if the balancer still
 * routed to the replica when it stopped answering.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import type { LevelResult } from '../src/bench/load_bench.js';
import { summarize } from '../src/bench/load_bench.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    requests: { type: 'string', default: '120' },
    concurrency: { type: 'string', default: '6' },
    'input-len': { type: 'string', default: '64' },
    'output-len': { type: 'string', default: '64' },
    'port-base': { type: 'string', default: '8200' },
    threads: { type: 'string', default: '1' },
    out: { type: 'string', default: 'bench-results/cluster' },
  },
});
const log = (m: string) => process.stderr.write(`${m}\n`);
const CLI = new URL('../src/cli.js', import.meta.url).pathname;
const base = Number(values['port-base']);
const lbPort = base;
const statsPort = base + 99;
const replicaPorts = [base + 1, base + 2, base + 3];
const names = ['r1', 'r2', 'r3'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (spawnSync('haproxy', ['-v']).error) {
  log("cluster:test needs HAProxy: install Debian's package (apt-get install haproxy) and run it again.");
  process.exit(2);
}

const work = mkdtempSync(join(tmpdir(), 'qwen3-cluster-'));
const processes = new Set<ChildProcess>();
const cleanup = () => {
  for (const p of processes) p.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

/** Starts replica i; resolves with its process once /health answers 200. */
async function startReplica(i: number): Promise<ChildProcess> {
  const args = [
    CLI,
    'serve',
    '--port',
    String(replicaPorts[i]),
    '--threads',
    values.threads!,
    '--shutdown-timeout',
    '10',
    // HAProxy checks every 500 ms: a replica with nothing running must not close its
    // port before the balancer has seen /health turn 503.
    '--shutdown-delay',
    '1',
    '--cache-dir',
    join(work, 'cache'),
    '--log-level',
    'warn',
  ];
  if (values.model) args.push('--model', values.model);
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  processes.add(p);
  p.once('exit', () => processes.delete(p));
  for (let t = 0; t < 1200; t++) {
    if (p.exitCode !== null) throw new Error(`replica ${names[i]} exited with ${p.exitCode} while starting`);
    const ok = await fetch(`http://127.0.0.1:${replicaPorts[i]}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return p;
    await sleep(250);
  }
  throw new Error(`replica ${names[i]} did not become ready`);
}

const haproxyConfig = `
global
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 600s
  timeout server 600s
  timeout http-request 30s
  # A refused (503 while draining) or unanswered request is sent again, to another
  # replica: the body is buffered so that it can be.
  option http-buffer-request
  retries 3
  retry-on conn-failure empty-response 503
  option redispatch 1
frontend api
  bind 127.0.0.1:${lbPort}
  default_backend replicas
backend replicas
  balance leastconn
  option httpchk GET /health
  http-check expect status 200
  default-server inter 500ms fall 1 rise 2
${replicaPorts.map((p, i) => `  server ${names[i]} 127.0.0.1:${p} check`).join('\n')}
listen stats
  bind 127.0.0.1:${statsPort}
  stats enable
  stats uri /stats
`;

/** HAProxy's view of each replica: status (UP/DOWN/…) and sessions so far. */
async function haproxyStats(): Promise<Map<string, { status: string; sessions: number }>> {
  const csv = await (await fetch(`http://127.0.0.1:${statsPort}/stats;csv`)).text();
  const [header, ...rows] = csv.trim().split('\n');
  const cols = header.replace(/^# /, '').split(',');
  const at = (name: string) => cols.indexOf(name);
  const out = new Map<string, { status: string; sessions: number }>();
  for (const row of rows) {
    const f = row.split(',');
    if (f[at('pxname')] === 'replicas' && names.includes(f[at('svname')]))
      out.set(f[at('svname')], { status: f[at('status')], sessions: Number(f[at('stot')]) });
  }
  return out;
}

async function waitStatus(name: string, want: (status: string, sessions: number) => boolean, timeoutMs = 120_000): Promise<number> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    // HAProxy may not listen yet.
    const s = (await haproxyStats().catch(() => new Map<string, { status: string; sessions: number }>())).get(name);
    if (s && want(s.status, s.sessions)) return Date.now();
    await sleep(50);
  }
  throw new Error(`HAProxy never saw ${name} change as expected`);
}

const replicas: ChildProcess[] = [];
log(`starting 3 replicas (${values.model ?? 'the demo model'}) on ports ${replicaPorts.join(', ')}`);
// The first replica exports the demo model into the shared cache; the others then load it together.
replicas.push(await startReplica(0));
replicas.push(...(await Promise.all([startReplica(1), startReplica(2)])));
const cfg = join(work, 'haproxy.cfg');
writeFileSync(cfg, haproxyConfig);
const lb = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'inherit'] });
processes.add(lb);
for (const n of names) await waitStatus(n, (s) => s === 'UP', 30_000);
log(`HAProxy on 127.0.0.1:${lbPort}: all replicas UP`);

// The load: qwen3-serve bench through the balancer.
const out = values.out!;
mkdirSync(dirname(out) || '.', { recursive: true });
const benchArgs = [
  CLI,
  'bench',
  '--base-url',
  `http://127.0.0.1:${lbPort}/v1`,
  '--num-prompts',
  values.requests!,
  '--concurrency',
  values.concurrency!,
  '--input-len',
  values['input-len']!,
  '--output-len',
  values['output-len']!,
  '--timeout',
  '120',
  '--out',
  `${out}-load`,
];
const bench = spawn(process.execPath, benchArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
processes.add(bench);
const benchDone = new Promise<number>((resolve) => bench.once('exit', (code) => resolve(code ?? 1)));
const events: Record<string, number> = {};

// Restart r1 gracefully once the load reaches it.
await waitStatus('r1', (_, sessions) => sessions > 0);
const r1Sessions = (await haproxyStats()).get('r1')!.sessions;
events.sigterm = Date.now();
replicas[0].kill('SIGTERM');
const r1Exit = new Promise<number>((resolve) => replicas[0].once('exit', () => resolve(Date.now())));
events.r1Down = await waitStatus('r1', (s) => s.startsWith('DOWN'));
const sessionsAtDown = (await haproxyStats()).get('r1')!.sessions;
events.r1Exit = await r1Exit;
const sessionsAtExit = (await haproxyStats()).get('r1')!.sessions;
log(`r1: SIGTERM; HAProxy marked it DOWN after ${events.r1Down - events.sigterm} ms; it exited after ${events.r1Exit - events.sigterm} ms`);
const r1Back = startReplica(0);

// Then, while r1 loads again, kill r2 hard, and start it again.
events.sigkill = Date.now();
replicas[1].kill('SIGKILL');
events.r2Down = await waitStatus('r2', (s) => s.startsWith('DOWN'));
const r2Back = startReplica(1);
replicas[0] = await r1Back;
events.r1Up = await waitStatus('r1', (s) => s === 'UP');
log(`r1: started again, UP after ${events.r1Up - events.sigterm} ms from the SIGTERM`);
replicas[1] = await r2Back;
events.r2Up = await waitStatus('r2', (s) => s === 'UP');
log(`r2: SIGKILL; DOWN after ${events.r2Down - events.sigkill} ms, UP again after ${events.r2Up - events.sigkill} ms`);

const benchCode = await benchDone;
const report = JSON.parse(readFileSync(`${out}-load.json`, 'utf8')) as { levels: LevelResult[] };
const level = report.levels[0];
const reqs = level.requests;
const inWindow = (at: number, from: number, to: number) => at >= from && at <= to;
const during = reqs.filter((r) => inWindow(r.sentAt, events.sigterm, Math.max(events.r1Up, events.r2Up)));
const before = reqs.filter((r) => r.sentAt < events.sigterm);
const ms = (xs: number[]) => {
  const s = summarize(xs);
  return `median ${s.median.toFixed(0)} / p99 ${s.p99.toFixed(0)} / max ${s.max.toFixed(0)} ms`;
};
// A client can retry these: a refusal saying so, the balancer's own 502/503, a connection
// cut by the killed replica. A 500, another 4xx or a request that hung could not be.
const retryable = new Set(['HTTP 502', 'HTTP 503', 'network', 'stream cut']);
const unclean = Object.entries(level.failures).filter(([k]) => !retryable.has(k));
const summary = [
  `| requests sent | completed | failed (by kind) | hung |`,
  `|---|---|---|---|`,
  `| ${reqs.length} | ${level.completed} | ${
    level.failed === 0
      ? 0
      : Object.entries(level.failures)
          .map(([k, n]) => `${n} ${k}`)
          .join(', ')
  } | ${level.failures.timeout ?? 0} |`,
  '',
  `| when | requests | TTFT | E2E |`,
  `|---|---|---|---|`,
  `| before the restarts | ${before.length} | ${ms(before.filter((r) => r.ok).map((r) => r.ttftMs))} | ${ms(before.filter((r) => r.ok).map((r) => r.e2eMs))} |`,
  `| during (SIGTERM of r1 to both back up, ${((Math.max(events.r1Up, events.r2Up) - events.sigterm) / 1000).toFixed(1)} s) | ${during.length} | ${ms(during.filter((r) => r.ok).map((r) => r.ttftMs))} | ${ms(during.filter((r) => r.ok).map((r) => r.e2eMs))} |`,
  '',
  `r1 (SIGTERM): HAProxy marked it DOWN ${events.r1Down - events.sigterm} ms after the signal; it exited ${events.r1Exit - events.sigterm} ms after; sessions routed to it: ${r1Sessions} before the signal, ${sessionsAtDown} when marked DOWN, ${sessionsAtExit} when it exited; back UP after ${((events.r1Up - events.sigterm) / 1000).toFixed(1)} s.`,
  `r2 (SIGKILL): DOWN ${events.r2Down - events.sigkill} ms after the kill; back UP after ${((events.r2Up - events.sigkill) / 1000).toFixed(1)} s.`,
].join('\n');
process.stdout.write(`\n${summary}\n`);
writeFileSync(`${out}.md`, `${summary}\n`);
writeFileSync(
  `${out}.json`,
  JSON.stringify(
    {
      events,
      failures: level.failures,
      sent: reqs.length,
      completed: level.completed,
      sessions: { beforeSignal: r1Sessions, atDown: sessionsAtDown, atExit: sessionsAtExit },
    },
    null,
    2,
  ),
);

const problems: string[] = [];
if (benchCode !== 0) problems.push(`qwen3-serve bench exited with ${benchCode}`);
if (unclean.length > 0) problems.push(`failures a client cannot retry: ${unclean.map(([k, n]) => `${n} ${k}`).join(', ')}`);
if (level.completed + level.failed !== Number(values.requests)) problems.push('requests went missing');
if (!(events.r1Down < events.r1Exit)) problems.push('HAProxy still routed to r1 when it stopped answering');
if (sessionsAtExit !== sessionsAtDown) problems.push(`r1 took ${sessionsAtExit - sessionsAtDown} new requests after HAProxy marked it DOWN`);
lb.kill('SIGTERM');
for (const r of replicas) r.kill('SIGTERM');
if (problems.length > 0) {
  log(`cluster:test FAILED: ${problems.join('; ')}`);
  process.exit(1);
}
log(`cluster:test passed; wrote ${out}.md and ${out}.json`);
process.exit(0);
