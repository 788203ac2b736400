import type { EngineEvent, TokenLogprob } from '../engine/types.js';
import { OutputParser } from '../text/output_parser.js';
import { XmlCallReader } from '../text/xml_tool_call.js';
import type { PreparedChat } from './chat_prompt.js';
import { newId } from './request.js';

export interface ChatToolCall {
  /** Position among this choice's calls (the `index` of streamed tool-call deltas). */
  index: number;
  id: string;
  name: string;
  arguments: string;
}

/**
 * A piece of a tool call as it streams: the first names the call (`name` set), the
 * arguments' JSON text follows in order, and the last is `done`; `call` is the call as it
 * stands (whole once done).
 */
export interface ChatToolCallPart {
  call: ChatToolCall;
  name?: string;
  arguments: string;
  done: boolean;
}

/** What one engine event adds to a choice's answer. */
export interface ChatDelta {
  reasoning: string;
  content: string;
  /** Calls completed by this event. */
  toolCalls: ChatToolCall[];
  /** The same calls as they arrive, for streams. */
  toolCallParts: ChatToolCallPart[];
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
  /** The call being streamed. */
  private open: ChatToolCall | null = null;
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
      ...(syntax === 'xml' ? { toolCallReader: () => new XmlCallReader(tools) } : {}),
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
      parsed.toolCallParts.push(...rest.toolCallParts);
    }
    this.reasoning += parsed.reasoning;
    this.content += parsed.content;
    const toolCalls: ChatToolCall[] = [];
    const toolCallParts: ChatToolCallPart[] = [];
    for (const part of parsed.toolCallParts) {
      if (part.name !== undefined)
        this.open = { index: this.toolCalls.length + toolCalls.length, id: newId('call_', 24), name: part.name, arguments: '' };
      const call = this.open!;
      call.arguments += part.arguments;
      toolCallParts.push({ call, ...(part.name !== undefined ? { name: part.name } : {}), arguments: part.arguments, done: part.done });
      if (part.done) {
        toolCalls.push(call);
        this.open = null;
      }
    }
    this.toolCalls.push(...toolCalls);
    return { reasoning: parsed.reasoning, content: parsed.content, toolCalls, toolCallParts, logprobs: ev.logprobs };
  }

  /** OpenAI's finish_reason: tool_calls when the answer called tools. */
  get finishReason(): string {
    const r = this.finish?.finishReason ?? 'stop';
    if (r === 'stop' && this.toolCalls.length > 0) return 'tool_calls';
    return r === 'abort' || r === 'error' ? 'stop' : r;
  }
}
