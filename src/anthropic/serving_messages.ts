import { InvalidRequestError } from '../errors.js';
import type { ChatChoice, ChatToolCall } from '../openai/chat_choice.js';
import { prepareChat } from '../openai/chat_prompt.js';
import { startChat } from '../openai/chat_session.js';
import type { ServingContext } from '../openai/context.js';
import { newId, parseBody } from '../openai/request.js';
import { chatRequestSchema, type ChatRequest } from '../openai/schemas.js';
import type { Served } from '../openai/serving.js';
import { countTokensRequestSchema, messagesRequestSchema, type AnthropicMessage, type CountTokensRequest, type MessagesRequest } from './schemas.js';

/**
 * Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as a
 * translation: the request becomes a chat request, run by the same session as Chat
 * Completions, and its choice becomes content blocks (thinking, text, tool_use) or
 * Anthropic's stream events. The model name is not checked: Anthropic clients (Claude
 * Code among them) name their own models, and this server has one.
 */

const textOf = (content: string | Array<{ type: string; text?: string }> | undefined): string =>
  content === undefined ? '' : typeof content === 'string' ? content : content.map((b) => (b.type === 'text' ? (b.text ?? '') : '')).join('');

/** Anthropic messages as OpenAI chat messages: tool results become tool turns, thinking is dropped (the template drops earlier reasoning too). */
function toChatMessages(system: CountTokensRequest['system'], messages: AnthropicMessage[]): unknown[] {
  const out: unknown[] = [];
  if (system !== undefined && textOf(system) !== '') out.push({ role: 'system', content: textOf(system) });
  for (const m of messages) {
    if (typeof m.content === 'string') {
      out.push({ role: m.role, content: m.content });
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
    const calls = m.content.flatMap((b) => (b.type === 'tool_use' ? [{ id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(b.input) } }] : []));
    if (m.content.some((b) => b.type === 'tool_result')) throw new InvalidRequestError('messages: an assistant turn cannot hold a tool_result block.', { param: 'messages' });
    out.push({ role: 'assistant', content: m.content.map((b) => (b.type === 'text' ? b.text : '')).join(''), ...(calls.length > 0 ? { tool_calls: calls } : {}) });
  }
  return out;
}

/** The chat request a Messages request stands for (validated by the chat schema, so both APIs share their rules). */
function toChatRequest(req: CountTokensRequest & Partial<Omit<MessagesRequest, keyof CountTokensRequest>>): ChatRequest {
  const choice = req.tool_choice;
  const thinking = req.thinking;
  return parseBody(chatRequestSchema, {
    messages: toChatMessages(req.system, req.messages),
    ...(req.tools ? { tools: req.tools.map((t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.input_schema } })) } : {}),
    ...(choice
      ? { tool_choice: choice.type === 'auto' ? 'auto' : choice.type === 'any' ? 'required' : choice.type === 'none' ? 'none' : { type: 'function', function: { name: choice.name } } }
      : {}),
    ...(req.max_tokens !== undefined ? { max_tokens: req.max_tokens } : {}),
    ...(req.stop_sequences ? { stop: req.stop_sequences } : {}),
    ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
    ...(req.top_p !== undefined ? { top_p: req.top_p } : {}),
    ...(req.top_k !== undefined ? { top_k: req.top_k } : {}),
    // Anthropic's models think only when asked; a budget of 0 is thinking off.
    chat_template_kwargs: { enable_thinking: thinking?.type === 'enabled' && thinking.budget_tokens > 0 },
    ...(thinking?.type === 'enabled' ? { thinking_token_budget: thinking.budget_tokens } : {}),
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

export async function serveMessages(ctx: ServingContext, body: unknown, signal: AbortSignal): Promise<Served> {
  const req = parseBody(messagesRequestSchema, body);
  const session = await startChat(ctx, toChatRequest(req), signal);
  const c = session.choices[0];
  const id = newId('msg_', 24);
  const model = ctx.options.modelName;
  const thinkingOn = session.prepared.thinking;
  // Anthropic counts prompt tokens read from the cache apart from input_tokens.
  const usage = () => {
    const u = session.usage();
    return { input_tokens: u.promptTokens - u.cachedTokens, output_tokens: u.completionTokens, cache_creation_input_tokens: 0, cache_read_input_tokens: u.cachedTokens };
  };

  if (!req.stream) {
    await session.runAll();
    if (signal.aborted) return { body: null };
    const content: unknown[] = [];
    if (thinkingOn && c.reasoning) content.push({ type: 'thinking', thinking: c.reasoning, signature: '' });
    if (c.content !== '' || c.toolCalls.length === 0) content.push({ type: 'text', text: c.content });
    for (const call of c.toolCalls) content.push({ type: 'tool_use', id: toolId(call), name: call.name, input: toolInput(call) });
    return { body: { id, type: 'message', role: 'assistant', model, content, ...stopReason(c), usage: usage() } };
  }

  return {
    framing: 'anthropic',
    produce: async (send) => {
      send({ type: 'message_start', message: { id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...usage(), output_tokens: 0 } } }, 'message_start');
      send({ type: 'ping' }, 'ping');
      let index = -1;
      let open: 'thinking' | 'text' | null = null;
      const close = () => {
        if (open === null) return;
        if (open === 'thinking') send({ type: 'content_block_delta', index, delta: { type: 'signature_delta', signature: '' } }, 'content_block_delta');
        send({ type: 'content_block_stop', index }, 'content_block_stop');
        open = null;
      };
      const start = (kind: 'thinking' | 'text') => {
        if (open === kind) return;
        close();
        index++;
        open = kind;
        send({ type: 'content_block_start', index, content_block: kind === 'thinking' ? { type: 'thinking', thinking: '', signature: '' } : { type: 'text', text: '' } }, 'content_block_start');
      };
      await session.runAll((_, d) => {
        if (d.reasoning && thinkingOn) {
          start('thinking');
          send({ type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: d.reasoning } }, 'content_block_delta');
        }
        if (d.content) {
          start('text');
          send({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: d.content } }, 'content_block_delta');
        }
        for (const call of d.toolCalls) {
          close();
          index++;
          send({ type: 'content_block_start', index, content_block: { type: 'tool_use', id: toolId(call), name: call.name, input: {} } }, 'content_block_start');
          send({ type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(toolInput(call)) } }, 'content_block_delta');
          send({ type: 'content_block_stop', index }, 'content_block_stop');
        }
      });
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
  const prepared = await prepareChat(ctx, toChatRequest(req));
  return { input_tokens: prepared.promptIds.length };
}
