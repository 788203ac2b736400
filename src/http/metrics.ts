import client from 'prom-client';
import type { Engine } from '../engine/engine.js';
import type { RequestMetrics } from '../engine/types.js';

export type MetricsCompat = 'none' | 'vllm';

/**
 * Prometheus metrics in vLLM's vocabulary (running/waiting requests, token counters,
 * latency histograms, KV cache usage), on a registry of this server's own, named
 * `qwen3_serve_…`; with `compat` 'vllm' each is also exported under vLLM's own `vllm:`
 * name, so dashboards, autoscalers and inference gateways built for vLLM read it unchanged.
 */
export class ServerMetrics {
  readonly registry = new client.Registry();
  /** The `vllm:` series, labelled `model_name` as vLLM's own are (ours say `model`, as the rest of our API does). */
  private readonly vllmRegistry = new client.Registry();
  private readonly promptTokens: client.Counter[];
  private readonly generationTokens: client.Counter[];
  private readonly requestSuccess: Array<client.Counter<'finished_reason'>>;
  private readonly ttft: client.Histogram[];
  private readonly tpot: client.Histogram[];
  private readonly e2e: client.Histogram[];
  private readonly queueTime: client.Histogram[];
  /** Per API key (by name): finished requests, tokens, and refusals by the limit reached. */
  private readonly keyRequests: client.Counter<'api_key' | 'finished_reason'>;
  private readonly keyPromptTokens: client.Counter<'api_key'>;
  private readonly keyGenerationTokens: client.Counter<'api_key'>;
  private readonly keyRateLimited: client.Counter<'api_key' | 'limit'>;
  /** The engine's stats for the scrape in progress: one round trip to the worker per scrape, not one per metric. */
  private snapshot: ReturnType<Engine['stats']> | null = null;

  constructor(
    private readonly engine: Engine,
    modelName: string,
    private readonly compat: MetricsCompat = 'none',
  ) {
    const stats = () => this.snapshot ?? engine.stats();
    const registersOf = (name: string) => [name.startsWith('vllm:') ? this.vllmRegistry : this.registry];
    const prefixes = ['qwen3_serve_', ...(compat === 'vllm' ? ['vllm:'] : [])];
    this.registry.setDefaultLabels({ model: modelName });
    this.vllmRegistry.setDefaultLabels({ model_name: modelName });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'qwen3_serve_' });
    const gauge = (name: string, help: string, value: () => number | Promise<number>, names = prefixes.map((p) => p + name)) => {
      for (const n of names) {
        new client.Gauge({
          name: n,
          help,
          registers: registersOf(n),
          async collect() {
            this.set(await value());
          },
        });
      }
    };
    const usage = async () => {
      const s = await stats();
      return s.kvBudgetTokens > 0 ? s.kvUsedTokens / s.kvBudgetTokens : 0;
    };
    gauge('num_requests_running', 'Requests in the running batch (prefilling or decoding).', async () => (await stats()).running);
    gauge('num_requests_waiting', 'Requests waiting for a batch slot.', async () => (await stats()).waiting);
    gauge('kv_cache_usage_perc', 'Fraction of the KV cache budget holding cached tokens (1 = full).', usage);
    // vLLM's older name for the same gauge, still read by some routers.
    if (compat === 'vllm') gauge('', 'Fraction of the KV cache budget holding cached tokens (1 = full).', usage, ['vllm:gpu_cache_usage_perc']);
    gauge('kv_cache_bytes', 'Bytes currently allocated for the KV cache.', async () => (await stats()).kvBytes, ['qwen3_serve_kv_cache_bytes']);
    gauge('engine_up', '1 when the engine is ready, 0 while loading, restarting or down.', () => (engine.state === 'ready' ? 1 : 0), [
      'qwen3_serve_engine_up',
    ]);
    // Prefix caching, counted in the engine: vLLM's prefix_cache_queries / _hits in tokens.
    const prefix = async () => (await stats()).prefixCache;
    const engineCounter = (name: string, help: string, value: () => Promise<number>, names = prefixes.map((p) => p + name)) => {
      for (const n of names) {
        new client.Counter({
          name: n,
          help,
          registers: registersOf(n),
          async collect() {
            // The engine keeps the total; a restarted engine starts again from 0, as a restarted process would.
            this.reset();
            this.inc(await value());
          },
        });
      }
    };
    engineCounter('prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache.', async () => (await prefix())?.queriedTokens ?? 0);
    engineCounter(
      'prefix_cache_hits_total',
      'Prompt tokens served from the prefix cache (not computed).',
      async () => (await prefix())?.hitTokens ?? 0,
    );
    // Ours alone (vLLM has no such work), so under our name only.
    engineCounter(
      '',
      "Prompt tokens computed ahead, while the engine was idle, for conversations' next turns (--no-warm-next-turn turns it off).",
      async () => (await stats()).warmedTokensTotal,
      ['qwen3_serve_prefix_cache_warmed_tokens_total'],
    );
    gauge('prefix_cache_bytes', 'Bytes the prefix cache holds.', async () => (await prefix())?.bytes ?? 0, ['qwen3_serve_prefix_cache_bytes']);
    gauge(
      'prefix_cache_capacity_bytes',
      'Bytes the prefix cache may hold (--prefix-cache-memory; 0 when off).',
      async () => (await prefix())?.capacityBytes ?? 0,
      ['qwen3_serve_prefix_cache_capacity_bytes'],
    );
    gauge('prefix_cache_blocks', 'Blocks in the prefix cache.', async () => (await prefix())?.blocks ?? 0, ['qwen3_serve_prefix_cache_blocks']);
    gauge(
      'prefix_cache_block_tokens',
      'Most tokens in a prefix cache block (the prefill chunk, which also ends where a system, user or tool message starts; 0 when off).',
      async () => (await prefix())?.blockTokens ?? 0,
      ['qwen3_serve_prefix_cache_block_tokens'],
    );
    // The disk tier (--prefix-cache-dir), ours alone. Load latency as a sum and a count, a summary's way.
    const disk = async () => (await prefix())?.disk ?? null;
    const ours = (name: string) => [`qwen3_serve_${name}`];
    gauge('', 'Blocks in the prefix cache disk tier.', async () => (await disk())?.blocks ?? 0, ours('prefix_cache_disk_blocks'));
    gauge('', 'Bytes the prefix cache disk tier holds.', async () => (await disk())?.bytes ?? 0, ours('prefix_cache_disk_bytes'));
    gauge(
      '',
      'Bytes the prefix cache disk tier may hold (--prefix-cache-disk; 0 when off).',
      async () => (await disk())?.capacityBytes ?? 0,
      ours('prefix_cache_disk_capacity_bytes'),
    );
    gauge(
      '',
      '1 when the disk tier cannot write (a full or read-only disk): prompts are cached in memory and served from the blocks it holds.',
      async () => ((await disk())?.degraded ? 1 : 0),
      ours('prefix_cache_disk_degraded'),
    );
    const diskCounters = [
      ['hits_total', 'hitTokens', 'Prompt tokens served from blocks read from the disk tier (counted in the hits too).'],
      ['loads_total', 'loads', 'Blocks read from the disk tier, checked and loaded.'],
      [
        'load_seconds_total',
        'loadSeconds',
        'Seconds the disk tier spent reading the blocks it loaded (divided by loads: the mean latency of a load).',
      ],
      ['writes_total', 'writes', 'Blocks written to the disk tier.'],
      ['writes_dropped_total', 'writesDropped', 'Block writes given up because the disk tier was behind (its writer never holds up a step).'],
      ['corrupt_blocks_total', 'corrupt', 'Block files found torn, truncated or edited (failing their checksum): deleted, never served.'],
    ] as const;
    for (const [name, field, help] of diskCounters) {
      engineCounter('', help, async () => (await disk())?.[field] ?? 0, ours(`prefix_cache_disk_${name}`));
    }
    // vLLM's cache_config_info, read by inference gateways' prefix-aware routing: the block
    // size and block count of the prefix cache (the running sequences' cache is not paged).
    for (const name of prefixes.map((p) => `${p}cache_config_info`)) {
      new client.Gauge({
        name,
        help: 'Prefix cache configuration in labels: block_size (tokens) and num_gpu_blocks (blocks it can hold); the value is 1.',
        labelNames: ['block_size', 'num_gpu_blocks', 'enable_prefix_caching'],
        registers: registersOf(name),
        async collect() {
          this.reset();
          const p = await prefix();
          const info = engine.info;
          const blockSize = p?.blockTokens ?? info?.limits.maxNumBatchedTokens ?? 0;
          const blocks = p?.capacityBlocks ?? 0;
          this.set({ block_size: String(blockSize), num_gpu_blocks: String(blocks), enable_prefix_caching: String(p !== null) }, 1);
        },
      });
    }
    const counter = (name: string, help: string) => prefixes.map((p) => new client.Counter({ name: `${p}${name}`, help, registers: registersOf(p) }));
    this.promptTokens = counter('prompt_tokens_total', 'Prompt tokens processed.');
    this.generationTokens = counter('generation_tokens_total', 'Tokens generated.');
    this.requestSuccess = prefixes.map(
      (p) =>
        new client.Counter({
          name: `${p}request_success_total`,
          help: 'Finished requests by finish reason.',
          labelNames: ['finished_reason'],
          registers: registersOf(p),
        }),
    );
    const histogram = (name: string, help: string, buckets: number[]) =>
      prefixes.map((p) => new client.Histogram({ name: `${p}${name}`, help, buckets, registers: registersOf(p) }));
    const latency = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80];
    this.ttft = histogram('time_to_first_token_seconds', 'Time to first token.', latency);
    this.tpot = histogram(
      'time_per_output_token_seconds',
      'Mean time per output token after the first, per request.',
      [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5],
    );
    this.e2e = histogram('e2e_request_latency_seconds', 'End-to-end request latency.', latency);
    this.queueTime = histogram('request_queue_time_seconds', 'Time spent waiting for a batch slot.', latency);
    // Ours alone: vLLM has no API keys of its own.
    this.keyRequests = new client.Counter({
      name: 'qwen3_serve_api_key_request_success_total',
      help: 'Finished requests by API key name and finish reason.',
      labelNames: ['api_key', 'finished_reason'],
      registers: [this.registry],
    });
    this.keyPromptTokens = new client.Counter({
      name: 'qwen3_serve_api_key_prompt_tokens_total',
      help: 'Prompt tokens processed, by API key name.',
      labelNames: ['api_key'],
      registers: [this.registry],
    });
    this.keyGenerationTokens = new client.Counter({
      name: 'qwen3_serve_api_key_generation_tokens_total',
      help: 'Tokens generated, by API key name.',
      labelNames: ['api_key'],
      registers: [this.registry],
    });
    this.keyRateLimited = new client.Counter({
      name: 'qwen3_serve_api_key_rate_limited_total',
      help: "Requests refused (429) by one of their API key's limits, by key name and limit.",
      labelNames: ['api_key', 'limit'],
      registers: [this.registry],
    });
  }

  /** Counts a request refused by its key's `limit`. */
  rateLimited(key: string, limit: string): void {
    this.keyRateLimited.inc({ api_key: key, limit });
  }

  /** Records one finished generation (one choice), and under its API key's name when it had one. */
  observe(m: RequestMetrics, finishReason: string, key: string | null = null): void {
    if (key !== null) {
      this.keyRequests.inc({ api_key: key, finished_reason: finishReason });
      this.keyPromptTokens.inc({ api_key: key }, m.promptTokens);
      this.keyGenerationTokens.inc({ api_key: key }, m.completionTokens);
    }
    for (const c of this.promptTokens) c.inc(m.promptTokens);
    for (const c of this.generationTokens) c.inc(m.completionTokens);
    for (const c of this.requestSuccess) c.inc({ finished_reason: finishReason });
    for (const h of this.ttft) h.observe(m.firstTokenMs / 1000);
    for (const h of this.e2e) h.observe(m.totalMs / 1000);
    for (const h of this.queueTime) h.observe(m.queueMs / 1000);
    if (m.completionTokens > 1) for (const h of this.tpot) h.observe((m.totalMs - m.firstTokenMs) / 1000 / (m.completionTokens - 1));
  }

  async text(): Promise<string> {
    this.snapshot = this.engine.stats();
    try {
      const ours = await this.registry.metrics();
      return this.compat === 'vllm' ? `${ours}\n${await this.vllmRegistry.metrics()}` : ours;
    } finally {
      this.snapshot = null;
    }
  }

  /** The metrics as prom-client's JSON, for a server of several models to merge (mergedMetricsText). */
  async json(): Promise<client.MetricObjectWithValues<client.MetricValue<string>>[]> {
    this.snapshot = this.engine.stats();
    try {
      return [...(await this.registry.getMetricsAsJSON()), ...(await this.vllmRegistry.getMetricsAsJSON())];
    } finally {
      this.snapshot = null;
    }
  }
}

/** What /metrics serves of a server of several models: each loaded model's series, told apart by `model` (`model_name` on the `vllm:` series). */
export interface MetricsText {
  text(): Promise<string>;
  /** Counts a 429 for an API key's limit, where the metrics keep per-key counters. */
  rateLimited?(key: string, limit: string): void;
}

/**
 * The metrics of a server of several models: each loaded model's (mergedMetricsText), and
 * the 429s of API keys' limits, which are kept for the server as a whole (key_limits.ts), so
 * counted once for it, with no model label.
 */
export class MultiModelMetrics implements MetricsText {
  private readonly registry = new client.Registry();
  private readonly keyRateLimited = new client.Counter({
    name: 'qwen3_serve_api_key_rate_limited_total',
    help: "Requests refused (429) by one of their API key's limits, by key name and limit.",
    labelNames: ['api_key', 'limit'],
    registers: [this.registry],
  });

  constructor(private readonly models: () => ServerMetrics[]) {}

  rateLimited(key: string, limit: string): void {
    this.keyRateLimited.inc({ api_key: key, limit });
  }

  async text(): Promise<string> {
    return mergedMetricsText(this.models(), [await this.registry.getMetricsAsJSON()]);
  }
}

export async function mergedMetricsText(
  parts: ServerMetrics[],
  more: client.MetricObjectWithValues<client.MetricValue<string>>[][] = [],
): Promise<string> {
  if (parts.length === 0 && more.length === 0) return '';
  const merged = client.AggregatorRegistry.aggregate([...(await Promise.all(parts.map((m) => m.json()))), ...more]);
  return merged.metrics();
}
