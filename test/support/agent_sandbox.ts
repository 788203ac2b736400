/**
 * A sandbox for end-to-end runs of real coding-agent CLIs against a real qwen3-serve.
 *
 * `runAgentSession(spec)` starts `agent_sandbox_driver.js` in fresh network, mount and pid
 * namespaces (`unshare`). Inside, only loopback exists: every other IPv4/IPv6 address is
 * routed to `lo` (AnyIP) so a connection to it lands on a recorder instead of the Internet,
 * /etc/resolv.conf points at a DNS recorder that answers NXDOMAIN, the server (optional)
 * listens on 127.0.0.1, and a recording reverse proxy in front of it is the agent's `{BASE}`.
 * The driver writes a JSON report, which `runAgentSession` returns; `assertLoopbackOnly`
 * fails a test whose client looked up or connected to anything but loopback.
 */

import { AssertionError } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** What to run in the sandbox. `{BASE}` in `command`, `env` values and `files` contents becomes the proxy's URL. */
export interface AgentSessionSpec {
  /** The agent's argv, e.g. `[process.execPath, '-e', script]` (no shell). */
  command: string[];
  /** Working directory of the agent (default: `home`). */
  cwd?: string;
  /** Merged over the minimal environment `{ PATH, HOME }` (no proxy variables). */
  env?: Record<string, string>;
  /** The agent's (and server's) HOME (default: a fresh temporary directory). */
  home?: string;
  /** Files written before the run: path (absolute, `~/…` under `home`, or relative to `cwd`) → content. */
  files?: Record<string, string>;
  /** Written to the agent's stdin, which is otherwise /dev/null. */
  stdin?: string;
  /** The agent's time limit; on expiry its process group is killed (default 120 s). */
  timeoutMs?: number;
  /** Model for `qwen3-serve serve --model`; absent: no server, the proxy forwards to a tiny echo server. */
  model?: string;
  /** Extra `serve` flags, e.g. `['--threads', '1', '--cache-dir', dir]`. */
  serverFlags?: string[];
  /** Extra environment for the server (merged over `{ PATH, HOME }`). */
  serverEnv?: Record<string, string>;
  /** How long the server may take to answer `/health` with 200 (the first start may export ONNX; default 600 s). */
  serverStartTimeoutMs?: number;
  /** TCP ports on which connections to non-loopback addresses are accepted and recorded (default 80 and 443). */
  recordPorts?: number[];
}

/** The spec as the driver reads it: defaults filled in and the report's path added. */
export interface DriverSpec extends Required<Omit<AgentSessionSpec, 'model' | 'stdin'>> {
  model: string | null;
  stdin: string | null;
  reportPath: string;
}

/** One request through the recording proxy. Times are milliseconds from the proxy receiving the request's headers. */
export interface Exchange {
  /** Milliseconds since the agent was started. */
  startedMs: number;
  method: string;
  /** Path with query string, as sent. */
  path: string;
  requestHeaders: IncomingHttpHeaders;
  /** The body parsed as JSON when it is JSON, else its text; null when empty. */
  requestBody: unknown;
  /** null when no response arrived (upstream failure or client gone first). */
  status: number | null;
  responseHeaders: IncomingHttpHeaders;
  /** The response body as UTF-8 text (an SSE stream's whole text). */
  responseBody: string;
  headersMs: number | null;
  firstByteMs: number | null;
  totalMs: number | null;
  /** The client closed the connection before the response ended. */
  aborted?: boolean;
  /** Why the exchange failed, when it did. */
  error?: string;
}

export interface DnsQuery {
  name: string;
  /** `A`, `AAAA`, `HTTPS`, … or `TYPE<n>`. */
  type: string;
}

export interface OutboundConnection {
  /** The address the client dialled (IPv4-mapped IPv6 shown as IPv4). */
  address: string;
  port: number;
  /** TLS server name from the ClientHello. */
  sni?: string;
  /** HTTP `Host` header of a plain-text request. */
  host?: string;
}

export interface AgentSessionReport {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** The proxy's URL that replaced `{BASE}`. */
  baseUrl: string;
  exchanges: Exchange[];
  dnsQueries: DnsQuery[];
  outboundConnections: OutboundConnection[];
  /** Tail of the server's stdout and stderr ('' without a server). */
  serverLog: string;
  /** The server's exit code after SIGTERM (null without a server or when it had to be killed). */
  serverExitCode: number | null;
  timings: { setupMs: number; serverStartMs: number | null; agentMs: number; totalMs: number };
  /** Set when the driver itself failed (e.g. the server never became healthy); runAgentSession then throws. */
  error?: string;
}

const DRIVER = new URL('./agent_sandbox_driver.js', import.meta.url).pathname;

/** The unshare argv prefix: net for the isolation, mount for resolv.conf, pid so nothing outlives the driver. */
function unshareArgs(): string[] {
  const args = ['--net', '--mount', '--pid', '--fork', '--mount-proc', '--kill-child'];
  // Without root, a user namespace where we are root grants the capabilities for ip, mount and ports < 1024.
  if (process.getuid?.() !== 0) args.unshift('--map-root-user');
  return args;
}

function capabilityError(detail: string): Error {
  return new Error(
    `agent sandbox: cannot create network/mount/pid namespaces with unshare (${detail.trim() || 'no detail'}). ` +
      'It needs util-linux unshare and iproute2 ip, and either root or unprivileged user namespaces ' +
      '(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1, and no AppArmor/seccomp/container policy forbidding them).',
  );
}

/** null when the sandbox can be created here, else why not (lets a suite report one clear reason). */
export function probeSandbox(): string | null {
  const r = spawnSync('unshare', [...unshareArgs(), '--', 'ip', 'link', 'set', 'lo', 'up'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error) return capabilityError((r.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'unshare is not installed' : r.error.message).message;
  if (r.status !== 0) return capabilityError(r.stderr || `exit ${r.status}`).message;
  return null;
}

/** Runs one agent session in the sandbox and returns its report (throws when the sandbox or server could not be set up). */
export async function runAgentSession(spec: AgentSessionSpec): Promise<AgentSessionReport> {
  const work = mkdtempSync(join(tmpdir(), 'agent-sandbox-'));
  // The home survives the run (a test may inspect what the agent wrote); the process exit removes it.
  process.once('exit', () => rmSync(work, { recursive: true, force: true }));
  const home = spec.home ?? join(work, 'home');
  mkdirSync(home, { recursive: true });
  const driverSpec: DriverSpec = {
    command: spec.command,
    cwd: spec.cwd ?? home,
    env: spec.env ?? {},
    home,
    files: spec.files ?? {},
    stdin: spec.stdin ?? null,
    timeoutMs: spec.timeoutMs ?? 120_000,
    model: spec.model ?? null,
    serverFlags: spec.serverFlags ?? [],
    serverEnv: spec.serverEnv ?? {},
    serverStartTimeoutMs: spec.serverStartTimeoutMs ?? 600_000,
    recordPorts: spec.recordPorts ?? [80, 443],
    reportPath: join(work, 'report.json'),
  };
  if (driverSpec.command.length === 0) throw new Error('agent sandbox: spec.command is empty');
  const specPath = join(work, 'spec.json');
  writeFileSync(specPath, JSON.stringify(driverSpec));

  const child = spawn('unshare', [...unshareArgs(), '--', process.execPath, DRIVER, specPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  // A backstop beyond the driver's own limits, so a wedged driver cannot hang the test run.
  const limit = driverSpec.timeoutMs + (driverSpec.model ? driverSpec.serverStartTimeoutMs : 0) + 60_000;
  const backstop = setTimeout(() => child.kill('SIGKILL'), limit);
  const exit = await new Promise<{ code: number | null; error?: NodeJS.ErrnoException }>((resolve) => {
    child.once('error', (error: NodeJS.ErrnoException) => resolve({ code: null, error }));
    child.once('close', (code) => resolve({ code }));
  }).finally(() => clearTimeout(backstop));

  if (exit.error) throw capabilityError(exit.error.code === 'ENOENT' ? 'unshare is not installed' : exit.error.message);
  if (!existsSync(driverSpec.reportPath)) {
    // unshare reports its own failures as "unshare: …" before the driver ever runs.
    if (/^unshare: /m.test(out)) throw capabilityError(out);
    throw new Error(`agent sandbox: the driver exited ${exit.code} without a report:\n${out}`);
  }
  const report = JSON.parse(readFileSync(driverSpec.reportPath, 'utf8')) as AgentSessionReport;
  if (report.error) {
    throw new Error(`agent sandbox: ${report.error}\n--- driver output ---\n${out}\n--- server log (tail) ---\n${report.serverLog.slice(-4000)}`);
  }
  return report;
}

/** DNS names that mean this machine: glibc answers them from /etc/hosts, but a client may still ask DNS. */
const LOOPBACK_NAMES = [
  /^localhost\.?$/i,
  /\.localhost\.?$/i,
  /^localhost\.localdomain\.?$/i,
  /^ip6-(localhost|loopback)\.?$/i,
  /^(\d+\.){3}127\.in-addr\.arpa\.?$/i,
  /^1(\.0){31}\.ip6\.arpa\.?$/i,
];

/**
 * Throws an AssertionError listing every DNS query (except for loopback names and `allow`)
 * and every recorded outbound connection: the agent must have talked to 127.0.0.1 only.
 */
export function assertLoopbackOnly(report: AgentSessionReport, allow: { dnsNames?: Array<string | RegExp> } = {}): void {
  const allowed = [...LOOPBACK_NAMES, ...(allow.dnsNames ?? [])];
  const queries = report.dnsQueries.filter(
    (q) => !allowed.some((a) => (typeof a === 'string' ? a.toLowerCase() === q.name.toLowerCase() : a.test(q.name))),
  );
  const conns = report.outboundConnections;
  if (queries.length === 0 && conns.length === 0) return;
  const lines = [
    ...queries.map((q) => `  DNS query ${q.type} ${q.name}`),
    ...conns.map(
      (c) =>
        `  connection to ${c.address.includes(':') ? `[${c.address}]` : c.address}:${c.port}${c.sni ? ` (TLS SNI ${c.sni})` : ''}${c.host ? ` (HTTP Host ${c.host})` : ''}`,
    ),
  ];
  throw new AssertionError({
    message: `the agent tried to reach beyond 127.0.0.1:\n${lines.join('\n')}`,
    actual: { dnsQueries: queries, outboundConnections: conns },
    expected: { dnsQueries: [], outboundConnections: [] },
    operator: 'assertLoopbackOnly',
  });
}
