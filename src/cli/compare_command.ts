import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { comparisonTable, parseScenarios, runComparison } from '../bench/compare.js';
import { ConfigError } from '../errors.js';
import { type Flags, formatHelp, parseCommand, wholeNumber } from './flags.js';

const url = z
  .string()
  .url()
  .transform((s) => s.replace(/\/+$/, ''));

export const COMPARE_FLAGS = {
  'ours-url': { type: 'string', default: 'http://127.0.0.1:8000/v1', help: 'API base of our server', schema: url },
  'peer-url': {
    type: 'string',
    help: 'API base of the other OpenAI-compatible server (required; llama-server: http://127.0.0.1:8080/v1)',
    schema: url.optional(),
  },
  'ours-name': { type: 'string', default: 'qwen3-serve', help: 'Our column in the table', schema: z.string().min(1) },
  'peer-name': { type: 'string', default: 'peer', help: "The other server's column in the table", schema: z.string().min(1) },
  'ours-model': { type: 'string', defaultText: 'the first of its GET /models', help: 'Model id on our server', schema: z.string().optional() },
  'peer-model': { type: 'string', defaultText: 'the first of its GET /models', help: 'Model id on the other server', schema: z.string().optional() },
  'ours-api-key': { type: 'string', help: 'Bearer token for our server', schema: z.string().optional() },
  'peer-api-key': { type: 'string', help: 'Bearer token for the other server', schema: z.string().optional() },
  scenarios: {
    type: 'string',
    default: '128:128:1,128:128:4,128:128:8,1024:128:1,1024:128:8',
    help: 'Workloads as input:output:concurrency, comma-separated (token-id prompts on /completions, ignore_eos)',
    schema: z.string().transform((s, ctx) => {
      try {
        return parseScenarios(s);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
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
  out: { type: 'string', default: 'bench-results/compare', help: 'Writes <out>.json and <out>.md', schema: z.string() },
} satisfies Flags;

export const COMPARE_HELP = formatHelp(
  'qwen3-serve compare --peer-url URL [--ours-url URL] [--scenarios 128:128:1,1024:128:8] [--rounds 2]',
  'Runs `qwen3-serve bench` against our server and another OpenAI-compatible server (llama-server, vLLM, Ollama), alternately and one at a time, and prints each measure of each workload side by side with the ratio ours / theirs (npm run bench:compare -- …).',
  COMPARE_FLAGS,
);

export async function compareCommand(argv: string[]): Promise<void> {
  const o = parseCommand(COMPARE_FLAGS, argv, COMPARE_HELP);
  if (!o) return;
  if (!o['peer-url']) throw new ConfigError('--peer-url is required: the API base of the server to compare with');
  const ours = { name: o['ours-name'], baseUrl: o['ours-url'], model: o['ours-model'] ?? null, apiKey: o['ours-api-key'] ?? null };
  const peer = { name: o['peer-name'], baseUrl: o['peer-url'], model: o['peer-model'] ?? null, apiKey: o['peer-api-key'] ?? null };
  const results = await runComparison(
    { ours, peer, scenarios: o.scenarios, rounds: o.rounds, numPrompts: o['num-prompts'], seed: o.seed, timeout: o.timeout },
    (line) => process.stderr.write(`${line}\n`),
  );
  const table = comparisonTable(results, ours.name, peer.name);
  const heading = `${ours.name} (${ours.baseUrl}) vs ${peer.name} (${peer.baseUrl}), ${o.rounds} alternated round${o.rounds === 1 ? '' : 's'}, medians; ratio = ${ours.name} / ${peer.name}`;
  process.stdout.write(`\n${heading}\n\n${table}\n`);
  mkdirSync(dirname(o.out) || '.', { recursive: true });
  writeFileSync(
    `${o.out}.json`,
    JSON.stringify({ date: new Date().toISOString(), ours, peer, rounds: o.rounds, results }, (k, v) => (k === 'apiKey' ? undefined : v), 2),
  );
  writeFileSync(`${o.out}.md`, `${heading}\n\n${table}\n`);
  process.stderr.write(`wrote ${o.out}.json, ${o.out}.md\n`);
}
