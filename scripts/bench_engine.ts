#!/usr/bin/env node
/**
 * Engine microbenchmark: prefill and decode speed of an exported model per batch size and
 * context length, without the scheduler or HTTP.
 *   npm run bench:engine -- --model <export dir> [--batch 1,2,4,8,16] [--context 128,1024] [--steps 16] [--chunk 512] [--threads 2] [--kv-cache-prefault] [--json out.json]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { runEngineBench } from '../src/bench/engine_bench.js';

const USAGE =
  'usage: bench_engine --model <export dir> [--batch 1,2,4,8,16] [--context 128,1024] [--steps 16] [--chunk 512] [--threads 2] [--device cpu|cuda] [--kv-cache-prefault] [--json out.json]\n';
function parseFlags() {
  try {
    return parseArgs({
      options: {
        help: { type: 'boolean' },
        model: { type: 'string' },
        batch: { type: 'string', default: '1,2,4,8,16' },
        context: { type: 'string', default: '128,1024' },
        steps: { type: 'string', default: '16' },
        chunk: { type: 'string', default: '512' },
        threads: { type: 'string', default: '2' },
        device: { type: 'string', default: 'cpu' },
        'kv-cache-prefault': { type: 'boolean' },
        json: { type: 'string' },
      },
    });
  } catch (err) {
    // Unknown or malformed flags: say which, then how to call it (not a stack trace).
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}
const parsed = parseFlags();
const { values } = parsed;
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const list = (s: string | undefined) =>
  (s ?? '')
    .split(',')
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
if (!values.model) {
  process.stderr.write(USAGE);
  process.exit(2);
}
const rows = await runEngineBench(
  {
    modelDir: values.model,
    batchSizes: list(values.batch),
    contexts: list(values.context),
    decodeSteps: Number(values.steps),
    prefillChunk: Number(values.chunk),
    threads: Number(values.threads),
    device: values.device as 'cpu',
    kvCachePrefault: values['kv-cache-prefault'] ?? false,
  },
  (line) => process.stdout.write(`${line}\n`),
);
if (values.json) writeFileSync(values.json, JSON.stringify(rows, null, 2));
