#!/usr/bin/env node
/**
 * Replays the model requests of recorded agent sessions against a running server, one
 * session at a time and each request after the one before, as the agent sent them but
 * with one output token: what a real model's prompt processing costs each turn.
 *   QWEN3_SERVE_AGENT_SESSIONS=<dir> node --test dist/test/agents_e2e.test.js   (records)
 *   npm run bench:agents -- --url http://127.0.0.1:8000 --model <served name> <dir>/*.json
 * Prints per request: API, prompt tokens, tokens read from the cache, and the time from
 * sending to the end of the one-token answer (the time to first token, and one step).
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';

interface Recorded {
  path: string;
  headers: Record<string, string>;
  body: Record<string, unknown>;
}

const { values, positionals } = parseArgs({
  options: { url: { type: 'string', default: 'http://127.0.0.1:8000' }, model: { type: 'string' } },
  allowPositionals: true,
});
if (positionals.length === 0) {
  process.stderr.write('usage: agent_replay --url <server> [--model <name>] <session.json>...\n');
  process.exit(2);
}

/** The body with one output token, the served model, and streaming on (the first token's event is timed). */
function oneToken(path: string, body: Record<string, unknown>): Record<string, unknown> {
  const b: Record<string, unknown> = { ...body, stream: true, ...(values.model ? { model: values.model } : {}) };
  if (path.startsWith('/v1/responses')) b.max_output_tokens = 1;
  else if (path.startsWith('/v1/messages')) b.max_tokens = 1;
  else {
    delete b.max_completion_tokens;
    b.max_tokens = 1;
    b.stream_options = { include_usage: true };
  }
  return b;
}

/** Prompt and cached tokens from a stream's usage, as each API reports it. */
function usageOf(text: string): { prompt: number; cached: number } {
  let out = { prompt: 0, cached: 0 };
  for (const line of text.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    // biome-ignore lint/suspicious/noExplicitAny: three APIs' usage objects, read field by field below
    const ev = JSON.parse(line.slice(6)) as Record<string, any>;
    const u = ev.response?.usage ?? ev.usage ?? ev.message?.usage;
    if (!u) continue;
    if ('input_tokens_details' in u) out = { prompt: u.input_tokens, cached: u.input_tokens_details.cached_tokens };
    else if ('cache_read_input_tokens' in u && 'input_tokens' in u)
      out = { prompt: u.input_tokens + u.cache_read_input_tokens, cached: u.cache_read_input_tokens };
    else if ('prompt_tokens' in u) out = { prompt: u.prompt_tokens, cached: u.prompt_tokens_details?.cached_tokens ?? 0 };
  }
  return out;
}

for (const file of positionals) {
  const session = JSON.parse(readFileSync(file, 'utf8')) as Recorded[];
  for (const [i, r] of session.entries()) {
    const started = performance.now();
    const res = await fetch(`${values.url}${r.path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer unused', 'x-api-key': 'unused', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify(oneToken(r.path, r.body)),
    });
    const text = await res.text();
    const seconds = (performance.now() - started) / 1000;
    const u = usageOf(text);
    const api = r.path.replace(/\?.*$/, '');
    process.stdout.write(
      `${basename(file)} #${i + 1} ${api} ${res.status}: prompt ${u.prompt}, cached ${u.cached}, first token after ${seconds.toFixed(2)} s\n`,
    );
  }
}
