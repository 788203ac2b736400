import { NotFoundError } from '../errors.js';
import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ChatChoice, ChatDelta } from '../serving/chat_choice.js';
import { type ChatRequest, chatRequestSchema } from '../serving/chat_request.js';
import { startChat } from '../serving/chat_session.js';
import type { ServingContext } from '../serving/context.js';
import { checkModel, checkTask, inProtocolTerms, newId, parseBody, unixNow } from '../serving/request.js';
import type { Served } from '../serving/served.js';
import { type FunctionToolSpec, type ResponsesInputItem, type ResponsesRequest, responsesRequestSchema } from './responses_schemas.js';
import { allowedTools, planTools, qualifiedName, type ToolPlan } from './responses_tools.js';

/**
 * OpenAI's Responses API (POST/GET/DELETE /v1/responses) as a translation: input items
 * and instructions become chat messages (after the stored conversation of
 * previous_response_id), run by the same chat session as Chat Completions; the choice
 * becomes output items (reasoning, message, function_call) or the semantic stream events.
 */

const partsText = (c: string | Array<{ text: string }>) => (typeof c === 'string' ? c : c.map((p) => p.text).join(''));

/** The text a reasoning item carries: its sealed blob when this server sealed it, else its plain reasoning text. */
function reasoningText(ctx: ServingContext, item: Extract<ResponsesInputItem, { type: 'reasoning' }>): string | null {
  if (item.encrypted_content) {
    const opened = ctx.seal.open(ctx.options.modelName, item.encrypted_content);
    if (opened !== null) return opened;
  }
  const parts = (item.content ?? []).filter((p) => p.type === 'reasoning_text' && typeof p.text === 'string');
  return parts.length > 0 ? parts.map((p) => p.text).join('') : null;
}

/**
 * Input items as chat messages: consecutive calls join one assistant turn, outputs become
 * tool turns, and a reasoning item goes with the assistant turn after it (Qwen3's template
 * shows it again within a tool loop, so the prompt is what the model wrote).
 */
function toMessages(ctx: ServingContext, input: ResponsesRequest['input']): Array<Record<string, unknown>> {
  if (typeof input === 'string') return [{ role: 'user', content: input }];
  const out: Array<Record<string, unknown>> = [];
  let reasoning: string | null = null;
  const assistant = (): Record<string, unknown> => {
    const last = out.at(-1);
    if (last?.role === 'assistant' && reasoning === null) return last;
    const turn: Record<string, unknown> = { role: 'assistant', content: '', ...(reasoning !== null ? { reasoning_content: reasoning } : {}) };
    reasoning = null;
    out.push(turn);
    return turn;
  };
  const call = (id: string, name: string, args: string) => {
    const turn = assistant();
    ((turn.tool_calls as unknown[] | undefined) ?? (turn.tool_calls = [])).push({ id, type: 'function', function: { name, arguments: args } });
  };
  for (const item of input as ResponsesInputItem[]) {
    if (item.type === 'reasoning') {
      reasoning = reasoningText(ctx, item as Extract<ResponsesInputItem, { type: 'reasoning' }>);
    } else if (item.type === 'function_call') {
      const c = item as Extract<ResponsesInputItem, { type: 'function_call' }>;
      call(c.call_id, qualifiedName(c.name, c.namespace), c.arguments);
    } else if (item.type === 'custom_tool_call') {
      const c = item as Extract<ResponsesInputItem, { type: 'custom_tool_call' }>;
      call(c.call_id, qualifiedName(c.name, c.namespace), JSON.stringify({ input: c.input }));
    } else if (item.type === 'function_call_output' || item.type === 'custom_tool_call_output') {
      const o = item as Extract<ResponsesInputItem, { type: 'function_call_output' }>;
      out.push({ role: 'tool', tool_call_id: o.call_id, content: partsText(o.output) });
    } else {
      const m = item as { role: string; content: string | Array<{ text: string }> };
      if (m.role === 'assistant') {
        const turn = assistant();
        turn.content = `${turn.content as string}${partsText(m.content)}`;
      } else {
        out.push({ role: m.role, content: partsText(m.content) });
      }
    }
  }
  return out;
}

function formatOf(req: ResponsesRequest): unknown {
  const f = req.text?.format;
  if (!f || f.type === 'text') return undefined;
  if (f.type === 'json_object') return { type: 'json_object' };
  return { type: 'json_schema', json_schema: { name: f.name, schema: f.schema, strict: f.strict ?? null } };
}

/** The chat request a Responses request stands for, after `history` (validated by the chat schema: one set of rules). */
function toChatRequest(req: ResponsesRequest, history: unknown[], input: unknown[], plan: ToolPlan): ChatRequest {
  const messages = [...(req.instructions ? [{ role: 'system', content: req.instructions }] : []), ...history, ...input];
  const tools = allowedTools(plan, req.tool_choice);
  return parseBody(chatRequestSchema, {
    messages,
    ...(tools ? { tools } : {}),
    ...(plan.toolChoice !== undefined ? { tool_choice: plan.toolChoice } : {}),
    ...(formatOf(req) ? { response_format: formatOf(req) } : {}),
    ...(req.reasoning?.effort ? { reasoning_effort: req.reasoning.effort } : {}),
    ...(req.thinking_token_budget !== null && req.thinking_token_budget !== undefined ? { thinking_token_budget: req.thinking_token_budget } : {}),
    ...(req.max_output_tokens ? { max_tokens: req.max_output_tokens } : {}),
    ...(req.temperature !== null && req.temperature !== undefined ? { temperature: req.temperature } : {}),
    ...(req.top_p !== null && req.top_p !== undefined ? { top_p: req.top_p } : {}),
    ...(req.cache_salt !== null && req.cache_salt !== undefined ? { cache_salt: req.cache_salt } : {}),
  });
}

const fcId = (callId: string) => callId.replace(/^call_/, 'fc_');

/** A custom tool's free text from the one-string function the model called. */
function customInput(args: string): string {
  try {
    const v = JSON.parse(args) as { input?: unknown };
    if (typeof v?.input === 'string') return v.input;
  } catch {
    // Not JSON: the model's text is the input as it stands.
  }
  return args;
}

/** Chat Completions' fields by the Responses API's names (messages come from the input, less its item indices). */
const RESPONSES_FIELDS = { messages: 'input', max_tokens: 'max_output_tokens', response_format: 'text.format' } as const;

export async function serveResponses(ctx: ServingContext, body: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(responsesRequestSchema, body);
  checkModel(ctx, req.model);
  checkTask(ctx, 'chat');
  let history: unknown[] = [];
  if (req.previous_response_id) {
    const prev = ctx.responses.get(req.previous_response_id, caller.key);
    if (!prev) {
      throw new NotFoundError(`Previous response with id '${req.previous_response_id}' not found (unknown, deleted, or evicted from the store).`, {
        param: 'previous_response_id',
        code: 'previous_response_not_found',
      });
    }
    history = prev.messages;
  }
  const plan = planTools(req);
  const input = toMessages(ctx, req.input);
  const session = await inProtocolTerms(RESPONSES_FIELDS, () => startChat(ctx, toChatRequest(req, history, input, plan), signal, caller));
  const sealReasoning = (req.include ?? []).includes('reasoning.encrypted_content');
  const notes = { ignoredTools: plan.ignored };
  const c = session.choices[0];
  const id = newId('resp_');
  const createdAt = unixNow();
  const thinking = session.prepared.thinking;
  const summary = req.reasoning?.summary ?? null;
  const ids = { reasoning: newId('rs_'), message: newId('msg_') };

  /** The response object as it stands (status given). */
  const snapshot = (status: 'in_progress' | 'completed' | 'incomplete', output: unknown[]) => {
    const u = session.usage();
    return {
      id,
      object: 'response',
      created_at: createdAt,
      status,
      ...(status === 'in_progress' ? {} : { completed_at: unixNow() }),
      error: null,
      incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
      instructions: req.instructions ?? null,
      max_output_tokens: req.max_output_tokens ?? null,
      model: ctx.options.modelName,
      output,
      parallel_tool_calls: req.parallel_tool_calls ?? true,
      previous_response_id: req.previous_response_id ?? null,
      reasoning: { effort: req.reasoning?.effort ?? null, summary },
      store: req.store ?? true,
      temperature: req.temperature ?? null,
      text: { format: req.text?.format ?? { type: 'text' } },
      tool_choice: req.tool_choice ?? 'auto',
      tools: (req.tools ?? []).map((t) => {
        if (t.type !== 'function') return t;
        const f = t as FunctionToolSpec;
        return { type: 'function', name: f.name, description: f.description ?? null, parameters: f.parameters ?? null, strict: f.strict ?? false };
      }),
      top_p: req.top_p ?? null,
      top_logprobs: req.top_logprobs ?? 0,
      truncation: req.truncation ?? 'disabled',
      // Usage is omitted until the end (the schema has no null for it).
      ...(status === 'in_progress'
        ? {}
        : {
            usage: {
              input_tokens: u.promptTokens,
              input_tokens_details: { cached_tokens: u.cachedTokens, cache_write_tokens: 0 },
              output_tokens: u.completionTokens,
              output_tokens_details: { reasoning_tokens: u.reasoningTokens },
              total_tokens: u.promptTokens + u.completionTokens,
            },
          }),
      ...(req.user ? { user: req.user } : {}),
      metadata: req.metadata ?? {},
    };
  };
  const reasoningItem = (text: string, done = true) => ({
    type: 'reasoning',
    id: ids.reasoning,
    summary: summary ? [{ type: 'summary_text', text }] : [],
    content: [{ type: 'reasoning_text', text }],
    ...(sealReasoning && done ? { encrypted_content: ctx.seal.seal(ctx.options.modelName, text) } : {}),
  });
  const messageItem = (text: string, status: string) => ({
    type: 'message',
    id: ids.message,
    status,
    role: 'assistant',
    content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
  });
  /** A call as the client's tool kind has it: a function (in its namespace) or a custom tool's free text. */
  const callItem = (call: ChatChoice['toolCalls'][number]) => {
    const target = plan.targets.get(call.name) ?? { kind: 'function', name: call.name };
    const namespace = target.namespace ? { namespace: target.namespace } : {};
    if (target.kind === 'custom') {
      return {
        type: 'custom_tool_call',
        id: call.id.replace(/^call_/, 'ctc_'),
        call_id: call.id,
        ...namespace,
        name: target.name,
        input: customInput(call.arguments),
        status: 'completed',
      };
    }
    return {
      type: 'function_call',
      id: fcId(call.id),
      call_id: call.id,
      ...namespace,
      name: target.name,
      arguments: call.arguments,
      status: 'completed',
    };
  };
  /** A message the token limit cut short is incomplete, as the response holding it is. */
  const messageStatus = () => (c.finish?.finishReason === 'length' ? 'incomplete' : 'completed');
  const finalOutput = () => [
    ...(thinking && c.reasoning ? [reasoningItem(c.reasoning)] : []),
    ...(c.content !== '' || c.toolCalls.length === 0 ? [messageItem(c.content, messageStatus())] : []),
    ...c.toolCalls.map(callItem),
  ];
  const finished = () => {
    const status = c.finish?.finishReason === 'length' ? 'incomplete' : 'completed';
    const response = snapshot(status, finalOutput());
    if (req.store ?? true) {
      const assistant = {
        role: 'assistant',
        content: c.content,
        ...(thinking && c.reasoning ? { reasoning_content: c.reasoning } : {}),
        ...(c.toolCalls.length > 0
          ? { tool_calls: c.toolCalls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } })) }
          : {}),
      };
      ctx.responses.put(id, { response, messages: [...history, ...input, assistant], owner: caller.key });
    }
    return response;
  };

  if (!req.stream) {
    await session.runAll();
    if (signal.aborted) return { body: null };
    return { body: finished(), notes };
  }

  return {
    framing: 'responses',
    notes,
    produce: async (send) => {
      let seq = 0;
      const emit = (type: string, fields: Record<string, unknown>) => send({ type, sequence_number: seq++, ...fields }, type);
      emit('response.created', { response: snapshot('in_progress', []) });
      emit('response.in_progress', { response: snapshot('in_progress', []) });
      let index = -1;
      let open: { kind: 'reasoning' | 'message'; text: string } | null = null;
      const close = () => {
        if (!open) return;
        if (open.kind === 'reasoning') {
          emit('response.reasoning_text.done', { item_id: ids.reasoning, output_index: index, content_index: 0, text: open.text });
          if (summary) {
            const at = { item_id: ids.reasoning, output_index: index, summary_index: 0 };
            emit('response.reasoning_summary_text.done', { ...at, text: open.text });
            emit('response.reasoning_summary_part.done', { ...at, part: { type: 'summary_text', text: open.text } });
          }
          emit('response.output_item.done', { output_index: index, item: reasoningItem(open.text) });
        } else {
          emit('response.output_text.done', { item_id: ids.message, output_index: index, content_index: 0, text: open.text, logprobs: [] });
          emit('response.content_part.done', {
            item_id: ids.message,
            output_index: index,
            content_index: 0,
            part: { type: 'output_text', text: open.text, annotations: [], logprobs: [] },
          });
          emit('response.output_item.done', { output_index: index, item: messageItem(open.text, messageStatus()) });
        }
        open = null;
      };
      const start = (kind: 'reasoning' | 'message') => {
        if (open?.kind === kind) return;
        close();
        index++;
        open = { kind, text: '' };
        if (kind === 'reasoning') {
          emit('response.output_item.added', { output_index: index, item: { type: 'reasoning', id: ids.reasoning, summary: [], content: [] } });
          // Asked for a summary, the client also gets it as it grows (the summary is the reasoning itself).
          if (summary)
            emit('response.reasoning_summary_part.added', {
              item_id: ids.reasoning,
              output_index: index,
              summary_index: 0,
              part: { type: 'summary_text', text: '' },
            });
        } else {
          emit('response.output_item.added', {
            output_index: index,
            item: { type: 'message', id: ids.message, status: 'in_progress', role: 'assistant', content: [] },
          });
          emit('response.content_part.added', {
            item_id: ids.message,
            output_index: index,
            content_index: 0,
            part: { type: 'output_text', text: '', annotations: [], logprobs: [] },
          });
        }
      };
      const onDelta = (_: ChatChoice, d: ChatDelta) => {
        if (d.reasoning && thinking) {
          start('reasoning');
          open!.text += d.reasoning;
          emit('response.reasoning_text.delta', { item_id: ids.reasoning, output_index: index, content_index: 0, delta: d.reasoning });
          if (summary)
            emit('response.reasoning_summary_text.delta', { item_id: ids.reasoning, output_index: index, summary_index: 0, delta: d.reasoning });
        }
        if (d.content) {
          start('message');
          open!.text += d.content;
          emit('response.output_text.delta', { item_id: ids.message, output_index: index, content_index: 0, delta: d.content, logprobs: [] });
        }
        for (const part of d.toolCallParts) {
          const { call } = part;
          // A custom tool's input is free text: it goes out whole, once the call is.
          const custom = plan.targets.get(call.name)?.kind === 'custom';
          if (part.name !== undefined) {
            close();
            index++;
            if (!custom)
              emit('response.output_item.added', { output_index: index, item: { ...callItem(call), arguments: '', status: 'in_progress' } });
          }
          if (!custom && part.arguments !== '') {
            emit('response.function_call_arguments.delta', { item_id: fcId(call.id), output_index: index, delta: part.arguments });
          }
          if (!part.done) continue;
          const item = callItem(call);
          if (item.type === 'custom_tool_call') {
            const input = (item as { input: string }).input;
            emit('response.output_item.added', { output_index: index, item: { ...item, input: '', status: 'in_progress' } });
            emit('response.custom_tool_call_input.delta', { item_id: item.id, output_index: index, delta: input });
            emit('response.custom_tool_call_input.done', { item_id: item.id, output_index: index, input });
          } else {
            emit('response.function_call_arguments.done', { item_id: item.id, output_index: index, name: item.name, arguments: call.arguments });
          }
          emit('response.output_item.done', { output_index: index, item });
        }
      };
      await session.runAll(onDelta);
      // As the plain response does: a message item even when nothing was said.
      if (c.content === '' && c.toolCalls.length === 0) start('message');
      close();
      const response = finished();
      emit(response.status === 'completed' ? 'response.completed' : 'response.incomplete', { response });
    },
  };
}

/** GET /v1/responses/{id}. */
export function retrieveResponse(ctx: ServingContext, id: string, caller: Caller = ANONYMOUS): Record<string, unknown> {
  const stored = ctx.responses.get(id, caller.key);
  if (!stored)
    throw new NotFoundError(`Response with id '${id}' not found (unknown, deleted, or evicted from the store).`, {
      param: 'response_id',
      code: 'not_found',
    });
  return stored.response;
}

/** DELETE /v1/responses/{id}. */
export function deleteResponse(ctx: ServingContext, id: string, caller: Caller = ANONYMOUS): { id: string; object: string; deleted: boolean } {
  if (!ctx.responses.delete(id, caller.key))
    throw new NotFoundError(`Response with id '${id}' not found.`, { param: 'response_id', code: 'not_found' });
  return { id, object: 'response', deleted: true };
}
