/**
 * An agent's session in two turns, the way coding agents send it: a long first request
 * (a system prompt and many tool definitions, through /v1/chat/completions with `tools`),
 * then the history resent with the model's answer and a new user message. What counts is
 * the time to the first token of each turn: the first prefills everything, the second
 * should find the history in the server's prompt cache.
 */
import { mulberry32 } from '../util/random.js';
import { type RequestResult, streamRequest } from './stream_request.js';

const WORDS =
  'file path line range pattern search replace edit read write command shell output error test build module function class symbol project directory branch commit diff review patch result value option config token buffer stream request response server client cache index query schema field record table column session process thread memory limit timeout retry status message'.split(
    ' ',
  );

export interface AgentSize {
  /** Words of the system prompt. */
  systemWords: number;
  tools: number;
}

export interface AgentTarget {
  baseUrl: string;
  model: string;
  apiKey: string | null;
}

export interface AgentTurn {
  ok: boolean;
  failure: string | null;
  error: string | null;
  model: string | null;
  ttftMs: number;
  tpotMs: number;
  e2eMs: number;
  promptTokens: number;
  cachedTokens: number;
  outputTokens: number;
}

function words(rand: () => number, n: number): string {
  return Array.from({ length: n }, () => WORDS[Math.floor(rand() * WORDS.length)]).join(' ');
}

/** A system prompt, tools and two user messages; the same seed and size give the same conversation. */
export function agentConversation(size: AgentSize, seed: number) {
  const rand = mulberry32(seed);
  const system = `You are a coding agent working in a repository. ${words(rand, size.systemWords)}`;
  const tools = Array.from({ length: size.tools }, (_, i) => ({
    type: 'function' as const,
    function: {
      name: `${WORDS[i % WORDS.length]}_${WORDS[Math.floor(rand() * WORDS.length)]}_${i}`,
      description: words(rand, 60),
      parameters: {
        type: 'object',
        properties: {
          path: { type: 'string', description: words(rand, 12) },
          pattern: { type: 'string', description: words(rand, 12) },
          limit: { type: 'integer', description: words(rand, 8) },
        },
        required: ['path'],
      },
    },
  }));
  return { system, tools, user: words(rand, 40), followUp: words(rand, 30) };
}

function turnOf(r: RequestResult): AgentTurn {
  return {
    ok: r.ok,
    failure: r.failure,
    error: r.error,
    model: r.model,
    ttftMs: r.ttft,
    tpotMs: r.outputTokens > 1 ? (r.e2e - r.ttft) / (r.outputTokens - 1) : 0,
    e2eMs: r.e2e,
    promptTokens: r.promptTokens,
    cachedTokens: r.cachedTokens,
    outputTokens: r.outputTokens,
  };
}

function send(
  t: AgentTarget,
  conv: ReturnType<typeof agentConversation>,
  messages: object[],
  outputLen: number,
  timeoutS: number,
  signal?: AbortSignal,
) {
  return streamRequest(
    `${t.baseUrl}/chat/completions`,
    t.apiKey,
    {
      model: t.model,
      messages: [{ role: 'system', content: conv.system }, ...messages],
      tools: conv.tools,
      max_tokens: outputLen,
      ignore_eos: true,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      chat_template_kwargs: { enable_thinking: false },
    },
    timeoutS,
    signal,
  );
}

/**
 * Runs the two turns on one server. The second resends the first answer as the server
 * gave it (its text and tool calls, each call answered by a tool message) and a new user message.
 */
export async function runAgentTurns(
  t: AgentTarget,
  size: AgentSize,
  seed: number,
  outputLen: number,
  timeoutS: number,
  signal?: AbortSignal,
): Promise<AgentTurn[]> {
  const conv = agentConversation(size, seed);
  const first = await send(t, conv, [{ role: 'user', content: conv.user }], outputLen, timeoutS, signal);
  if (!first.ok) return [turnOf(first)];
  const calls = first.toolCalls.map((c, i) => ({ ...c, id: c.id || `call_${i}` }));
  const history = [
    { role: 'user', content: conv.user },
    { role: 'assistant', content: first.content, ...(calls.length > 0 ? { tool_calls: calls } : {}) },
    ...calls.map((c) => ({ role: 'tool', tool_call_id: c.id, content: conv.followUp })),
    { role: 'user', content: conv.followUp },
  ];
  const second = await send(t, conv, history, outputLen, timeoutS, signal);
  return [turnOf(first), turnOf(second)];
}

/**
 * How many tools make a first prompt of about `tokens` tokens on this server: three short
 * requests (one output token each) give the template's overhead, a tool's tokens and a
 * system prompt word's; the system prompt takes a fifth of the words.
 */
export async function sizeAgentPrompt(t: AgentTarget, tokens: number, timeoutS: number, signal?: AbortSignal): Promise<AgentSize> {
  const probe = async (size: AgentSize) => {
    // A seed of its own: the probes leave nothing in a prefix cache that the measured turns could use.
    const conv = agentConversation(size, 977);
    const r = await send(t, conv, [{ role: 'user', content: conv.user }], 1, timeoutS, signal);
    if (!r.ok || r.promptTokens <= 0) throw new Error(`sizing the agent prompt: ${r.error ?? 'no usage in the answer'}`);
    return r.promptTokens;
  };
  const a = await probe({ systemWords: 20, tools: 1 });
  const b = await probe({ systemWords: 20, tools: 3 });
  const c = await probe({ systemWords: 120, tools: 1 });
  const perTool = Math.max(1, (b - a) / 2);
  const perWord = Math.max(0.1, (c - a) / 100);
  const base = a - perTool - 20 * perWord;
  const systemWords = Math.max(20, Math.round((tokens * 0.2) / perWord));
  const tools = Math.max(1, Math.round((tokens - base - systemWords * perWord) / perTool));
  return { systemWords, tools };
}
