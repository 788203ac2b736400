/**
 * A load generator for any OpenAI-compatible server, with vLLM `bench serve`'s metric
 * definitions: TTFT (time to first token), TPOT (time per output token after the first,
 * per request), ITL (gaps between streamed chunks), E2E latency, request throughput and
 * output tokens per second. Datasets: independent random prompts, prompts sharing a
 * prefix (vLLM's `prefix_repetition`), and multi-turn conversations.
 */
import { mulberry32 } from '../util/random.js';
import { type RequestResult, streamRequest } from './stream_request.js';

export type { RequestResult } from './stream_request.js';

export type Dataset = 'random' | 'shared-prefix' | 'multi-turn';
export type ChatMessage = { role: 'user' | 'assistant'; content: string };

export interface LoadBenchOptions {
  baseUrl: string;
  model: string | null;
  apiKey: string | null;
  endpoint: 'completions' | 'chat';
  inputLen: number;
  outputLen: number;
  numPrompts: number;
  /** Concurrency levels to run, one after another. */
  concurrency: number[];
  /** Requests per second (Poisson arrivals) instead of a fixed concurrency; Infinity = all at once. */
  requestRate: number | null;
  seed: number;
  /** Per request, seconds. */
  timeout: number;
  /** Which prompts (default random). */
  dataset?: Dataset;
  /** shared-prefix: length of the prefix every prompt of a level starts with (tokens, or words for chat). */
  prefixLen?: number;
  /** multi-turn: turns per conversation (`numPrompts` conversations; `inputLen` is each user message). */
  turns?: number;
  /** multi-turn: seconds a user reads an answer before sending the next turn (0: at once). */
  thinkTime?: number;
  /** Chat: ask for Qwen3 thinking on or off (`chat_template_kwargs.enable_thinking`); null sends nothing. */
  thinking?: boolean | null;
  /** Ends the run early: requests in flight are cut, and no new ones start. */
  signal?: AbortSignal;
}

export interface Summary {
  mean: number;
  median: number;
  p99: number;
  max: number;
}

export interface LevelResult {
  concurrency: number | null;
  requestRate: number | null;
  completed: number;
  failed: number;
  durationS: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  meanInputTokens: number;
  meanOutputTokens: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2eMs: Summary;
  /** Mean prompt tokens served from the server's prefix cache. */
  meanCachedTokens: number;
  /** The models the server said it ran (the `model` field of its answers). */
  models: string[];
  /** Failed requests by how they failed (see RequestResult.failure). */
  failures: Record<string, number>;
  /** Every request: when it was sent (epoch ms), its latencies and how it failed. */
  requests: Array<{ sentAt: number; ttftMs: number; e2eMs: number; ok: boolean; failure: string | null }>;
  /** multi-turn: each turn's mean TTFT, prompt and cached tokens over the conversations. */
  turns?: Array<{ turn: number; ttftMs: number; promptTokens: number; cachedTokens: number }>;
  errors: string[];
}

const WORDS =
  'time person year way day thing man world life hand part child eye woman place work week case point government company number group problem fact river mountain ocean planet garden window music story system question answer market city country history science language energy water light'.split(
    ' ',
  );

/** Seeded random prompts: token ids for completions (exact lengths), words for chat. */
export function randomPrompts(n: number, inputLen: number, seed: number, endpoint: 'completions' | 'chat'): Array<number[] | string> {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, () =>
    endpoint === 'completions'
      ? Array.from({ length: inputLen }, () => 1000 + Math.floor(rand() * 100_000))
      : Array.from({ length: inputLen }, () => WORDS[Math.floor(rand() * WORDS.length)]).join(' '),
  );
}

/**
 * shared-prefix: `n` prompts that start with one random prefix of `prefixLen` and end with
 * a random suffix of `suffixLen` of their own.
 */
export function sharedPrefixPrompts(
  n: number,
  prefixLen: number,
  suffixLen: number,
  seed: number,
  endpoint: 'completions' | 'chat',
): Array<number[] | string> {
  const [prefix] = randomPrompts(1, prefixLen, seed, endpoint);
  return randomPrompts(n, suffixLen, seed + 1, endpoint).map((suffix) =>
    endpoint === 'completions' ? [...(prefix as number[]), ...(suffix as number[])] : `${prefix as string} ${suffix as string}`,
  );
}

export function summarize(values: number[]): Summary {
  if (values.length === 0) return { mean: 0, median: 0, p99: 0, max: 0 };
  const s = [...values].sort((a, b) => a - b);
  const q = (p: number) => {
    const idx = (s.length - 1) * p;
    const lo = Math.floor(idx);
    return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (idx - lo);
  };
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, median: q(0.5), p99: q(0.99), max: s[s.length - 1] };
}

function oneRequest(o: LoadBenchOptions, model: string, prompt: number[] | string | ChatMessage[]): Promise<RequestResult> {
  const body =
    o.endpoint === 'completions'
      ? { model, prompt, max_tokens: o.outputLen, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } }
      : {
          model,
          messages: typeof prompt === 'string' ? [{ role: 'user', content: prompt }] : prompt,
          max_tokens: o.outputLen,
          ignore_eos: true,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
          ...(o.thinking === null || o.thinking === undefined ? {} : { chat_template_kwargs: { enable_thinking: o.thinking } }),
        };
  return streamRequest(`${o.baseUrl}/${o.endpoint === 'chat' ? 'chat/completions' : 'completions'}`, o.apiKey, body, o.timeout, o.signal);
}

/** One unit of work for a client: a prompt, or a conversation whose turns run one after another. */
type Job = { prompt: number[] | string } | { conversation: string[] };

/** Runs a conversation: each turn sends the history so far plus the next user message. */
async function converse(o: LoadBenchOptions, model: string, messages: string[], results: RequestResult[], byTurn: RequestResult[][]): Promise<void> {
  const history: ChatMessage[] = [];
  for (const [turn, text] of messages.entries()) {
    history.push({ role: 'user', content: text });
    const r = await oneRequest(o, model, history);
    results.push(r);
    (byTurn[turn] ??= []).push(r);
    if (!r.ok) return;
    history.push({ role: 'assistant', content: r.content });
    if (o.thinkTime && turn < messages.length - 1) await new Promise((resolve) => setTimeout(resolve, o.thinkTime! * 1000));
  }
}

async function runLevel(o: LoadBenchOptions, model: string, jobs: Job[], concurrency: number | null, rate: number | null): Promise<LevelResult> {
  const results: RequestResult[] = [];
  const byTurn: RequestResult[][] = [];
  const runJob = (job: Job) =>
    'prompt' in job ? oneRequest(o, model, job.prompt).then((r) => void results.push(r)) : converse(o, model, job.conversation, results, byTurn);
  const started = performance.now();
  if (rate !== null) {
    const rand = mulberry32(o.seed + 1);
    const pending: Promise<void>[] = [];
    for (const job of jobs) {
      pending.push(runJob(job));
      if (Number.isFinite(rate)) await new Promise((r) => setTimeout(r, (-Math.log(1 - rand()) / rate) * 1000));
    }
    await Promise.all(pending);
  } else {
    let next = 0;
    const worker = async () => {
      while (next < jobs.length && !o.signal?.aborted) await runJob(jobs[next++]);
    };
    await Promise.all(Array.from({ length: concurrency ?? 1 }, worker));
  }
  const durationS = (performance.now() - started) / 1000;
  const ok = results.filter((r) => r.ok);
  const outputTokens = ok.reduce((n, r) => n + r.outputTokens, 0);
  const inputTokens = ok.reduce((n, r) => n + r.promptTokens, 0);
  const mean = (rs: RequestResult[], f: (r: RequestResult) => number) => (rs.length ? rs.reduce((n, r) => n + f(r), 0) / rs.length : 0);
  return {
    concurrency,
    requestRate: rate,
    completed: ok.length,
    failed: results.length - ok.length,
    durationS,
    requestThroughput: ok.length / durationS,
    outputThroughput: outputTokens / durationS,
    totalTokenThroughput: (inputTokens + outputTokens) / durationS,
    meanInputTokens: ok.length ? inputTokens / ok.length : 0,
    meanOutputTokens: ok.length ? outputTokens / ok.length : 0,
    ttftMs: summarize(ok.map((r) => r.ttft)),
    tpotMs: summarize(ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2e - r.ttft) / (r.outputTokens - 1))),
    itlMs: summarize(ok.flatMap((r) => r.itls)),
    e2eMs: summarize(ok.map((r) => r.e2e)),
    meanCachedTokens: mean(ok, (r) => r.cachedTokens),
    models: [...new Set(results.flatMap((r) => (r.model ? [r.model] : [])))],
    failures: results.reduce<Record<string, number>>((f, r) => {
      if (r.failure) f[r.failure] = (f[r.failure] ?? 0) + 1;
      return f;
    }, {}),
    requests: results.map((r) => ({ sentAt: r.sentAt, ttftMs: r.ttft, e2eMs: r.e2e, ok: r.ok, failure: r.failure })),
    ...(byTurn.length > 0
      ? {
          turns: byTurn.map((rs, i) => {
            const done = rs.filter((r) => r.ok);
            return {
              turn: i + 1,
              ttftMs: mean(done, (r) => r.ttft),
              promptTokens: mean(done, (r) => r.promptTokens),
              cachedTokens: mean(done, (r) => r.cachedTokens),
            };
          }),
        }
      : {}),
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => r.error ?? 'unknown'))].slice(0, 5),
  };
}

/**
 * A level's work. Each level has prompts of its own (another seed), so a server with a
 * prefix cache does not answer one level from what an earlier level left.
 */
export function datasetJobs(o: LoadBenchOptions, level: number): Job[] {
  const seed = o.seed + 1000 * (level + 1);
  switch (o.dataset ?? 'random') {
    case 'random':
      return randomPrompts(o.numPrompts, o.inputLen, seed, o.endpoint).map((prompt) => ({ prompt }));
    case 'shared-prefix':
      return sharedPrefixPrompts(o.numPrompts, o.prefixLen ?? 1024, o.inputLen, seed, o.endpoint).map((prompt) => ({ prompt }));
    case 'multi-turn':
      return Array.from({ length: o.numPrompts }, (_, c) => ({
        conversation: randomPrompts(o.turns ?? 10, o.inputLen, seed + c * 97, 'chat') as string[],
      }));
  }
}

export async function resolveModelName(o: Pick<LoadBenchOptions, 'baseUrl' | 'model' | 'apiKey'>): Promise<string> {
  if (o.model) return o.model;
  const res = await fetch(`${o.baseUrl}/models`, { headers: o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {} });
  if (!res.ok) throw new Error(`GET ${o.baseUrl}/models: HTTP ${res.status}`);
  return ((await res.json()) as { data: Array<{ id: string }> }).data[0].id;
}

export async function runLoadBench(o: LoadBenchOptions, log: (line: string) => void = () => {}): Promise<{ model: string; levels: LevelResult[] }> {
  const model = await resolveModelName(o);
  if (o.dataset === 'multi-turn' && o.endpoint !== 'chat') throw new Error('the multi-turn dataset needs --endpoint chat');
  // One short request first so that lazy initialisation is not measured (a prompt of its
  // own, so that it leaves nothing in a prefix cache that the levels could use).
  await oneRequest({ ...o, outputLen: 2 }, model, randomPrompts(1, Math.min(o.inputLen, 64), o.seed + 1, o.endpoint)[0]);
  const levels: LevelResult[] = [];
  const plan: Array<[number | null, number | null]> = o.requestRate !== null ? [[null, o.requestRate]] : o.concurrency.map((c) => [c, null]);
  for (const [i, [c, rate]] of plan.entries()) {
    const r = await runLevel(o, model, datasetJobs(o, i), c, rate);
    levels.push(r);
    log(formatRow(r));
  }
  return { model, levels };
}

const f1 = (x: number) => x.toFixed(1);

export function formatRow(r: LevelResult): string {
  const head = r.concurrency !== null ? `concurrency ${r.concurrency}` : `rate ${r.requestRate}/s`;
  const turns = r.turns
    ? `; TTFT by turn ${r.turns.map((t) => `${t.turn}: ${f1(t.ttftMs)} ms (${Math.round(t.cachedTokens)}/${Math.round(t.promptTokens)} cached)`).join(', ')}`
    : '';
  const failures = Object.entries(r.failures)
    .map(([k, n]) => `${n} ${k}`)
    .join(', ');
  return `${head}: ${r.completed} ok, ${r.failed} failed${failures ? ` (${failures})` : ''}; ${f1(r.outputThroughput)} output tok/s, ${r.requestThroughput.toFixed(2)} req/s; TTFT mean ${f1(r.ttftMs.mean)} / median ${f1(r.ttftMs.median)} / p99 ${f1(r.ttftMs.p99)} / max ${f1(r.ttftMs.max)} ms; TPOT mean ${f1(r.tpotMs.mean)} / p99 ${f1(r.tpotMs.p99)} ms; ITL median ${f1(r.itlMs.median)} / p99 ${f1(r.itlMs.p99)} ms; E2E median ${f1(r.e2eMs.median)} ms; cached ${f1(r.meanCachedTokens)} of ${f1(r.meanInputTokens)} prompt tokens${turns}`;
}

export function markdownTable(levels: LevelResult[]): string {
  const rows = [
    '| concurrency | req/s | output tok/s | TTFT mean / median / p99 / max (ms) | TPOT mean / median / p99 (ms) | ITL median / p99 (ms) | E2E median / p99 (ms) | prompt / cached tokens (mean) | failed |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of levels) {
    rows.push(
      `| ${r.concurrency ?? `${r.requestRate}/s`} | ${r.requestThroughput.toFixed(2)} | ${f1(r.outputThroughput)} | ${f1(r.ttftMs.mean)} / ${f1(r.ttftMs.median)} / ${f1(r.ttftMs.p99)} / ${f1(r.ttftMs.max)} | ${f1(r.tpotMs.mean)} / ${f1(r.tpotMs.median)} / ${f1(r.tpotMs.p99)} | ${f1(r.itlMs.median)} / ${f1(r.itlMs.p99)} | ${f1(r.e2eMs.median)} / ${f1(r.e2eMs.p99)} | ${f1(r.meanInputTokens)} / ${f1(r.meanCachedTokens)} | ${r.failed} |`,
    );
  }
  const turns = levels.find((l) => l.turns)?.turns;
  if (turns) {
    rows.push('', '| turn | TTFT mean (ms) | prompt tokens | cached tokens |', '|---|---|---|---|');
    for (const t of turns) rows.push(`| ${t.turn} | ${f1(t.ttftMs)} | ${Math.round(t.promptTokens)} | ${Math.round(t.cachedTokens)} |`);
  }
  return rows.join('\n');
}
