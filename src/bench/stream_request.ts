/** One streamed request to an OpenAI-compatible server, timed the way vLLM's `bench serve` times it. */

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface RequestResult {
  ok: boolean;
  error: string | null;
  /** How it failed, for counting: `HTTP <status>`, `network` (connection refused or cut), `stream cut` (ended without [DONE]), `timeout`, `aborted`. */
  failure: string | null;
  /** When it was sent (epoch ms), to line requests up with events such as a replica's restart. */
  sentAt: number;
  /** The `model` field of the server's answer: which model it says it ran. */
  model: string | null;
  promptTokens: number;
  /** Prompt tokens the server served from its prefix cache (usage.prompt_tokens_details.cached_tokens), when it says. */
  cachedTokens: number;
  /** The answer's text (content only), for the next turn of a conversation. */
  content: string;
  /** Tool calls the answer made (chat), for the next turn of a conversation. */
  toolCalls: ToolCall[];
  outputTokens: number;
  ttft: number;
  e2e: number;
  itls: number[];
}

interface Chunk {
  model?: string;
  choices?: Array<{
    text?: string;
    delta?: {
      content?: string | null;
      reasoning_content?: string | null;
      reasoning?: string | null;
      tool_calls?: Array<{ index?: number; id?: string; function?: { name?: string; arguments?: string } }>;
    };
  }>;
  usage?: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } | null } | null;
  error?: { message: string };
}

/**
 * POSTs `body` (with `stream: true`) to `url` and reads the event stream: the first chunk
 * carrying output (text, reasoning or a tool call) is the first token; usage, when the
 * server sends it, gives the token counts, else each chunk counts as one token.
 */
export async function streamRequest(
  url: string,
  apiKey: string | null,
  body: object,
  timeoutS: number,
  signal?: AbortSignal,
): Promise<RequestResult> {
  const started = performance.now();
  const result: RequestResult = {
    ok: false,
    error: null,
    failure: null,
    sentAt: Date.now(),
    model: null,
    promptTokens: 0,
    cachedTokens: 0,
    content: '',
    toolCalls: [],
    outputTokens: 0,
    ttft: 0,
    e2e: 0,
    itls: [],
  };
  let done = false;
  const timeout = AbortSignal.timeout(timeoutS * 1000);
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
      body: JSON.stringify(body),
      signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
    });
    if (!res.ok || !res.body) {
      result.failure = `HTTP ${res.status}`;
      throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
    }
    const decoder = new TextDecoder();
    let buffer = '';
    let last = 0;
    let chunks = 0;
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(part, { stream: true });
      let sep: number;
      while ((sep = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, sep);
        buffer = buffer.slice(sep + 2);
        const data = event
          .split('\n')
          .find((l) => l.startsWith('data: '))
          ?.slice(6);
        if (data === '[DONE]') done = true;
        if (!data || data === '[DONE]') continue;
        const json = JSON.parse(data) as Chunk;
        if (json.error) {
          result.failure = 'error event';
          throw new Error(json.error.message);
        }
        result.model ??= json.model ?? null;
        if (json.usage) {
          result.promptTokens = json.usage.prompt_tokens;
          result.outputTokens = json.usage.completion_tokens;
          result.cachedTokens = json.usage.prompt_tokens_details?.cached_tokens ?? 0;
        }
        const c = json.choices?.[0];
        result.content += c?.text ?? c?.delta?.content ?? '';
        for (const t of c?.delta?.tool_calls ?? []) {
          const call = (result.toolCalls[t.index ?? 0] ??= { id: '', type: 'function', function: { name: '', arguments: '' } });
          call.id ||= t.id ?? '';
          call.function.name += t.function?.name ?? '';
          call.function.arguments += t.function?.arguments ?? '';
        }
        const output = c?.text || c?.delta?.content || c?.delta?.reasoning_content || c?.delta?.reasoning || c?.delta?.tool_calls?.length;
        if (!output) continue;
        const now = performance.now();
        if (chunks === 0) result.ttft = now - started;
        else result.itls.push(now - last);
        last = now;
        chunks++;
      }
    }
    result.e2e = performance.now() - started;
    if (!done) {
      result.failure = 'stream cut';
      throw new Error('the stream ended without [DONE]');
    }
    if (result.outputTokens === 0) result.outputTokens = chunks;
    result.ok = true;
  } catch (err) {
    const e = err as Error;
    result.error = e.message;
    result.failure ??= signal?.aborted ? 'aborted' : timeout.aborted || e.name === 'TimeoutError' ? 'timeout' : 'network';
    result.e2e = performance.now() - started;
  }
  return result;
}
