import client from 'prom-client';
import type { Engine } from '../engine/engine.js';
import type { RequestMetrics } from '../engine/types.js';

/**
 * Prometheus metrics in vLLM's vocabulary (running/waiting requests, token counters,
 * latency histograms, KV cache usage), on a registry of this server's own.
 */
export class ServerMetrics {
  readonly registry = new client.Registry();
  private readonly promptTokens: client.Counter;
  private readonly generationTokens: client.Counter;
  private readonly requestSuccess: client.Counter<'finished_reason'>;
  private readonly ttft: client.Histogram;
  private readonly tpot: client.Histogram;
  private readonly e2e: client.Histogram;
  private readonly queueTime: client.Histogram;

  constructor(engine: Engine, modelName: string) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'qwen3_serve_process_' });
    new client.Gauge({
      name: 'qwen3_serve_num_requests_running',
      help: 'Requests in the running batch (prefilling or decoding).',
      registers,
      async collect() {
        this.set((await engine.stats()).running);
      },
    });
    new client.Gauge({
      name: 'qwen3_serve_num_requests_waiting',
      help: 'Requests waiting for a batch slot.',
      registers,
      async collect() {
        this.set((await engine.stats()).waiting);
      },
    });
    new client.Gauge({
      name: 'qwen3_serve_kv_cache_usage_perc',
      help: 'Fraction of the KV cache budget holding cached tokens (1 = full).',
      registers,
      async collect() {
        const s = await engine.stats();
        this.set(s.kvBudgetTokens > 0 ? s.kvUsedTokens / s.kvBudgetTokens : 0);
      },
    });
    new client.Gauge({
      name: 'qwen3_serve_kv_cache_bytes',
      help: 'Bytes currently allocated for the KV cache.',
      registers,
      async collect() {
        this.set((await engine.stats()).kvBytes);
      },
    });
    new client.Gauge({
      name: 'qwen3_serve_engine_up',
      help: '1 when the engine is ready, 0 while loading, restarting or down.',
      registers,
      collect() {
        this.set(engine.state === 'ready' ? 1 : 0);
      },
    });
    this.promptTokens = new client.Counter({ name: 'qwen3_serve_prompt_tokens_total', help: 'Prompt tokens processed.', registers });
    this.generationTokens = new client.Counter({ name: 'qwen3_serve_generation_tokens_total', help: 'Tokens generated.', registers });
    this.requestSuccess = new client.Counter({
      name: 'qwen3_serve_request_success_total',
      help: 'Finished requests by finish reason.',
      labelNames: ['finished_reason'],
      registers,
    });
    const latency = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80];
    this.ttft = new client.Histogram({ name: 'qwen3_serve_time_to_first_token_seconds', help: 'Time to first token.', buckets: latency, registers });
    this.tpot = new client.Histogram({
      name: 'qwen3_serve_time_per_output_token_seconds',
      help: 'Mean time per output token after the first, per request.',
      buckets: [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5],
      registers,
    });
    this.e2e = new client.Histogram({ name: 'qwen3_serve_e2e_request_latency_seconds', help: 'End-to-end request latency.', buckets: latency, registers });
    this.queueTime = new client.Histogram({ name: 'qwen3_serve_request_queue_time_seconds', help: 'Time spent waiting for a batch slot.', buckets: latency, registers });
  }

  /** Records one finished generation (one choice). */
  observe(m: RequestMetrics, finishReason: string): void {
    this.promptTokens.inc(m.promptTokens);
    this.generationTokens.inc(m.completionTokens);
    this.requestSuccess.inc({ finished_reason: finishReason });
    this.ttft.observe(m.firstTokenMs / 1000);
    this.e2e.observe(m.totalMs / 1000);
    this.queueTime.observe(m.queueMs / 1000);
    if (m.completionTokens > 1) this.tpot.observe((m.totalMs - m.firstTokenMs) / 1000 / (m.completionTokens - 1));
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }
}
