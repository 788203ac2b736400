import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, watch } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';
import { exited, spawnServer } from './support/server.js';

// The prefix cache's disk tier through the server: restarts (SIGTERM, SIGKILL mid-write)
// on the same directory, another export's files, a full disk and a read-only one. Every
// answer is compared, tokens and log-probabilities, with a cold one.

const _CLI = new URL('../src/cli.js', import.meta.url).pathname;
const CHUNK = 64;
const PROMPT = Array.from({ length: 1000 }, (_, i) => 1000 + ((i * 7919) % 60000));

interface Answer {
  text: string;
  logprobs: unknown;
  cached: number;
}

async function complete(url: string, prompt = PROMPT, salt?: string): Promise<Answer> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const body = { model: 'tiny', prompt, max_tokens: 12, temperature: 0, logprobs: 2, ...(salt ? { cache_salt: salt } : {}) };
  const r = await client.completions.create(body as OpenAI.CompletionCreateParamsNonStreaming);
  const usage = r.usage as unknown as { prompt_tokens_details: { cached_tokens: number } };
  return { text: r.choices[0].text, logprobs: r.choices[0].logprobs, cached: usage.prompt_tokens_details.cached_tokens };
}

const same = (a: Answer, b: Answer, what: string) => assert.deepEqual([a.text, a.logprobs], [b.text, b.logprobs], what);

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1]);
}

/** A server in this process; its log lines are kept. */
async function inProcess(
  model: string,
  flags: string[],
): Promise<RunningServer & { lines: Array<{ level: number; msg: string; prefix_cache?: unknown }> }> {
  const lines: Array<{ level: number; msg: string }> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  const config = parseServeConfig(
    ['--model', model, '--port', '0', '--threads', '1', '--served-model-name', 'tiny', '--kv-cache-memory', '64MiB', ...flags],
    {},
  )!;
  return { ...(await startServer(config, { logger })), lines };
}

let coldAnswer: Promise<Answer> | null = null;
/** The prompt's answer with no prefix cache at all. */
function cold(): Promise<Answer> {
  coldAnswer ??= (async () => {
    const s = await inProcess(await fixtureExport('fast'), ['--no-prefix-caching']);
    try {
      return await complete(s.url);
    } finally {
      await s.close();
    }
  })();
  return coldAnswer;
}

/** `qwen3-serve serve` on `model` as its own process, started and listening. */
const spawnOn = (model: string, flags: string[]) =>
  spawnServer(['--model', model, '--served-model-name', 'tiny', '--kv-cache-memory', '64MiB', '--log-level', 'info', ...flags]);

test('a restart (SIGTERM) on the same directory serves the long prompt from disk: cached_tokens > 0, identical tokens and log-probabilities', async () => {
  const model = await fixtureExport('fast');
  const dir = tempDir('qwen3-serve-disk-');
  const first = await spawnOn(model, ['--prefix-cache-dir', dir]);
  const before = await complete(first.url);
  same(before, await cold(), 'the first answer is the cold one');
  first.child.kill('SIGTERM');
  assert.equal(await exited(first.child), 0);
  // Every whole block of the prompt was written before the process left.
  const whole = Math.floor((PROMPT.length - 1) / CHUNK);
  assert.ok(readdirSync(dir).filter((f) => f.endsWith('.kvb')).length >= whole);

  const second = await spawnOn(model, ['--prefix-cache-dir', dir]);
  try {
    assert.match(second.out.log, new RegExp(`"disk":\\{"dir":"${dir}","blocks":\\d+`), 'the start log says what the directory holds');
    const after = await complete(second.url);
    same(after, before, 'after the restart');
    const disk = (await (await fetch(`${second.url}/metrics`)).text()).split('\n').filter((l) => l.startsWith('qwen3_serve_prefix_cache'));
    assert.equal(after.cached, whole * CHUNK, `every whole block but the last chunk, from disk:\n${disk.join('\n')}\n${second.out.log}`);
    assert.equal(await metric(second.url, 'qwen3_serve_prefix_cache_disk_hits_total'), whole * CHUNK);
    assert.equal(await metric(second.url, 'qwen3_serve_prefix_cache_disk_loads_total'), whole);
    assert.ok((await metric(second.url, 'qwen3_serve_prefix_cache_disk_load_seconds_total')) > 0);
    assert.equal(await metric(second.url, 'qwen3_serve_prefix_cache_hits_total'), whole * CHUNK, 'disk hits are hits');
    assert.ok((await metric(second.url, 'qwen3_serve_prefix_cache_disk_bytes')) > 0);
    assert.equal(await metric(second.url, 'qwen3_serve_prefix_cache_disk_degraded'), 0);
  } finally {
    second.child.kill('SIGTERM');
    await exited(second.child);
  }
});

test('blocks on disk keep their cache_salt: after a restart only the same salt reads them, and every answer is the cold one', async () => {
  const model = await fixtureExport('fast');
  const dir = tempDir('qwen3-serve-disk-');
  const first = await inProcess(model, ['--prefix-cache-dir', dir]);
  same(await complete(first.url, PROMPT, 'team-a'), await cold(), 'salted, cold');
  await first.close();
  const second = await inProcess(model, ['--prefix-cache-dir', dir]);
  try {
    const other = await complete(second.url, PROMPT, 'team-b');
    const unsalted = await complete(second.url, PROMPT);
    assert.equal(other.cached, 0, 'another salt finds nothing on disk');
    assert.equal(unsalted.cached, 0, 'no salt finds nothing either');
    const owner = await complete(second.url, PROMPT, 'team-a');
    assert.equal(owner.cached, Math.floor((PROMPT.length - 1) / CHUNK) * CHUNK, 'the same salt reads its blocks');
    for (const a of [other, unsalted, owner]) same(a, await cold(), 'every answer');
  } finally {
    await second.close();
  }
});

test('a SIGKILL while blocks are being written leaves no corrupt block served: the restart deletes unfinished writes and answers as cold', async () => {
  const model = await fixtureExport('fast');
  const dir = tempDir('qwen3-serve-disk-');
  const victim = await spawnOn(model, ['--prefix-cache-dir', dir]);
  // Killed as soon as a block file is being written.
  const watcher = watch(dir, (_, name) => {
    if (name?.includes('.tmp-')) victim.child.kill('SIGKILL');
  });
  try {
    await complete(victim.url).catch(() => null);
    assert.equal(await exited(victim.child), null, 'killed by the signal');
  } finally {
    watcher.close();
    victim.child.kill('SIGKILL');
  }
  const second = await spawnOn(model, ['--prefix-cache-dir', dir]);
  try {
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes('.tmp-')),
      [],
      'unfinished writes are deleted at start',
    );
    const after = await complete(second.url);
    same(after, await cold(), 'after the crash');
    assert.equal(await metric(second.url, 'qwen3_serve_prefix_cache_disk_corrupt_blocks_total'), 0, 'no renamed block is torn');
    // Once more: now from what this server wrote.
    const again = await complete(second.url);
    same(again, after, 'served from the cache');
    assert.ok(again.cached > 0);
  } finally {
    second.child.kill('SIGTERM');
    await exited(second.child);
  }
});

test("another export's blocks in the same directory are ignored, reported once, and left alone", async () => {
  const dir = tempDir('qwen3-serve-disk-');
  const fp32 = await inProcess(await fixtureExport('fast'), ['--prefix-cache-dir', dir]);
  await complete(fp32.url);
  await fp32.close();
  const theirs = readdirSync(dir).sort();
  assert.ok(theirs.length > 0);
  const int4 = await inProcess(await fixtureExport('fast', 'int4'), ['--prefix-cache-dir', dir]);
  try {
    const first = await complete(int4.url);
    assert.equal(first.cached, 0, 'nothing of the fp32 export is served');
    assert.equal(await metric(int4.url, 'qwen3_serve_prefix_cache_disk_loads_total'), 0);
    const second = await complete(int4.url);
    same(second, first, 'its own blocks serve it');
    assert.ok(second.cached > 0);
    const reports = int4.lines.filter((l) => /not blocks of this model export/.test(l.msg));
    assert.equal(reports.length, 1, 'reported once');
    assert.match(reports[0].msg, new RegExp(`^prefix cache disk tier: ${theirs.length} files in `));
    assert.equal(reports[0].level, 40, 'a warning');
  } finally {
    await int4.close();
  }
  for (const f of theirs) assert.ok(existsSync(join(dir, f)), `${f} left alone`);
});

/** Mounts a tmpfs of `size` on a new directory; null (and why) when this machine cannot, which CI (QWEN3_SERVE_REQUIRE_SANDBOX) does not accept. */
function tmpfs(size: string): { dir: string; readOnly(): void; unmount(): void } | string {
  const dir = join(tempDir('qwen3-serve-tmpfs-'), 'mnt');
  mkdirSync(dir);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): ${r.error?.message ?? r.stderr.trim()}`;
  return {
    dir,
    readOnly: () => assert.equal(spawnSync('mount', ['-o', 'remount,ro', dir]).status, 0, 'remounted read-only'),
    unmount: () => void spawnSync('umount', ['-l', dir]),
  };
}

const mountable = tmpfs('64k');
if (typeof mountable !== 'string') mountable.unmount();
const skip = typeof mountable === 'string' && !process.env.QWEN3_SERVE_REQUIRE_SANDBOX ? mountable : false;

test('a full disk turns the tier to memory only, with a warning and a metric, and no request fails or changes', { skip }, async () => {
  // 100 KiB: two or three of the fixture's 32 KiB blocks; the prompt has fifteen.
  const fs = tmpfs('100k');
  assert.equal(typeof fs, 'object', fs as string);
  const { dir, unmount } = fs as Exclude<typeof fs, string>;
  const s = await inProcess(await fixtureExport('fast'), ['--prefix-cache-dir', dir, '--prefix-cache-disk', '1GiB']);
  try {
    const first = await complete(s.url);
    same(first, await cold(), 'on a full disk');
    // The writes run behind the answer: wait for the one that found the disk full.
    for (let i = 0; i < 200 && (await metric(s.url, 'qwen3_serve_prefix_cache_disk_degraded')) !== 1; i++) await sleep(25);
    assert.equal(await metric(s.url, 'qwen3_serve_prefix_cache_disk_degraded'), 1);
    const warnings = s.lines.filter((l) => l.level === 40 && /cannot write to .* \(ENOSPC\); writes are off/.test(l.msg));
    assert.equal(warnings.length, 1, s.lines.map((l) => l.msg).join('\n'));
    const second = await complete(s.url);
    same(second, first, 'served from memory');
    assert.equal(second.cached, Math.floor((PROMPT.length - 1) / CHUNK) * CHUNK);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes('.tmp-')),
      [],
      'no partial write left',
    );
  } finally {
    await s.close();
    unmount();
  }
});

test('a read-only directory serves the blocks it holds, with writes off, a warning and a metric', { skip }, async () => {
  const fs = tmpfs('4m');
  assert.equal(typeof fs, 'object', fs as string);
  const { dir, readOnly, unmount } = fs as Exclude<typeof fs, string>;
  try {
    const writer = await inProcess(await fixtureExport('fast'), ['--prefix-cache-dir', dir]);
    const first = await complete(writer.url);
    await writer.close();
    readOnly();
    const s = await inProcess(await fixtureExport('fast'), ['--prefix-cache-dir', dir]);
    try {
      assert.ok(s.lines.some((l) => l.level === 40 && /cannot write to .* \(EROFS\)/.test(l.msg)));
      const start = s.lines.find((l) => l.msg.startsWith('serving '))!.prefix_cache as { disk: { writable: boolean; blocks: number } };
      assert.equal(start.disk.writable, false);
      assert.ok(start.disk.blocks > 0);
      assert.equal(await metric(s.url, 'qwen3_serve_prefix_cache_disk_degraded'), 1);
      const again = await complete(s.url);
      same(again, first, 'from the read-only disk');
      assert.equal(again.cached, Math.floor((PROMPT.length - 1) / CHUNK) * CHUNK);
      assert.ok((await metric(s.url, 'qwen3_serve_prefix_cache_disk_hits_total')) > 0);
    } finally {
      await s.close();
    }
  } finally {
    unmount();
  }
});
