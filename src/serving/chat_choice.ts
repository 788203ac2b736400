import type { EngineEvent, TokenLogprob } from '../engine/types.js';
import { OutputParser } from '../text/output_parser.js';
import { parseXmlToolCall } from '../text/xml_tool_call.js';
import type { PreparedChat } from './chat_prompt.js';
import { newId } from './request.js';

export interface ChatToolCall {
  /** Position among this choice's calls (the `index` of streamed tool-call deltas). */
  index: number;
  id: string;
  name: string;
  arguments: string;
}

/** What one engine event adds to a choice's answer. */
export interface ChatDelta {
  reasoning: string;
  content: string;
  toolCalls: ChatToolCall[];
  logprobs: TokenLogprob[] | null;
}

/**
 * One choice of a chat completion as its engine events arrive: the thinking, the answer
 * and tool calls parsed out of the text, token counts, log-probabilities and the finish.
 * Streaming sends each `push`'s delta; a plain response reads the totals at the end.
 */
export class ChatChoice {
  private readonly parser: OutputParser;
  reasoning = '';
  content = '';
  readonly toolCalls: ChatToolCall[] = [];
  readonly logprobs: TokenLogprob[] = [];
  completionTokens = 0;
  reasoningTokens = 0;
  private sawThinkEnd = false;
  finish: EngineEvent | null = null;
  /** vLLM's prompt_logprobs, from the first event when the prompt was scored. */
  promptLogprobs: EngineEvent['promptLogprobs'] | null = null;

  constructor(
    readonly index: number,
    private readonly prepared: PreparedChat,
    private readonly thinkEndId: number | undefined,
  ) {
    const { syntax, tools } = prepared.toolCalls;
    this.parser = new OutputParser({
      thinking: prepared.thinking,
      tools: prepared.toolsOn,
      prefix: prepared.parserPrefix,
      ...(syntax === 'xml' ? { parseToolCall: (body: string) => parseXmlToolCall(body, tools) } : {}),
    });
  }

  push(ev: EngineEvent): ChatDelta {
    if (ev.promptLogprobs) this.promptLogprobs ??= ev.promptLogprobs;
    for (const t of ev.tokenIds) {
      this.completionTokens++;
      if (this.prepared.thinking && !this.sawThinkEnd) this.reasoningTokens++;
      if (t === this.thinkEndId) this.sawThinkEnd = true;
    }
    if (ev.logprobs) this.logprobs.push(...ev.logprobs);
    const parsed = this.parser.push(ev.text);
    if (ev.finishReason) {
      this.finish = ev;
      const rest = this.parser.finish();
      parsed.reasoning += rest.reasoning;
      parsed.content += rest.content;
      parsed.toolCalls.push(...rest.toolCalls);
    }
    this.reasoning += parsed.reasoning;
    this.content += parsed.content;
    const toolCalls = parsed.toolCalls.map((call) => ({
      index: this.toolCalls.length,
      id: newId('call_', 24),
      name: call.name,
      arguments: call.arguments,
    }));
    for (const call of toolCalls) {
      call.index = this.toolCalls.length;
      this.toolCalls.push(call);
    }
    return { reasoning: parsed.reasoning, content: parsed.content, toolCalls, logprobs: ev.logprobs };
  }

  /** OpenAI's finish_reason: tool_calls when the answer called tools. */
  get finishReason(): string {
    const r = this.finish?.finishReason ?? 'stop';
    if (r === 'stop' && this.toolCalls.length > 0) return 'tool_calls';
    return r === 'abort' || r === 'error' ? 'stop' : r;
  }
}
