#!/usr/bin/env node
/**
 * Fair admission's cost in throughput: key A sends --a requests at once, then key B sends
 * --b, against a server of another build (--baseline, a dist/ directory: FIFO admission,
 * one --api-key for both) and one of this build (a keys file with two keys: round robin),
 * alternately, one run at a time, --rounds times each. Prints each run's generated tokens
 * per second and B's mean time to first token, then the medians and their ratio.
 *   node dist/scripts/tenant_bench.js --baseline /path/to/old/dist --model <export dir> [--rounds 3] [--a 40] [--b 4] [--max-tokens 64]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';

const USAGE = 'usage: tenant_bench --baseline <dist dir> --model <export dir> [--rounds 3] [--a 40] [--b 4] [--max-tokens 64] [--threads 2]\n';
const { values } = parseArgs({
  options: {
    baseline: { type: 'string' },
    model: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    a: { type: 'string', default: '40' },
    b: { type: 'string', default: '4' },
    'max-tokens': { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
  },
});
if (!values.baseline || !values.model) {
  process.stderr.write(USAGE);
  process.exit(2);
}
const KEY_A = 'sk-bench-a-0123456789';
const KEY_B = 'sk-bench-b-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'tenant-bench-'));
const keysFile = join(dir, 'keys.json');
writeFileSync(
  keysFile,
  JSON.stringify({
    keys: [
      { name: 'a', key: KEY_A },
      { name: 'b', key: KEY_B },
    ],
  }),
);

interface Server {
  url: string;
  keys: [string, string];
  proc: ChildProcess;
}

/** Starts `cli` (a build's dist/src/cli.js) and resolves once it logs its address. */
function start(cli: string, extra: string[], keys: [string, string]): Promise<Server> {
  const args = [cli, 'serve', '--model', values.model!, '--port', '0', '--threads', values.threads!, '--no-ui', '--max-num-seqs', '4', ...extra];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"msg":"serving [^"]* at (http:\/\/[^"/]+)\/v1"/.exec(out);
      if (m) resolve({ url: m[1], keys, proc });
    });
    proc.once('exit', (code) => reject(new Error(`${cli} exited with ${code}`)));
  });
}

/** One run of the load; generated tokens per second over the whole run, and B's mean time to first token. */
async function run(s: Server): Promise<{ tps: number; bTtftMs: number }> {
  const t0 = performance.now();
  let tokens = 0;
  const one = async (key: string, i: number): Promise<number> => {
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0, timeout: 600_000 });
    const sent = performance.now();
    const stream = await client.completions.create({
      model: 'm',
      prompt: `Request ${i}: write a long story.`,
      max_tokens: Number(values['max-tokens']),
      temperature: 0,
      stream: true,
      ignore_eos: true,
    } as never);
    let ttft = -1;
    for await (const chunk of stream as unknown as AsyncIterable<OpenAI.Completion>) {
      if (ttft < 0) ttft = performance.now() - sent;
      if (chunk.choices[0]?.text) tokens++;
    }
    return ttft;
  };
  const a = Array.from({ length: Number(values.a) }, (_, i) => one(s.keys[0], i));
  // B comes a moment after A's burst, as a second user would.
  await new Promise((resolve) => setTimeout(resolve, 100));
  const b = Array.from({ length: Number(values.b) }, (_, i) => one(s.keys[1], 1000 + i));
  const bTtft = await Promise.all(b);
  await Promise.all(a);
  return { tps: tokens / ((performance.now() - t0) / 1000), bTtftMs: bTtft.reduce((x, y) => x + y, 0) / bTtft.length };
}

const baseline = await start(join(values.baseline, 'src/cli.js'), ['--api-key', KEY_A, '--served-model-name', 'm'], [KEY_A, KEY_A]);
const ours = await start(
  new URL('../src/cli.js', import.meta.url).pathname,
  ['--api-keys-file', keysFile, '--served-model-name', 'm'],
  [KEY_A, KEY_B],
);
const results: Record<'fifo' | 'fair', Array<{ tps: number; bTtftMs: number }>> = { fifo: [], fair: [] };
try {
  // Warm both (first requests compile kernels and fill allocators).
  await run(baseline);
  await run(ours);
  for (let r = 0; r < Number(values.rounds); r++) {
    for (const [name, s] of [
      ['fifo', baseline],
      ['fair', ours],
    ] as const) {
      const res = await run(s);
      results[name].push(res);
      process.stdout.write(`${name} round ${r + 1}: ${res.tps.toFixed(1)} tokens/s, B's mean time to first token ${res.bTtftMs.toFixed(0)} ms\n`);
    }
  }
} finally {
  baseline.proc.kill();
  ours.proc.kill();
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const fifo = median(results.fifo.map((r) => r.tps));
const fair = median(results.fair.map((r) => r.tps));
process.stdout.write(
  `median tokens/s: FIFO ${fifo.toFixed(1)}, fair ${fair.toFixed(1)} (fair/FIFO ${(fair / fifo).toFixed(3)}); ` +
    `B's time to first token: FIFO ${median(results.fifo.map((r) => r.bTtftMs)).toFixed(0)} ms, fair ${median(results.fair.map((r) => r.bTtftMs)).toFixed(0)} ms\n`,
);
