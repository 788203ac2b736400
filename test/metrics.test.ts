import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fixtureExport } from './support/engine.js';
import { startTestServer } from './support/server.js';

/** The TYPE line of each metric family in a Prometheus text exposition. */
const types = (text: string) => new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));

test("/metrics: our names, no stutter; with --metrics-compat vllm the same metrics under vLLM's names, with the types gateways read", async () => {
  const s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--metrics-compat', 'vllm']);
  try {
    await s.client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 3 });
    const text = await (await fetch(`${s.url}/metrics`)).text();
    const t = types(text);
    assert.doesNotMatch(text, /process_process/);
    assert.equal(t.get('qwen3_serve_process_cpu_seconds_total'), 'counter');
    for (const prefix of ['qwen3_serve_', 'vllm:']) {
      assert.equal(t.get(`${prefix}num_requests_waiting`), 'gauge', prefix);
      assert.equal(t.get(`${prefix}num_requests_running`), 'gauge', prefix);
      assert.equal(t.get(`${prefix}kv_cache_usage_perc`), 'gauge', prefix);
      assert.equal(t.get(`${prefix}prompt_tokens_total`), 'counter', prefix);
      assert.equal(t.get(`${prefix}generation_tokens_total`), 'counter', prefix);
      assert.equal(t.get(`${prefix}time_to_first_token_seconds`), 'histogram', prefix);
      assert.equal(t.get(`${prefix}e2e_request_latency_seconds`), 'histogram', prefix);
      // Ours say `model`; vLLM's say `model_name`, as its dashboards read.
      const label = prefix === 'vllm:' ? 'model_name' : 'model';
      assert.match(text, new RegExp(`^${prefix}generation_tokens_total\\{${label}="tiny"\\} 3$`, 'm'));
    }
    assert.equal(t.get('vllm:gpu_cache_usage_perc'), 'gauge');
    const usage = Number(/^vllm:kv_cache_usage_perc\{[^}]*\} (\S+)$/m.exec(text)?.[1]);
    assert.ok(usage >= 0 && usage <= 1);
  } finally {
    await s.close();
  }
});
