import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../../src/cli/serve_command.js';
import { tempDir } from './runner.js';

export interface TestServer extends RunningServer {
  client: OpenAI;
  model: string;
}

/** A real server on 127.0.0.1 (random port) and an `openai` client pointed at it. */
export async function startTestServer(model: string, flags: string[] = [], apiKey = 'unused'): Promise<TestServer> {
  const config = parseServeConfig(
    ['--model', model, '--port', '0', '--threads', '1', '--cache-dir', tempDir('qwen3-serve-cache-'), '--kv-cache-memory', '256MiB', ...flags],
    {},
  )!;
  const server = await startServer(config, { logger: pino({ level: 'silent' }) });
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });
  try {
    const key = config['api-key'] ?? apiKey;
    const models = (await (await fetch(`${server.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).json()) as {
      data: Array<{ id: string }>;
    };
    return { ...server, client, model: models.data[0].id };
  } catch (err) {
    await server.close();
    throw err;
  }
}

/**
 * Polls `condition` until it holds, failing after `timeoutMs`: how a test waits for an
 * event the server shows (a request running, a status changing) instead of guessing a delay.
 */
export async function until(condition: () => Promise<boolean> | boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The server's /health body: the engine's running and waiting sequences among others. */
export async function healthOf(url: string): Promise<{ status: string; running: number; waiting: number }> {
  return (await (await fetch(`${url}/health`)).json()) as { status: string; running: number; waiting: number };
}

const CLI = new URL('../../src/cli.js', import.meta.url).pathname;

/** Servers spawned and still running: a run that ends early (a test's timeout) must not leave them behind. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Whether `child` has ended: one killed by a signal keeps `exitCode` null. */
export const hasExited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null;

/** Its exit code once it has ended (null when a signal ended it), also when it already has. */
export const exited = (child: ChildProcess): Promise<number | null> =>
  new Promise((r) => (hasExited(child) ? r(child.exitCode) : child.once('exit', (code) => r(code))));

/** `qwen3-serve serve` as a process of its own on a free port: its URL, the child and its log so far. */
export async function spawnServer(args: string[]): Promise<{ url: string; child: ChildProcess; out: { log: string } }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--host', '127.0.0.1', '--threads', '1', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const out = { log: '' };
  child.stdout!.on('data', (d: Buffer) => (out.log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out.log += d.toString()));
  await until(() => / at http:\/\/[\d.:]+\/v1/.test(out.log) || hasExited(child), 'the server to listen');
  const url = / at (http:\/\/[\d.:]+)\/v1/.exec(out.log)?.[1] ?? '';
  assert.ok(url, `the server started:\n${out.log}`);
  return { url, child, out };
}

/** An --api-keys-file (docs/security.md) with these entries, in a fresh temporary folder: its path. */
export function keysFile(keys: Array<{ name: string; key: string; limits?: Record<string, number> }>): string {
  const file = join(tempDir('qwen3-serve-keys-'), 'keys.json');
  writeFileSync(file, JSON.stringify({ keys }));
  return file;
}
