import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import {
  type AgentSessionReport,
  type AgentSessionSpec,
  assertLoopbackOnly,
  type Exchange,
  probeSandbox,
  runAgentSession,
} from './support/agent_sandbox.js';
import { distinctToolCallText, type ScriptedToolCall, twoTurnScript } from './support/agent_scripts.js';
import { assertOpenAIRequest } from './support/openapi.js';
import { tempDir } from './support/runner.js';
import { writeScriptedCheckpoint } from './support/scripted_checkpoint.js';

describe('test/agents_e2e.test', () => {
  /**
   * The coding agents people point at a local Qwen3, unmodified and pinned in package.json,
   * each through a two-request tool session against a real server in a network namespace
   * with only loopback: the model (a scripted checkpoint) calls the agent's own tool, the
   * agent runs it in a scratch folder and sends the result back, the model answers, and the
   * agent prints the answer and exits 0. Every body an OpenAI client sent is validated
   * against OpenAI's request schema, and any lookup or connection beyond 127.0.0.1 fails.
   * The settings are the README's "Use it with…" section.
   */
  const BIN = new URL('../../node_modules/.bin/', import.meta.url).pathname;
  const AGENTS_SDK = new URL('../../node_modules/@openai/agents/package.json', import.meta.url).pathname;
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const ANSWER = 'The folder holds notes.txt.';
  const NOTES = 'Meeting at noon.\n';
  const THINKING = 'Let me look';
  // A turn's tokens are distinct: the call avoids the thinking block's, the newline a thinking-on prompt ends with, and the end.
  const AVOID = [`<think>${THINKING}</think>\n\n`, '\n', '<|im_end|>'].flatMap((text) => tokenizer.encode(text));
  // Sandbox support decides: CI requires it (QWEN3_SERVE_REQUIRE_SANDBOX); elsewhere a missing capability is a skip, said once.
  const unavailable = probeSandbox();
  const skip = unavailable !== null && !process.env.QWEN3_SERVE_REQUIRE_SANDBOX ? `agents need a network namespace: ${unavailable}` : false;

  let cacheDir: string;
  before(() => {
    cacheDir = tempDir('qwen3-serve-agents-cache-');
  });

  /** A scratch folder holding notes.txt, under a path the tool call can spell with distinct tokens. */
  function scratch(call: (folder: string) => ScriptedToolCall): { folder: string; script: string } {
    for (let i = 0; i < 20; i++) {
      const folder = mkdtempSync(join(tmpdir(), 'agent-'));
      writeFileSync(join(folder, 'notes.txt'), NOTES);
      try {
        return { folder, script: distinctToolCallText(tokenizer, call(folder), AVOID) };
      } catch {
        // This random name repeats a token of the call: another one will not.
      }
    }
    throw new Error('no scratch folder whose tool call has distinct tokens');
  }

  /** A scripted checkpoint: the tool call while no tool result is in the context, the answer after. */
  function checkpoint(name: string, call: string): string {
    const dir = join(tempDir(), name);
    const s = twoTurnScript(tokenizer, { first: call, second: ANSWER, thinking: THINKING });
    writeScriptedCheckpoint(dir, s.transitions, { branch: s.branch });
    return dir;
  }

  async function session(
    name: string,
    call: (folder: string) => ScriptedToolCall,
    spec: (folder: string, home: string) => Omit<AgentSessionSpec, 'model'>,
  ): Promise<AgentSessionReport> {
    const { folder, script } = scratch(call);
    const home = tempDir('agent-home-');
    const report = await runAgentSession({
      timeoutMs: 240_000,
      cwd: folder,
      home,
      ...spec(folder, home),
      model: checkpoint(name, script),
      serverFlags: [
        '--served-model-name',
        'qwen3',
        '--threads',
        '1',
        '--cache-dir',
        cacheDir,
        '--kv-cache-memory',
        '512MiB',
        '--prefix-cache-memory',
        '256MiB',
        '--no-ui',
      ],
    });
    const context = `${name}: exit ${report.exitCode}${report.timedOut ? ' (timed out)' : ''}\nstdout: ${report.stdout.slice(-2000)}\nstderr: ${report.stderr.slice(-3000)}\nserver: ${report.serverLog.slice(-2000)}`;
    assert.equal(report.exitCode, 0, context);
    assert.ok(report.stdout.includes(ANSWER), context);
    assertLoopbackOnly(report);
    // The model requests, for scripts/agent_replay.ts (npm run bench:agents) to send to a real model.
    const keep = process.env.QWEN3_SERVE_AGENT_SESSIONS;
    if (keep) {
      const requests = report.exchanges.filter(
        (e) =>
          e.method === 'POST' &&
          /^\/v1\/(responses|messages|chat\/completions)/.test(e.path) &&
          (e.requestBody as { tools?: unknown[] })?.tools?.length,
      );
      mkdirSync(keep, { recursive: true });
      writeFileSync(
        join(keep, `${name}.json`),
        JSON.stringify(requests.map((e) => ({ path: e.path, headers: e.requestHeaders, body: e.requestBody }))),
      );
    }
    return report;
  }

  /** The model requests of a session (not HEAD probes or side requests without tools). */
  const modelCalls = (r: AgentSessionReport, path: string) =>
    r.exchanges.filter((e) => e.method === 'POST' && e.path.startsWith(path) && (e.requestBody as { tools?: unknown[] })?.tools?.length);

  /** Server-sent events' JSON payloads. */
  function events(e: Exchange): Array<Record<string, unknown>> {
    return e.responseBody
      .split('\n')
      .filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]')
      .map((l) => JSON.parse(l.slice(6)) as Record<string, unknown>);
  }

  /** Prompt and cached tokens of one exchange, from its usage as each API reports it. */
  function usage(e: Exchange): { prompt: number; cached: number } {
    if (!e.responseBody.includes('data: ')) {
      const b = JSON.parse(e.responseBody) as { usage: Record<string, number & Record<string, number>> };
      const u = b.usage;
      if ('input_tokens_details' in u) return { prompt: u.input_tokens, cached: u.input_tokens_details.cached_tokens };
      return { prompt: u.prompt_tokens, cached: u.prompt_tokens_details?.cached_tokens ?? 0 };
    }
    for (const ev of events(e).reverse()) {
      const r = (ev.response ?? ev) as { usage?: Record<string, number & Record<string, number>> };
      const u = r.usage;
      if (ev.type === 'message_start') {
        const m = (ev.message as { usage: Record<string, number> }).usage;
        return { prompt: m.input_tokens + m.cache_read_input_tokens, cached: m.cache_read_input_tokens };
      }
      if (u && 'input_tokens_details' in u) return { prompt: u.input_tokens, cached: u.input_tokens_details.cached_tokens };
      if (u && 'prompt_tokens' in u) return { prompt: u.prompt_tokens, cached: u.prompt_tokens_details?.cached_tokens ?? 0 };
    }
    throw new Error(`no usage in ${e.path}`);
  }

  /** Two model requests or more, each answered 200; the second and later read ≥ 90% of their prompt from the cache. */
  function checkTurns(name: string, calls: Exchange[], toolOutput: RegExp): void {
    assert.ok(calls.length >= 2, `${name}: ${calls.length} model requests`);
    for (const c of calls) assert.equal(c.status, 200, `${name}: ${c.path} answered ${c.status}: ${c.responseBody.slice(0, 500)}`);
    assert.match(JSON.stringify(calls[1].requestBody), toolOutput, `${name}: the second request carries the tool's output`);
    for (const c of calls.slice(1)) {
      const u = usage(c);
      assert.ok(u.cached >= 0.9 * u.prompt, `${name}: ${u.cached} of ${u.prompt} prompt tokens came from the cache`);
    }
    const [first, second] = calls.map(usage);
    console.log(
      `# ${name}: prompt ${first.prompt} then ${second.prompt} tokens, ${second.cached} cached; first bytes after ${calls[0].firstByteMs} and ${calls[1].firstByteMs} ms`,
    );
  }

  test('Codex CLI (Responses API, streamed): exec_command runs ls, the answer comes back', { skip, timeout: 600_000 }, async () => {
    const config = [
      'model = "qwen3"',
      'model_provider = "qwen3-serve"',
      '[model_providers.qwen3-serve]',
      'name = "qwen3-serve"',
      'base_url = "{BASE}/v1"',
      'env_key = "QWEN3_SERVE_API_KEY"',
      'wire_api = "responses"',
      // Offline: no usage analytics and no plugin catalogue (the two lookups Codex makes by default).
      '[analytics]',
      'enabled = false',
      '[features]',
      'plugins = false',
    ].join('\n');
    const r = await session(
      'codex',
      () => ({ name: 'exec_command', arguments: { cmd: 'ls' } }),
      (_, home) => ({
        command: [`${BIN}codex`, 'exec', '--skip-git-repo-check', 'List the files in this folder.'],
        env: { CODEX_HOME: join(home, '.codex'), QWEN3_SERVE_API_KEY: 'unused' },
        files: { '~/.codex/config.toml': config },
      }),
    );
    const calls = modelCalls(r, '/v1/responses');
    for (const c of calls) assertOpenAIRequest('CreateResponse', c.requestBody);
    const body = calls[0].requestBody as { tools: Array<{ type: string }>; include?: string[] };
    // Its defaults: a namespace of functions and the hosted web search, left out and named.
    assert.ok(body.tools.some((t) => t.type === 'namespace'));
    assert.ok(body.tools.some((t) => t.type === 'web_search'));
    assert.equal(calls[0].responseHeaders['x-qwen3-serve-ignored-tools'], 'web_search');
    // Stateless: the sealed reasoning went out and came back.
    assert.deepEqual(body.include, ['reasoning.encrypted_content']);
    assert.ok(JSON.stringify(calls[1].requestBody).includes('encrypted_content'));
    checkTurns('codex', calls, /notes\.txt/);
  });

  test('Claude Code (Messages API, streamed): Bash runs ls, the answer comes back', { skip, timeout: 600_000 }, async () => {
    const r = await session(
      'claude',
      () => ({ name: 'Bash', arguments: { command: 'ls' } }),
      () => ({
        command: [`${BIN}claude`, '-p', 'List the files in this folder.', '--model', 'qwen3'],
        env: { ANTHROPIC_BASE_URL: '{BASE}', ANTHROPIC_API_KEY: 'unused', CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1' },
      }),
    );
    const calls = modelCalls(r, '/v1/messages');
    const body = calls[0].requestBody as { messages: Array<{ role: string }>; thinking?: { type: string }; max_tokens: number };
    // What failed before: system turns among the messages, adaptive thinking, and max_tokens past the context.
    assert.ok(body.messages.some((m) => m.role === 'system'));
    assert.equal(body.thinking?.type, 'adaptive');
    assert.ok(body.max_tokens >= 32_000);
    checkTurns('claude', calls, /notes\.txt/);
  });

  test('Qwen Code (chat completions, streamed): read_file reads notes.txt, the answer comes back', { skip, timeout: 600_000 }, async () => {
    const r = await session(
      'qwen',
      (folder) => ({ name: 'read_file', arguments: { file_path: join(folder, 'notes.txt') } }),
      () => ({
        command: [`${BIN}qwen`, '-p', 'What does notes.txt say?'],
        env: { OPENAI_BASE_URL: '{BASE}/v1', OPENAI_API_KEY: 'unused', OPENAI_MODEL: 'qwen3', QWEN_USAGE_STATISTICS_ENABLED: '0' },
      }),
    );
    const calls = modelCalls(r, '/v1/chat/completions');
    for (const c of calls) assertOpenAIRequest('CreateChatCompletionRequest', c.requestBody);
    checkTurns('qwen', calls, /Meeting at noon/);
  });

  test('opencode (chat completions through @ai-sdk/openai-compatible): bash runs ls, the answer comes back', { skip, timeout: 600_000 }, async () => {
    const config = {
      $schema: 'https://opencode.ai/config.json',
      model: 'qwen3-serve/qwen3',
      provider: {
        'qwen3-serve': {
          npm: '@ai-sdk/openai-compatible',
          name: 'qwen3-serve',
          options: { baseURL: '{BASE}/v1', apiKey: 'unused' },
          models: { qwen3: { name: 'Qwen3' } },
        },
      },
    };
    const r = await session(
      'opencode',
      () => ({ name: 'bash', arguments: { command: 'ls' } }),
      (_, home) => ({
        command: [`${BIN}opencode`, 'run', 'List the files in this folder.'],
        env: {
          OPENCODE_CONFIG: join(home, 'opencode.json'),
          OPENCODE_DISABLE_MODELS_FETCH: '1',
          OPENCODE_DISABLE_AUTOUPDATE: '1',
          XDG_CONFIG_HOME: join(home, '.config'),
          XDG_DATA_HOME: join(home, '.local/share'),
          XDG_CACHE_HOME: join(home, '.cache'),
          XDG_STATE_HOME: join(home, '.local/state'),
        },
        files: {
          '~/opencode.json': JSON.stringify(config),
          // opencode installs its plugin package from npm in the background unless its config folder already lists it.
          '~/.config/opencode/package.json': '{"dependencies":{"@opencode-ai/plugin":"*"}}',
          '~/.config/opencode/package-lock.json': '{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"*"}}}}',
          '~/.config/opencode/node_modules/.keep': '',
        },
      }),
    );
    const calls = modelCalls(r, '/v1/chat/completions');
    for (const c of calls) assertOpenAIRequest('CreateChatCompletionRequest', c.requestBody);
    checkTurns('opencode', calls, /notes\.txt/);
  });

  for (const api of ['responses', 'chat'] as const) {
    test(`the OpenAI Agents SDK (${api === 'responses' ? 'Responses' : 'chat completions'} model, streamed): a function tool round trip`, {
      skip,
      timeout: 600_000,
    }, async () => {
      // The SDK's own openai client (a dependency of @openai/agents), as an application would have it.
      const script = `
      const { createRequire } = require('node:module');
      const { readdirSync } = require('node:fs');
      const sdk = createRequire(${JSON.stringify(AGENTS_SDK)});
      const OpenAI = sdk('openai').default ?? sdk('openai');
      const { z } = sdk('zod');
      const { Agent, run, tool, OpenAIResponsesModel, OpenAIChatCompletionsModel } = sdk('@openai/agents');
      (async () => {
        const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: 'unused' });
        const model = ${api === 'chat' ? 'new OpenAIChatCompletionsModel(client, "qwen3")' : 'new OpenAIResponsesModel(client, "qwen3")'};
        const listFiles = tool({ name: 'list_files', description: 'List the files in a folder.', parameters: z.object({ folder: z.string() }), execute: async ({ folder }) => readdirSync(folder).join('\\n') });
        const agent = new Agent({ name: 'Folder assistant', instructions: ${JSON.stringify(`You help with files.
${'Answer briefly and use the tools. '.repeat(60)}`)}, model, tools: [listFiles] });
        const result = await run(agent, 'List the files in this folder.', { stream: true });
        for await (const _ of result) {}
        await result.completed;
        console.log(result.finalOutput);
      })().catch((err) => { console.error(err); process.exit(1); });
    `;
      const r = await session(
        `agents-${api}`,
        () => ({ name: 'list_files', arguments: { folder: '.' } }),
        () => ({
          command: [process.execPath, '-e', script],
          env: { OPENAI_BASE_URL: '{BASE}/v1', OPENAI_AGENTS_DISABLE_TRACING: '1' },
        }),
      );
      const calls = modelCalls(r, api === 'chat' ? '/v1/chat/completions' : '/v1/responses');
      for (const c of calls) assertOpenAIRequest(api === 'chat' ? 'CreateChatCompletionRequest' : 'CreateResponse', c.requestBody);
      checkTurns(`agents-${api}`, calls, /notes\.txt/);
    });
  }
});
