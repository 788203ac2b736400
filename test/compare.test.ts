import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseScenarios, runComparison } from '../src/bench/compare.js';
import { comparisonTable } from '../src/bench/compare_report.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';
import { startTestServer, until } from './support/server.js';

const CLI = new URL('../src/cli.js', import.meta.url).pathname;
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** `qwen3-serve serve` flags for a small server on the fixture. */
async function serveFlags(extra = ''): Promise<string> {
  return `--model ${await fixtureExport('fast')} --threads 1 --cache-dir ${tempDir('qwen3-serve-cache-')} --kv-cache-memory 64MiB --log-level warn --no-ui ${extra}`;
}

test("bench:compare against running servers: alternated rounds, the same prompts, each one's median and the ratio, the models named, failures counted", async () => {
  const [ours, peer] = await Promise.all([
    startTestServer(await fixtureExport('fast')),
    startTestServer(await fixtureExport('fast'), ['--served-model-name', 'their-model', '--no-prefix-caching']),
  ]);
  try {
    const lines: string[] = [];
    const o = { name: 'ours', baseUrl: `${ours.url}/v1`, model: null, apiKey: null, pid: null };
    const theirs = { name: 'theirs', baseUrl: `${peer.url}/v1`, model: null, apiKey: null, pid: null };
    const scenarios = parseScenarios('12:4:1, 20:3:2');
    const base = { numPrompts: 3, seed: 5, timeout: 60, idleThreshold: 1, idleWaitS: 0 };
    const state = await runComparison({ ours: o, peer: theirs, scenarios, rounds: 3, ...base }, (l) => lines.push(l));
    // Alternated: each round runs every scenario on both, and the next round starts with the other server.
    const sides = lines.flatMap((l) => /^\[\d+\/12\] .*, (ours|theirs):/.exec(l)?.[1] ?? []);
    assert.deepEqual(sides, ['ours', 'theirs', 'ours', 'theirs', 'theirs', 'ours', 'theirs', 'ours', 'ours', 'theirs', 'ours', 'theirs']);
    assert.match(lines.join('\n'), /12 runs \(3 rounds × 2 scenarios × 2 servers\), about \d+ s in all/);
    assert.deepEqual(state.models.ours, { asked: ours.model, listed: [ours.model], answered: [ours.model] });
    assert.deepEqual(state.models.peer, { asked: 'their-model', listed: ['their-model'], answered: ['their-model'] });
    const median3 = (xs: number[]) => [...xs].sort((a, b) => a - b)[1];
    for (const [i, r] of state.results.entries()) {
      for (const run of [...r.ours, ...r.peer]) {
        assert.equal(run.level!.completed, Math.max(3, 2 * (scenarios[i] as { concurrency: number }).concurrency));
        assert.equal(run.failed, 0);
        assert.equal(run.otherCpuShare, null, 'no PIDs: no share of other processes');
      }
      assert.equal(r.ours.length, 3);
      const a = median3(r.ours.map((x) => x.level!.outputThroughput));
      const b = median3(r.peer.map((x) => x.level!.outputThroughput));
      assert.deepEqual(r.measures[0], { key: 'outputThroughput', label: 'output tok/s', higherIsBetter: true, ours: a, peer: b, ratio: a / b });
    }
    const table = comparisonTable(state.results, 'ours', 'theirs').split('\n');
    assert.equal(table.length, 2 + 2 * 4);
    assert.match(table[2], /^\| 12 \/ 4, 1 \| output tok\/s \| [\d.]+ \| [\d.]+ \| \d+\.\d\d \| (ours|theirs|even) \|$/);
    // A peer asked for a model it does not have: every request fails, counted by kind, and the comparison still ends.
    const wrong = await runComparison({ ours: o, peer: { ...theirs, model: 'no-such-model' }, scenarios: scenarios.slice(0, 1), rounds: 1, ...base });
    assert.deepEqual(wrong.results[0].peer[0].failures, { 'HTTP 404': 3 });
    assert.equal(wrong.results[0].ours[0].completed, 3);
    assert.ok(Number.isNaN(wrong.results[0].measures[0].ratio));
    assert.ok(wrong.notes.some((n) => /theirs lists their-model, not the model asked for, no-such-model/.test(n)));
    assert.ok(wrong.notes.some((n) => /3 of 3 requests failed \(3 HTTP 404\)/.test(n)));
  } finally {
    await Promise.all([ours.close(), peer.close()]);
  }
});

test('bench:compare starts both servers itself, measures their memory and CPU, keeps going past failed requests, runs an agent, and stops them', async () => {
  const out = join(tempDir(), 'cmp');
  // The peer stands for llama-server: any command line, here our server with a short context, so 100-token prompts get 400.
  const peerCommand = `'${process.execPath}' '${CLI}' serve ${await serveFlags('--served-model-name their-model --max-model-len 64')}`;
  const run = spawnSync(
    process.execPath,
    [
      CLI,
      'compare',
      '--ours-serve',
      await serveFlags(),
      '--peer-command',
      peerCommand,
      '--peer-name',
      'theirs',
      '--scenarios',
      '12:4:1,100:4:1,agent:500:4',
      '--long-context',
      '8',
      '--rounds',
      '2',
      '--num-prompts',
      '2',
      '--idle-threshold',
      '1',
      '--out',
      out,
    ],
    { encoding: 'utf8', timeout: 240_000 },
  );
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /theirs ready in [\d.]+ s at http:\/\/127\.0\.0\.1:\d+\/v1 \(pid \d+;/);
  assert.match(run.stderr, /16 runs \(2 rounds × 4 scenarios × 2 servers\), about .* in all/);
  assert.match(run.stderr, /\[16\/16\] round 2/);
  const report = JSON.parse(readFileSync(`${out}.json`, 'utf8'));
  assert.equal(report.complete, true);
  for (const side of ['ours', 'peer']) {
    const p = report.servers[side].process;
    assert.ok(p.pid > 0 && !alive(p.pid), `${side}'s server (pid ${p.pid}) was stopped`);
    assert.ok(p.peakRssBytes > 50 * 2 ** 20 && p.peakRssBytes < 8 * 2 ** 30, `${side} peak RSS ${p.peakRssBytes}`);
    assert.ok(p.rssAtStartBytes > 0 && p.rssAtStartBytes <= p.peakRssBytes);
    assert.ok(p.cpuS > 0, `${side} used ${p.cpuS} s of CPU`);
    assert.match(report.servers[side].command, /serve --model .* --host 127\.0\.0\.1 --port \d+$/);
    assert.ok(existsSync(`${out}.${side}.log`));
  }
  assert.deepEqual(report.models.peer.answered, ['their-model']);
  assert.deepEqual(report.models.ours.answered, report.models.ours.listed);
  const [short, long, agent, longContext] = report.results;
  assert.equal(longContext.label, '8 / 128, 1 (2 requests)');
  assert.equal(longContext.ours[0].completed, 2);
  for (const r of [short.ours, short.peer, long.ours].flat()) {
    assert.equal(r.failed, 0);
    assert.ok(r.serverCpuS >= 0 && r.otherCpuShare >= 0 && r.otherCpuShare <= 1, JSON.stringify(r));
    assert.ok(r.idleWait.idle);
  }
  const oursCpu = report.results.flatMap((x: { ours: Array<{ serverCpuS: number }> }) => x.ours.map((r) => r.serverCpuS));
  assert.ok(oursCpu.reduce((a: number, b: number) => a + b, 0) > 0, `our server's CPU seconds per run: ${oursCpu}`);
  // Every request over the peer's context failed, counted by kind; the run went on to the agent.
  assert.deepEqual(
    long.peer.map((r: { failures: object }) => r.failures),
    [{ 'HTTP 400': 2 }, { 'HTTP 400': 2 }],
  );
  assert.equal(long.measures[0].ratio, null, 'no ratio over work one side did not do');
  for (const run of agent.ours) {
    const [first, second] = run.turns;
    assert.ok(first.ok && second.ok);
    assert.ok(first.promptTokens >= 400 && first.promptTokens <= 600, `first turn: ${first.promptTokens} prompt tokens`);
    assert.ok(second.promptTokens > first.promptTokens && second.cachedTokens > 0, JSON.stringify(second));
  }
  assert.deepEqual(agent.peer[0].failures, { 'HTTP 400': 1 });
  const md = readFileSync(`${out}.md`, 'utf8');
  assert.match(md, /\| agent 500 \/ 4 \| TTFT turn 2 \(ms\) \|/);
  assert.match(md, /\| 100 \/ 4, 1 \| theirs \| 2 \| 0 ok, 4 HTTP 400 \|/);
  assert.match(md, /peak RSS/);
});

test('bench:compare interrupted: the servers it started stop, and the reports keep what ran', async () => {
  const out = join(tempDir(), 'cut');
  const child = spawn(
    process.execPath,
    [
      CLI,
      'compare',
      '--ours-serve',
      await serveFlags(),
      '--peer-command',
      `'${process.execPath}' '${CLI}' serve ${await serveFlags()}`,
      '--scenarios',
      '8:4:1',
      '--rounds',
      '100',
      '--num-prompts',
      '2',
      '--idle-wait',
      '0',
      '--out',
      out,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  child.stdout.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  await until(() => /\[2\/200\]/.test(stderr), 'two runs', 120_000);
  const pids = [...stderr.matchAll(/\(pid (\d+);/g)].map((m) => Number(m[1]));
  assert.equal(pids.length, 2);
  child.kill('SIGINT');
  assert.equal(await exited, 1);
  assert.match(stderr, /interrupted: partial results in/);
  for (const pid of pids) assert.ok(!alive(pid), `server ${pid} stopped`);
  const report = JSON.parse(readFileSync(`${out}.json`, 'utf8'));
  assert.equal(report.complete, false);
  assert.equal(report.interrupted, true);
  const runs = report.results[0].ours.length + report.results[0].peer.length;
  assert.ok(runs >= 2 && runs < 200, `${runs} runs kept`);
  assert.match(readFileSync(`${out}.md`, 'utf8'), /Interrupted: partial results/);
});

test('bench:compare with a server that does not start: the error, the reports, and the other server stopped', async () => {
  const out = join(tempDir(), 'fail');
  const run = spawnSync(
    process.execPath,
    [CLI, 'compare', '--ours-serve', await serveFlags(), '--peer-command', "sh -c 'echo no such model >&2; exit 3'", '--out', out],
    { encoding: 'utf8', timeout: 120_000 },
  );
  assert.equal(run.status, 1);
  assert.match(run.stderr, /peer .* ended before it was ready \(exit code 3\):\nno such model/);
  const report = JSON.parse(readFileSync(`${out}.json`, 'utf8'));
  assert.equal(report.complete, false);
  assert.match(report.error, /ended before it was ready/);
  const pid = Number(/qwen3-serve ready in .* \(pid (\d+);/.exec(run.stderr)![1]);
  assert.ok(!alive(pid), 'our server, started, was stopped');
  assert.match(readFileSync(`${out}.md`, 'utf8'), /\*\*Stopped by an error:\*\*/);
});

test("bench:compare's command: a peer is required and scenarios are checked (exit 2)", () => {
  const none = spawnSync(process.execPath, [CLI, 'compare'], { encoding: 'utf8' });
  assert.equal(none.status, 2);
  assert.match(none.stderr, /--peer-url or --peer-command is required/);
  const bad = spawnSync(process.execPath, [CLI, 'compare', '--peer-url', 'http://127.0.0.1:9/v1', '--scenarios', '128:128'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /expected input:output:concurrency/);
  const help = spawnSync(process.execPath, [CLI, 'compare', '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--peer-command/);
});
