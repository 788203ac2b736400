import { randomPrompts, resolveModelName } from './load_bench.js';

/** A benchmark of an embeddings or rerank endpoint: inputs per second at each batch size. */
export interface RetrievalBenchOptions {
  /** The API base, e.g. http://127.0.0.1:8000/v1 (rerank is posted to its `/rerank`). */
  baseUrl: string;
  model: string | null;
  apiKey: string | null;
  endpoint: 'embeddings' | 'rerank';
  /** Words per input (embeddings) or per document (rerank). */
  inputLen: number;
  /** Inputs in one request (rerank: documents per query). */
  batchSizes: number[];
  /** Inputs per batch size, sent one request after another. */
  numInputs: number;
  seed: number;
  timeout: number;
}

export interface RetrievalLevel {
  batch: number;
  requests: number;
  inputs: number;
  seconds: number;
  inputsPerSecond: number;
  /** Milliseconds per request, median. */
  medianMs: number;
}

async function post(o: RetrievalBenchOptions, body: unknown): Promise<void> {
  const url = `${o.baseUrl}/${o.endpoint}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {}) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(o.timeout * 1000),
  });
  if (!res.ok) throw new Error(`POST ${url}: HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
  await res.arrayBuffer();
}

/**
 * Sends `numInputs` random texts per batch size, `batch` per request, one request at a
 * time (a client indexing documents), and reports inputs per second. Inputs differ across
 * requests and sizes (seeded), so no result is a prefix-cache hit of an earlier one.
 */
export async function runRetrievalBench(
  o: RetrievalBenchOptions,
  log: (line: string) => void = () => {},
): Promise<{ model: string; levels: RetrievalLevel[] }> {
  const model = await resolveModelName(o);
  const body = (inputs: string[]) =>
    o.endpoint === 'embeddings' ? { model, input: inputs } : { model, query: 'what does this passage say about the river?', documents: inputs };
  // One request first, so that lazy initialisation is not measured.
  await post(o, body(randomPrompts(1, 8, o.seed + 1, 'chat') as string[]));
  const levels: RetrievalLevel[] = [];
  for (const [i, batch] of o.batchSizes.entries()) {
    const texts = randomPrompts(o.numInputs, o.inputLen, o.seed + 1000 * (i + 1), 'chat') as string[];
    const times: number[] = [];
    const started = performance.now();
    for (let at = 0; at < texts.length; at += batch) {
      const t0 = performance.now();
      await post(o, body(texts.slice(at, at + batch)));
      times.push(performance.now() - t0);
    }
    const seconds = (performance.now() - started) / 1000;
    times.sort((a, b) => a - b);
    const level = {
      batch,
      requests: times.length,
      inputs: texts.length,
      seconds,
      inputsPerSecond: texts.length / seconds,
      medianMs: times[Math.floor(times.length / 2)],
    };
    log(`batch ${batch}: ${level.inputsPerSecond.toFixed(1)} inputs/s`);
    levels.push(level);
  }
  return { model, levels };
}

export function retrievalTable(levels: RetrievalLevel[]): string {
  const rows = levels.map(
    (l) => `| ${l.batch} | ${l.requests} | ${l.inputs} | ${l.seconds.toFixed(2)} | ${l.inputsPerSecond.toFixed(1)} | ${l.medianMs.toFixed(1)} |`,
  );
  return ['| batch | requests | inputs | seconds | inputs/s | median ms/request |', '|---|---|---|---|---|---|', ...rows].join('\n');
}
