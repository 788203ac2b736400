/**
 * The sandbox's inside: run by `runAgentSession` as `unshare --net --mount --pid … node
 * agent_sandbox_driver.js <spec.json>`, as (possibly user-namespace) root in namespaces of its
 * own. It isolates the network, starts the recorders, the server and the proxy, runs the
 * agent, and writes the report to `spec.reportPath`. Node built-ins only, so it never breaks
 * when the server's code is mid-edit.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentSessionReport, DnsQuery, DriverSpec, Exchange, OutboundConnection } from './agent_sandbox.js';
import { startConnectionRecorder, startDnsRecorder } from './sandbox_recorders.js';

const CLI = new URL('../../src/cli.js', import.meta.url).pathname;
const MAX_OUTPUT = 8 * 2 ** 20;
const SERVER_LOG_TAIL = 64 * 1024;

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8')) as DriverSpec;
const t0 = performance.now();
const ms = (from: number) => Math.round(performance.now() - from);

const dnsQueries: DnsQuery[] = [];
const outboundConnections: OutboundConnection[] = [];
const exchanges: Exchange[] = [];
/** Bodies as they arrive, turned into report fields at the end (so in-flight exchanges are reported too). */
const bodies = new Map<Exchange, { req: Buffer[]; res: Buffer[]; reqType: string }>();
let serverLog = '';
let agentStart = performance.now();

/** Runs a setup command, failing with the missing capability named. */
function sh(cmd: string, args: string[], optional = false): boolean {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    return true;
  } catch (err) {
    if (optional) return false;
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    const why = e.code === 'ENOENT' ? `${cmd} is not installed` : (e.stderr?.toString().trim() ?? e.message);
    throw new Error(`sandbox setup failed: ${cmd} ${args.join(' ')}: ${why}`);
  }
}

/** Loopback only; every other address routed to lo so connections to it reach our recorders (AnyIP). */
function isolateNetwork(): void {
  sh('ip', ['link', 'set', 'lo', 'up']);
  sh('ip', ['route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo']);
  // IPv6 may be disabled in the kernel; then IPv6 destinations simply fail to connect.
  sh('ip', ['-6', 'route', 'add', 'local', '::/0', 'dev', 'lo'], true);
}

/** Points the resolver at our DNS recorder; the bind mount lives in this private mount namespace only. */
function isolateDns(): void {
  // unshare already makes mounts private; this keeps the host untouched even if it did not.
  sh('mount', ['--make-rprivate', '/'], true);
  const file = join(dirname(spec.reportPath), 'resolv.conf');
  writeFileSync(file, 'nameserver 127.0.0.1\noptions attempts:1 timeout:1\n');
  // A symlinked resolv.conf (systemd-resolved) is covered by mounting over its target.
  sh('mount', ['--bind', file, realpathSync('/etc/resolv.conf')]);
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', res));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((res) => s.close(res));
  return port;
}

/** Stands in for the server when no model is given: echoes requests as JSON; `/sse?n=&delay=` streams events. */
async function startEchoServer(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', async () => {
      const url = new URL(req.url ?? '/', 'http://echo');
      if (url.pathname === '/sse') {
        const n = Number(url.searchParams.get('n') ?? 3);
        const delay = Number(url.searchParams.get('delay') ?? 100);
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.flushHeaders();
        for (let i = 0; i < n; i++) {
          await sleep(delay);
          res.write(`data: ${JSON.stringify({ i })}\n\n`);
        }
        return void res.end('data: [DONE]\n\n');
      }
      const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    });
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  return server;
}

/** Starts `qwen3-serve serve` on 127.0.0.1 and waits for /health to be 200. */
async function startServer(port: number): Promise<ChildProcess> {
  const args = [CLI, 'serve', '--model', spec.model!, '--host', '127.0.0.1', '--port', String(port), ...spec.serverFlags];
  const child = spawn(process.execPath, args, {
    cwd: spec.home,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: spec.home, ...spec.serverEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = (d: Buffer) => (serverLog = (serverLog + d.toString()).slice(-SERVER_LOG_TAIL));
  child.stdout!.on('data', log);
  child.stderr!.on('data', log);
  let exited: string | null = null;
  child.once('exit', (code, signal) => (exited = `exited (code ${code}, signal ${signal})`));
  const deadline = performance.now() + spec.serverStartTimeoutMs;
  while (performance.now() < deadline) {
    if (exited) throw new Error(`the server ${exited} before /health was 200`);
    const status = await new Promise<number>((res) => {
      http
        .get({ host: '127.0.0.1', port, path: '/health', timeout: 2000 }, (r) => (r.resume(), res(r.statusCode ?? 0)))
        .on('error', () => res(0))
        .on('timeout', function (this: http.ClientRequest) {
          this.destroy();
        });
    });
    if (status === 200) return child;
    await sleep(250);
  }
  child.kill('SIGKILL');
  throw new Error(`the server did not answer /health with 200 within ${spec.serverStartTimeoutMs} ms`);
}

async function stopServer(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  child.kill('SIGTERM');
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await exited;
  clearTimeout(killer);
  return code;
}

/** Hop-by-hop headers describe one connection, so a proxy must not forward them (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);
function endToEnd(h: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (!HOP_BY_HOP.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** The recording reverse proxy: forwards each request to 127.0.0.1:`target` and records the exchange. */
async function startProxy(target: number): Promise<http.Server> {
  const proxy = http.createServer({ noDelay: true, requestTimeout: 0 }, (req, res) => {
    const start = performance.now();
    const ex: Exchange = {
      startedMs: ms(agentStart),
      method: req.method ?? '',
      path: req.url ?? '',
      requestHeaders: req.headers,
      requestBody: null,
      status: null,
      responseHeaders: {},
      responseBody: '',
      headersMs: null,
      firstByteMs: null,
      totalMs: null,
    };
    const body = { req: [] as Buffer[], res: [] as Buffer[], reqType: req.headers['content-type'] ?? '' };
    exchanges.push(ex);
    bodies.set(ex, body);
    // A fresh connection per request (agent: false) so a stale kept-alive socket never fails a request.
    const up = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers: endToEnd(req.headers), agent: false });
    up.on('socket', (s) => s.setNoDelay(true));
    req.on('data', (d: Buffer) => body.req.push(d));
    req.pipe(up);
    up.on('response', (ur) => {
      ex.status = ur.statusCode ?? null;
      ex.responseHeaders = ur.headers;
      ex.headersMs = ms(start);
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, endToEnd(ur.headers));
      // Headers go out now, as the server sent them, so an SSE client sees the stream start.
      res.flushHeaders();
      ur.on('data', (d: Buffer) => {
        ex.firstByteMs ??= ms(start);
        body.res.push(d);
      });
      ur.pipe(res);
      ur.on('close', () => {
        ex.totalMs = ms(start);
        if (!ur.complete) {
          ex.error ??= 'the server ended the response early';
          res.destroy();
        }
      });
    });
    up.on('error', (err) => {
      ex.error ??= err.message;
      ex.totalMs ??= ms(start);
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`agent sandbox proxy: ${err.message}\n`);
      else res.destroy();
    });
    // The client leaving early (a cancelled stream) is passed on, so the server frees the request.
    res.on('close', () => {
      if (!res.writableFinished) {
        ex.aborted = true;
        up.destroy();
      }
    });
  });
  // Longer than any server's advertised keep-alive, so a client never reuses a socket we just closed.
  proxy.keepAliveTimeout = 120_000;
  await new Promise<void>((res) => proxy.listen(0, '127.0.0.1', res));
  return proxy;
}

/** Bodies into report fields: JSON parsed when it is JSON, else text; null when empty. */
function finishBodies(): void {
  for (const [ex, b] of bodies) {
    const text = Buffer.concat(b.req).toString('utf8');
    ex.requestBody = text === '' ? null : text;
    if (text !== '' && (/json/i.test(b.reqType) || /^\s*[[{]/.test(text))) {
      try {
        ex.requestBody = JSON.parse(text);
      } catch {
        // Not JSON after all: keep the text.
      }
    }
    ex.responseBody = Buffer.concat(b.res).toString('utf8');
  }
}

/** `{BASE}` → the proxy's URL. */
const fill = (s: string, base: string) => s.split('{BASE}').join(base);

async function runAgent(base: string): Promise<Pick<AgentSessionReport, 'exitCode' | 'signal' | 'timedOut' | 'stdout' | 'stderr'>> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: spec.home };
  for (const [k, v] of Object.entries(spec.env)) env[k] = fill(v, base);
  for (const [path, content] of Object.entries(spec.files)) {
    const full = path.startsWith('~/') ? join(spec.home, path.slice(2)) : isAbsolute(path) ? path : resolve(spec.cwd, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, fill(content, base));
  }
  mkdirSync(spec.cwd, { recursive: true });
  const [cmd, ...args] = spec.command.map((a) => fill(a, base));
  agentStart = performance.now();
  // Its own process group (detached), so a timeout kills the agent and everything it started.
  const child = spawn(cmd, args, { cwd: spec.cwd, env, detached: true, stdio: [spec.stdin === null ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (spec.stdin !== null) child.stdin!.on('error', () => {}).end(spec.stdin);
  // Listened for from the start: 'close' may come right after 'exit', before we would wait for it.
  const closed = new Promise((res) => child.once('close', res));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => stdout.length < MAX_OUTPUT && (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => stderr.length < MAX_OUTPUT && (stderr += d.toString()));
  const killGroup = (signal: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // Already gone.
    }
  };
  let timedOut = false;
  let hardKill: NodeJS.Timeout | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup('SIGTERM');
    hardKill = setTimeout(() => killGroup('SIGKILL'), 3000);
  }, spec.timeoutMs);
  const result = await new Promise<{ code: number | null; signal: string | null }>((res) => {
    child.once('error', (err) => {
      stderr += `agent sandbox: cannot start ${cmd}: ${err.message}\n`;
      res({ code: null, signal: null });
    });
    child.once('exit', (code, signal) => res({ code, signal }));
  });
  clearTimeout(timer);
  clearTimeout(hardKill);
  // Leftovers in its group (tool subprocesses) go too; then its pipes have a moment to drain.
  killGroup('SIGKILL');
  await Promise.race([closed, sleep(2000)]);
  return { exitCode: result.code, signal: result.signal, timedOut, stdout, stderr };
}

async function main(): Promise<void> {
  const report: AgentSessionReport = {
    exitCode: null,
    signal: null,
    timedOut: false,
    stdout: '',
    stderr: '',
    baseUrl: '',
    exchanges,
    dnsQueries,
    outboundConnections,
    serverLog: '',
    serverExitCode: null,
    timings: { setupMs: 0, serverStartMs: null, agentMs: 0, totalMs: 0 },
  };
  let server: ChildProcess | null = null;
  const closers: Array<() => void> = [];
  try {
    isolateNetwork();
    isolateDns();
    closers.push(await startDnsRecorder(dnsQueries));
    for (const port of spec.recordPorts) {
      const rec = await startConnectionRecorder(port, outboundConnections);
      if (rec) closers.push(() => rec.close());
    }
    report.timings.setupMs = ms(t0);
    let target: number;
    if (spec.model) {
      const started = performance.now();
      target = await freePort();
      server = await startServer(target);
      report.timings.serverStartMs = ms(started);
    } else {
      const echo = await startEchoServer();
      closers.push(() => echo.close());
      target = (echo.address() as net.AddressInfo).port;
    }
    const proxy = await startProxy(target);
    closers.push(() => (proxy.closeAllConnections(), proxy.close()));
    report.baseUrl = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    Object.assign(report, await runAgent(report.baseUrl));
    report.timings.agentMs = ms(agentStart);
  } catch (err) {
    report.error = (err as Error).message;
  } finally {
    for (const close of closers) close();
    if (server) report.serverExitCode = await stopServer(server);
    finishBodies();
    report.serverLog = serverLog;
    report.timings.totalMs = ms(t0);
    writeFileSync(spec.reportPath, JSON.stringify(report));
  }
}

// As pid 1 of its namespace, exiting ends every process left in it.
main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`agent sandbox driver: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
