/**
 * A server the benchmark starts itself from a command line (llama-server, vLLM, or
 * `qwen3-serve serve`): on a free port, ready when its /health answers 200, stopped with
 * everything it started when the benchmark ends, however it ends.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { createServer } from 'node:net';

export interface LaunchOptions {
  name: string;
  /** A shell command line; `{port}` stands for the port, else `--host 127.0.0.1 --port <port>` is appended. */
  command: string;
  /** Seconds to wait for /health to answer 200. */
  startTimeoutS: number;
  /** Where the server's output goes (appended). */
  logFile: string;
  signal?: AbortSignal;
}

export interface LaunchedServer {
  name: string;
  pid: number;
  port: number;
  /** The command line as run. */
  command: string;
  baseUrl: string;
  /** Seconds from spawn to ready. */
  startS: number;
  /** Why it ended, once it has (exit code or signal). */
  exited: string | null;
  stop(): Promise<void>;
}

/** A port nothing listens on now (the kernel's choice). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Servers still running, stopped (hard) if this process exits without stopping them. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) killGroup(child, 'SIGKILL');
});

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    // The child leads a process group of its own: the shell, the server and anything it started.
    process.kill(-child.pid!, signal);
  } catch {
    // Already gone.
  }
}

function groupAlive(child: ChildProcess): boolean {
  try {
    process.kill(-child.pid!, 0);
    return true;
  } catch {
    return false;
  }
}

export async function launchServer(o: LaunchOptions): Promise<LaunchedServer> {
  const port = await freePort();
  const command = o.command.includes('{port}') ? o.command.replaceAll('{port}', String(port)) : `${o.command} --host 127.0.0.1 --port ${port}`;
  const log = createWriteStream(o.logFile, { flags: 'a' });
  log.write(`\n$ ${command}\n`);
  const tail: string[] = [];
  const child = spawn('/bin/sh', ['-c', command], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  for (const stream of [child.stdout!, child.stderr!]) {
    stream.on('data', (chunk: Buffer) => {
      log.write(chunk);
      tail.push(...chunk.toString().split('\n').filter(Boolean));
      tail.splice(0, Math.max(0, tail.length - 15));
    });
  }
  const started = performance.now();
  let stopping: Promise<void> | null = null;
  const exit = new Promise<string>((resolve) => {
    child.once('exit', (code, sig) => {
      running.delete(child);
      resolve(sig ? `killed by ${sig}` : `exit code ${code}`);
    });
    child.once('error', (err) => {
      running.delete(child);
      resolve(err.message);
    });
  });
  const server: LaunchedServer = {
    name: o.name,
    pid: child.pid ?? -1,
    port,
    command,
    baseUrl: `http://127.0.0.1:${port}/v1`,
    startS: 0,
    exited: null,
    stop: async () => {
      if (stopping) return stopping;
      stopping = (async () => {
        killGroup(child, 'SIGTERM');
        // The shell may end before the server has finished shutting down: wait for the whole group.
        const end = performance.now() + 15_000;
        while (groupAlive(child) && performance.now() < end) await new Promise((r) => setTimeout(r, 50));
        killGroup(child, 'SIGKILL');
        await exit;
        await new Promise<void>((resolve) => log.end(resolve));
      })();
      return stopping;
    },
  };
  void exit.then((why) => {
    server.exited = why;
  });
  const deadline = started + o.startTimeoutS * 1000;
  for (;;) {
    if (server.exited !== null || child.pid === undefined) {
      await server.stop();
      throw new Error(`${o.name} (${command}) ended before it was ready (${server.exited ?? 'no process'}):\n${tail.join('\n')}`);
    }
    if (o.signal?.aborted || performance.now() > deadline) {
      await server.stop();
      throw new Error(
        o.signal?.aborted
          ? `${o.name}: interrupted while starting`
          : `${o.name} (${command}) was not ready after ${o.startTimeoutS} s:\n${tail.join('\n')}`,
      );
    }
    const ok = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(5000) }).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) break;
    await Promise.race([new Promise((r) => setTimeout(r, 200)), exit]);
  }
  server.startS = (performance.now() - started) / 1000;
  return server;
}
