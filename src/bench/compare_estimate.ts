/** How long a comparison will take, from each server's answer to one quick request. */
import { type Probe, requestsOf, type Scenario } from './compare_types.js';
import { randomPrompts } from './load_bench.js';
import { streamRequest } from './stream_request.js';

const PROBE_OUTPUT = 16;

/**
 * One request of `inputLen` token ids and 16 output tokens: prompt tokens per second and
 * time per output token at one stream, or null when the server does not answer it.
 */
export async function probeServer(
  t: { baseUrl: string; model: string; apiKey: string | null },
  inputLen: number,
  timeoutS: number,
  signal?: AbortSignal,
): Promise<Probe | null> {
  // A seed no scenario uses: the probe leaves nothing in a prefix cache that a run could use.
  const [prompt] = randomPrompts(1, inputLen, 424_242, 'completions');
  const body = {
    model: t.model,
    prompt,
    max_tokens: PROBE_OUTPUT,
    ignore_eos: true,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
  const r = await streamRequest(`${t.baseUrl}/completions`, t.apiKey, body, timeoutS, signal);
  if (!r.ok || r.ttft <= 0) return null;
  const outputs = Math.max(2, r.outputTokens);
  return { prefillTokS: (inputLen / r.ttft) * 1000, tpotMs: Math.max(0.1, (r.e2e - r.ttft) / (outputs - 1)) };
}

/**
 * Seconds a run should take, roughly: prompts prefill one after another, decode steps
 * serve the clients together and slow a little with each one, and a long prompt's
 * attention slows its prefill and decode (linear in its length, as measured in
 * docs/performance.md). NaN without a probe.
 */
export function estimateRunS(s: Scenario, p: Probe | null, numPrompts: number): number {
  if (p === null) return NaN;
  const slowdown = (context: number) => 1 + context / 8192;
  const tpotS = p.tpotMs / 1000;
  if (s.kind === 'agent') {
    const first = (s.promptTokens / p.prefillTokS) * slowdown(s.promptTokens / 2) + s.outputLen * tpotS * slowdown(s.promptTokens);
    const second = ((s.outputLen + 100) / p.prefillTokS + s.outputLen * tpotS) * slowdown(s.promptTokens);
    return first + second;
  }
  const n = requestsOf(s, numPrompts);
  const warmUp = Math.min(s.inputLen, 64) / p.prefillTokS + 2 * tpotS;
  const prefill = ((n * s.inputLen) / p.prefillTokS) * slowdown(s.inputLen / 2);
  const decode = Math.ceil(n / s.concurrency) * s.outputLen * tpotS * (1 + 0.1 * (s.concurrency - 1)) * slowdown(s.inputLen);
  return warmUp + prefill + decode;
}
