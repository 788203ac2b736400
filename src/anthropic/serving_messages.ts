import { InvalidRequestError } from '../errors.js';
import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ChatChoice, ChatToolCall } from '../serving/chat_choice.js';
import { prepareChat } from '../serving/chat_prompt.js';
import { type ChatRequest, chatRequestSchema } from '../serving/chat_request.js';
import { startChat } from '../serving/chat_session.js';
import type { ServingContext } from '../serving/context.js';
import { checkTask, inProtocolTerms, newId, parseBody } from '../serving/request.js';
import type { Served } from '../serving/served.js';
import {
  type AnthropicMessage,
  type ContentBlock,
  type CountTokensRequest,
  type CustomTool,
  countTokensRequestSchema,
  type MessagesRequest,
  messagesRequestSchema,
} from './schemas.js';

/**
 * Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as a
 * translation: the request becomes a chat request, run by the same session as Chat
 * Completions, and its choice becomes content blocks (thinking, text, tool_use) or
 * Anthropic's stream events. The model name is not checked: Anthropic clients (Claude
 * Code among them) name their own models, and this server has one.
 */

const textOf = (content: string | Array<{ type: string; text?: string }> | undefined): string =>
  content === undefined ? '' : typeof content === 'string' ? content : content.map((b) => (b.type === 'text' ? (b.text ?? '') : '')).join('');

/** The reasoning a thinking block carries: what its signature seals (this server signed it), else its text. */
function thinkingText(ctx: ServingContext, blocks: ContentBlock[]): string | null {
  let out: string | null = null;
  for (const b of blocks) {
    if (b.type === 'thinking') {
      const opened = b.signature ? ctx.seal.open(ctx.options.modelName, b.signature) : null;
      out = (out ?? '') + (opened ?? b.thinking);
    } else if (b.type === 'redacted_thinking') {
      const opened = ctx.seal.open(ctx.options.modelName, b.data);
      if (opened !== null) out = (out ?? '') + opened;
    }
  }
  return out === '' ? null : out;
}

/**
 * Anthropic messages as OpenAI chat messages: tool results become tool turns, system
 * turns stay where they stand, and thinking goes back with its assistant turn (Qwen3's
 * template shows it again only within a tool loop).
 */
function toChatMessages(ctx: ServingContext, system: CountTokensRequest['system'], messages: AnthropicMessage[]): unknown[] {
  const out: unknown[] = [];
  if (system !== undefined && textOf(system) !== '') out.push({ role: 'system', content: textOf(system) });
  for (const m of messages) {
    if (m.role === 'system' || typeof m.content === 'string') {
      out.push({ role: m.role, content: textOf(m.content) });
      continue;
    }
    if (m.role === 'user') {
      for (const b of m.content) {
        if (b.type === 'tool_result') {
          const text = typeof b.content === 'string' ? b.content : textOf(b.content);
          out.push({ role: 'tool', tool_call_id: b.tool_use_id, content: b.is_error ? `Error: ${text}` : text });
        } else if (b.type === 'tool_use' || b.type === 'thinking' || b.type === 'redacted_thinking') {
          throw new InvalidRequestError(`messages: a user turn cannot hold a ${b.type} block.`, { param: 'messages' });
        }
      }
      const text = m.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
      if (text !== '' || m.content.every((b) => b.type === 'text')) out.push({ role: 'user', content: text });
      continue;
    }
    const calls = m.content.flatMap((b) =>
      b.type === 'tool_use' ? [{ id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(b.input) } }] : [],
    );
    if (m.content.some((b) => b.type === 'tool_result'))
      throw new InvalidRequestError('messages: an assistant turn cannot hold a tool_result block.', { param: 'messages' });
    const reasoning = thinkingText(ctx, m.content);
    out.push({
      role: 'assistant',
      content: m.content.map((b) => (b.type === 'text' ? b.text : '')).join(''),
      ...(reasoning !== null ? { reasoning_content: reasoning } : {}),
      ...(calls.length > 0 ? { tool_calls: calls } : {}),
    });
  }
  return out;
}

/** Thinking as the chat request asks it: Anthropic's models think only when asked; a budget of 0 is thinking off. */
function thinkingFields(req: CountTokensRequest): Record<string, unknown> {
  const t = req.thinking;
  if (t?.type === 'enabled') return { chat_template_kwargs: { enable_thinking: t.budget_tokens > 0 }, thinking_token_budget: t.budget_tokens };
  if (t?.type !== 'adaptive') return { chat_template_kwargs: { enable_thinking: false } };
  // Effort maps through the same table as OpenAI's reasoning_effort; Anthropic's default is high, and its top levels bound nothing.
  const effort = req.output_config?.effort ?? 'high';
  return { chat_template_kwargs: { enable_thinking: true }, ...(effort === 'max' || effort === 'xhigh' ? {} : { reasoning_effort: effort }) };
}

/** The tools Qwen3 can call (custom ones); typed server tools and built-ins are left out and named. */
function splitTools(tools: CountTokensRequest['tools']): { custom: CustomTool[]; ignored: string[] } {
  const custom: CustomTool[] = [];
  const ignored: string[] = [];
  for (const t of tools ?? []) {
    if ('input_schema' in t && (t.type === undefined || t.type === 'custom')) custom.push(t as CustomTool);
    else ignored.push(String(t.type));
  }
  return { custom, ignored };
}

/** The chat request a Messages request stands for (validated by the chat schema, so both APIs share their rules). */
function toChatRequest(ctx: ServingContext, req: CountTokensRequest & Partial<Omit<MessagesRequest, keyof CountTokensRequest>>): ChatRequest {
  const choice = req.tool_choice;
  const { custom } = splitTools(req.tools);
  if (choice?.type === 'tool' && !custom.some((t) => t.name === choice.name) && (req.tools ?? []).some((t) => t.name === choice.name)) {
    throw new InvalidRequestError(`tool_choice names '${choice.name}', a server tool this server cannot run.`, { param: 'tool_choice' });
  }
  const format = req.output_config?.format;
  // A final assistant turn of text is a prefill: the answer continues it (Anthropic's API).
  const last = req.messages[req.messages.length - 1];
  const prefilled = last?.role === 'assistant' && (typeof last.content === 'string' || last.content.every((b) => b.type === 'text'));
  return parseBody(chatRequestSchema, {
    ...(prefilled ? { continue_final_message: true } : {}),
    messages: toChatMessages(ctx, req.system, req.messages),
    ...(req.tools
      ? { tools: custom.map((t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.input_schema } })) }
      : {}),
    ...(choice
      ? {
          tool_choice:
            choice.type === 'auto'
              ? 'auto'
              : choice.type === 'any'
                ? 'required'
                : choice.type === 'none'
                  ? 'none'
                  : { type: 'function', function: { name: choice.name } },
        }
      : {}),
    ...(format ? { response_format: { type: 'json_schema', json_schema: { name: 'output', schema: format.schema } } } : {}),
    ...(req.max_tokens !== undefined ? { max_tokens: req.max_tokens } : {}),
    ...(req.stop_sequences ? { stop: req.stop_sequences } : {}),
    ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
    ...(req.top_p !== undefined ? { top_p: req.top_p } : {}),
    ...(req.top_k !== undefined ? { top_k: req.top_k } : {}),
    ...thinkingFields(req),
  });
}

const toolId = (call: ChatToolCall) => call.id.replace(/^call_/, 'toolu_');

function toolInput(call: ChatToolCall): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(call.arguments);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : { value: v };
  } catch {
    return { arguments: call.arguments };
  }
}

function stopReason(c: ChatChoice): { stop_reason: string; stop_sequence: string | null } {
  const sequence = typeof c.finish?.stopReason === 'string' ? c.finish.stopReason : null;
  if (c.toolCalls.length > 0 && c.finish?.finishReason === 'stop') return { stop_reason: 'tool_use', stop_sequence: null };
  if (c.finish?.finishReason === 'length') return { stop_reason: 'max_tokens', stop_sequence: null };
  if (sequence !== null) return { stop_reason: 'stop_sequence', stop_sequence: sequence };
  return { stop_reason: 'end_turn', stop_sequence: null };
}

/** Chat Completions' fields by the Messages API's names. */
const MESSAGES_FIELDS = { response_format: 'output_config.format' } as const;

export async function serveMessages(ctx: ServingContext, body: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(messagesRequestSchema, body);
  checkTask(ctx, 'chat');
  const session = await inProtocolTerms(MESSAGES_FIELDS, () => startChat(ctx, toChatRequest(ctx, req), signal, caller));
  const notes = { ignoredTools: splitTools(req.tools).ignored };
  const c = session.choices[0];
  const id = newId('msg_', 24);
  const model = ctx.options.modelName;
  const thinkingOn = session.prepared.thinking;
  // display "omitted": thinking blocks carry only their signature, which seals the text for the next turn.
  const shown = req.thinking?.type === 'disabled' || req.thinking?.display !== 'omitted';
  const signature = () => ctx.seal.seal(model, c.reasoning);
  // Anthropic counts prompt tokens read from the cache apart from input_tokens.
  const usage = () => {
    const u = session.usage();
    return {
      input_tokens: u.promptTokens - u.cachedTokens,
      output_tokens: u.completionTokens,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: u.cachedTokens,
    };
  };

  if (!req.stream) {
    await session.runAll();
    if (signal.aborted) return { body: null };
    const content: unknown[] = [];
    if (thinkingOn && c.reasoning) content.push({ type: 'thinking', thinking: shown ? c.reasoning : '', signature: signature() });
    if (c.content !== '' || c.toolCalls.length === 0) content.push({ type: 'text', text: c.content });
    for (const call of c.toolCalls) content.push({ type: 'tool_use', id: toolId(call), name: call.name, input: toolInput(call) });
    return { body: { id, type: 'message', role: 'assistant', model, content, ...stopReason(c), usage: usage() }, notes };
  }

  return {
    framing: 'anthropic',
    notes,
    produce: async (send) => {
      // message_start waits for the first token, when the prompt's cached share is known.
      let started = false;
      const begin = () => {
        if (started) return;
        started = true;
        send(
          {
            type: 'message_start',
            message: {
              id,
              type: 'message',
              role: 'assistant',
              model,
              content: [],
              stop_reason: null,
              stop_sequence: null,
              usage: { ...usage(), output_tokens: 0 },
            },
          },
          'message_start',
        );
        send({ type: 'ping' }, 'ping');
      };
      let index = -1;
      let open: 'thinking' | 'text' | null = null;
      const close = () => {
        if (open === null) return;
        if (open === 'thinking')
          send({ type: 'content_block_delta', index, delta: { type: 'signature_delta', signature: signature() } }, 'content_block_delta');
        send({ type: 'content_block_stop', index }, 'content_block_stop');
        open = null;
      };
      const start = (kind: 'thinking' | 'text') => {
        if (open === kind) return;
        close();
        index++;
        open = kind;
        send(
          {
            type: 'content_block_start',
            index,
            content_block: kind === 'thinking' ? { type: 'thinking', thinking: '', signature: '' } : { type: 'text', text: '' },
          },
          'content_block_start',
        );
      };
      await session.runAll((_, d) => {
        begin();
        if (d.reasoning && thinkingOn) {
          start('thinking');
          if (shown) send({ type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: d.reasoning } }, 'content_block_delta');
        }
        if (d.content) {
          start('text');
          send({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: d.content } }, 'content_block_delta');
        }
        for (const part of d.toolCallParts) {
          const { call } = part;
          if (part.name !== undefined) {
            close();
            index++;
            send(
              { type: 'content_block_start', index, content_block: { type: 'tool_use', id: toolId(call), name: call.name, input: {} } },
              'content_block_start',
            );
          }
          // A call read whole goes out as its input object; a streamed one (always an object) as it arrives.
          const json = part.name !== undefined && part.done ? JSON.stringify(toolInput(call)) : part.arguments;
          if (json !== '')
            send({ type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: json } }, 'content_block_delta');
          if (part.done) send({ type: 'content_block_stop', index }, 'content_block_stop');
        }
      });
      begin();
      if (index < 0) start('text');
      close();
      // The final counts: what the cache served is known once the prompt was admitted.
      send({ type: 'message_delta', delta: stopReason(c), usage: usage() }, 'message_delta');
      send({ type: 'message_stop' }, 'message_stop');
    },
  };
}

/** POST /v1/messages/count_tokens: the prompt's length as the model would see it. */
export async function serveCountTokens(ctx: ServingContext, body: unknown): Promise<{ input_tokens: number }> {
  const req = parseBody(countTokensRequestSchema, body);
  const prepared = await prepareChat(ctx, toChatRequest(ctx, req));
  return { input_tokens: prepared.promptIds.length };
}
