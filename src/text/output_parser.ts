import type { ParsedToolCall, ToolCallPart, ToolCallReader } from './xml_tool_call.js';

export type { ParsedToolCall, ToolCallPart, ToolCallReader } from './xml_tool_call.js';

/**
 * Splits Qwen3's streamed output text into reasoning, content and tool calls:
 * `<think>…</think>` is reasoning, `<tool_call>…</tool_call>` blocks are tool calls (JSON,
 * or XML for Qwen3-Coder: `parseToolCall` reads a block), the rest is content. Text
 * arrives in arbitrary pieces: a tag split across pieces is held back until it is whole.
 */

export interface ParsedDelta {
  reasoning: string;
  content: string;
  /** Calls completed in this piece. */
  toolCalls: ParsedToolCall[];
  /** The same calls as they arrive: each begins with a part naming it and ends with one that is `done`. */
  toolCallParts: ToolCallPart[];
}

export interface OutputParserOptions {
  /** Thinking on: text before `</think>` (or all of it, if none comes) is reasoning. */
  thinking: boolean;
  /** Parse `<tool_call>` blocks (the request offered tools). */
  tools: boolean;
  /** Text the prompt already put in the assistant turn (e.g. a forced `<tool_call>` opening). */
  prefix?: string;
  /** A reader for the inside of each `<tool_call>` block; Qwen3's JSON by default. */
  toolCallReader?: () => ToolCallReader;
}

const THINK_OPEN = '<think>';
const THINK_CLOSE = '</think>';
const TOOL_OPEN = '<tool_call>';
const TOOL_CLOSE = '</tool_call>';

type Mode = 'reasoning' | 'content' | 'tool';

/** How much of the end of `text` could be the start of `tag`. */
function partialTagSuffix(text: string, tags: string[]): number {
  let best = 0;
  for (const tag of tags) {
    for (let k = Math.min(tag.length - 1, text.length); k > best; k--) {
      if (tag.startsWith(text.slice(text.length - k))) {
        best = k;
        break;
      }
    }
  }
  return best;
}

export function parseToolCallJson(body: string): ParsedToolCall | null {
  try {
    const obj = JSON.parse(body.trim()) as { name?: unknown; arguments?: unknown; parameters?: unknown };
    if (typeof obj?.name !== 'string') return null;
    const args = obj.arguments ?? obj.parameters ?? {};
    return { name: obj.name, arguments: typeof args === 'string' ? args : JSON.stringify(args) };
  } catch {
    return null;
  }
}

/** Qwen3's JSON calls are read whole, at their `</tool_call>`. */
export class JsonCallReader implements ToolCallReader {
  read(): ToolCallPart[] {
    return [];
  }

  close(body: string): { call: ParsedToolCall; parts: ToolCallPart[] } | null {
    const call = parseToolCallJson(body);
    return call && { call, parts: [{ name: call.name, arguments: call.arguments, done: true }] };
  }
}

export class OutputParser {
  private mode: Mode;
  private buffer = '';
  private atStartOfReasoning = true;
  private skipNewline = false;
  private atStartOfContent = true;
  private readonly toolsOn: boolean;
  private readonly newReader: () => ToolCallReader;
  private reader: ToolCallReader | null = null;
  private pending: ParsedDelta | null = null;

  constructor(o: OutputParserOptions) {
    this.mode = o.thinking ? 'reasoning' : 'content';
    this.toolsOn = o.tools;
    this.newReader = o.toolCallReader ?? (() => new JsonCallReader());
    // What the prefix begins (a forced call's start) comes out with the first piece.
    if (o.prefix) this.pending = this.push(o.prefix);
  }

  get inReasoning(): boolean {
    return this.mode === 'reasoning';
  }

  push(text: string): ParsedDelta {
    const out: ParsedDelta = this.pending ?? { reasoning: '', content: '', toolCalls: [], toolCallParts: [] };
    this.pending = null;
    this.buffer += text;
    for (;;) {
      if (this.mode === 'reasoning') {
        // A leading <think> is the opening tag, not reasoning text.
        if (this.atStartOfReasoning) {
          const trimmed = this.buffer.replace(/^\s+/, '');
          if (trimmed.length < THINK_OPEN.length && THINK_OPEN.startsWith(trimmed)) return out;
          if (trimmed.startsWith(THINK_OPEN)) this.buffer = trimmed.slice(THINK_OPEN.length);
          this.atStartOfReasoning = false;
          this.skipNewline = true;
        }
        if (this.skipNewline) {
          // The newline after <think> is layout, not reasoning.
          if (this.buffer.length === 0) return out;
          this.buffer = this.buffer.replace(/^\n/, '');
          this.skipNewline = false;
        }
        const end = this.buffer.indexOf(THINK_CLOSE);
        if (end >= 0) {
          out.reasoning += this.buffer.slice(0, end);
          this.buffer = this.buffer.slice(end + THINK_CLOSE.length);
          this.mode = 'content';
          continue;
        }
        const hold = partialTagSuffix(this.buffer, [THINK_CLOSE]);
        out.reasoning += this.buffer.slice(0, this.buffer.length - hold);
        this.buffer = this.buffer.slice(this.buffer.length - hold);
        return out;
      }
      if (this.mode === 'content') {
        if (this.atStartOfContent) {
          // The blank lines after </think> separate, they are not content.
          this.buffer = this.buffer.replace(/^\n+/, '');
          if (this.buffer.length === 0) return out;
          this.atStartOfContent = false;
        }
        const start = this.toolsOn ? this.buffer.indexOf(TOOL_OPEN) : -1;
        if (start >= 0) {
          out.content += this.buffer.slice(0, start);
          this.buffer = this.buffer.slice(start + TOOL_OPEN.length);
          this.mode = 'tool';
          this.reader = this.newReader();
          continue;
        }
        const hold = this.toolsOn ? partialTagSuffix(this.buffer, [TOOL_OPEN]) : 0;
        out.content += this.buffer.slice(0, this.buffer.length - hold);
        this.buffer = this.buffer.slice(this.buffer.length - hold);
        return out;
      }
      // mode === 'tool': the buffer holds the block so far.
      const end = this.buffer.indexOf(TOOL_CLOSE);
      if (end < 0) {
        out.toolCallParts.push(...this.reader!.read(this.buffer.slice(0, this.buffer.length - partialTagSuffix(this.buffer, [TOOL_CLOSE]))));
        return out;
      }
      const body = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + TOOL_CLOSE.length).replace(/^\s+/, '');
      this.closeCall(body, `${TOOL_OPEN}${body}${TOOL_CLOSE}`, out);
      this.mode = 'content';
    }
  }

  /** End of output: whatever is held comes out as it stands. */
  finish(): ParsedDelta {
    const out: ParsedDelta = this.pending ?? { reasoning: '', content: '', toolCalls: [], toolCallParts: [] };
    this.pending = null;
    const rest = this.buffer;
    this.buffer = '';
    if (this.mode === 'reasoning') out.reasoning = rest;
    else if (this.mode === 'content') out.content = rest;
    // An unterminated tool call: a call if it is complete (or already under way), else text.
    else this.closeCall(rest, `${TOOL_OPEN}${rest}`, out);
    return out;
  }

  /** Ends the block being read: its call, or (not a call) its text as content. */
  private closeCall(body: string, asText: string, out: ParsedDelta): void {
    const closed = this.reader!.close(body);
    this.reader = null;
    if (closed) {
      out.toolCalls.push(closed.call);
      out.toolCallParts.push(...closed.parts);
    } else {
      out.content += asText;
    }
  }
}
