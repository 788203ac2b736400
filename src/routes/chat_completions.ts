import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { InvalidRequestError } from '../errors.js';
import type { EngineEvent, GenerateRequest } from '../engine/types.js';
import type { TokenLogprob } from '../runtime/sampler.js';
import type { ChatMessage, ToolDefinition } from '../text/chat_template.js';
import { OutputParser, type ParsedToolCall } from '../text/output_parser.js';
import type { ServingContext } from '../server/context.js';
import {
  chatLogprobs,
  checkModel,
  engineRequest,
  parseBody,
  resolveMaxTokens,
  samplingParams,
  unixNow,
  vllmPromptLogprobs,
} from '../server/generation.js';
import { chatRequestSchema, type ChatRequest, type MessageInput } from '../server/schemas.js';
import { grammarRequest } from '../server/structured_output.js';
import type { GrammarRequest } from '../runtime/grammar.js';
import { streamResponse } from '../server/sse.js';
import { clientAbortSignal } from '../server/disconnect.js';

const THINK_END_TOKEN = '</think>';

function textOf(content: MessageInput['content'] | null | undefined): string {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  return content.map((p) => (p as { text?: string }).text ?? '').join('');
}

function toTemplateMessages(messages: MessageInput[]): ChatMessage[] {
  return messages.map((m) => {
    switch (m.role) {
      case 'developer':
      case 'system':
        return { role: 'system', content: textOf(m.content) };
      case 'user':
        return { role: 'user', content: textOf(m.content) };
      case 'tool':
        return { role: 'tool', content: textOf(m.content), tool_call_id: m.tool_call_id };
      case 'assistant':
        return {
          role: 'assistant',
          content: textOf(m.content),
          ...(m.tool_calls ? { tool_calls: m.tool_calls.map((c) => ({ ...c, type: 'function' as const })) } : {}),
        };
    }
  });
}

/** Thinking per request: chat_template_kwargs.enable_thinking, then reasoning_effort, then the server default. */
function thinkingFor(ctx: ServingContext, req: ChatRequest): boolean {
  const kw = req.chat_template_kwargs?.enable_thinking;
  if (kw !== undefined && kw !== null) {
    if (typeof kw !== 'boolean') throw new InvalidRequestError('chat_template_kwargs.enable_thinking must be a boolean.', { param: 'chat_template_kwargs.enable_thinking' });
    return kw;
  }
  if (req.reasoning_effort) return req.reasoning_effort !== 'none';
  return ctx.options.defaultThinking;
}

interface PreparedChat {
  promptIds: number[];
  thinking: boolean;
  toolsOn: boolean;
  /** Text the prompt puts in the assistant turn, which the output parser must see first. */
  parserPrefix: string;
  /** Structured output the answer must follow, or null. */
  grammar: GrammarRequest | null;
  /** The token that ends thinking, from which the grammar applies (null: from the start). */
  grammarAfter: number | null;
}

/**
 * What follows the opening of a forced call (`<tool_call>\n`, plus `{"name": …,
 * "arguments": ` for a named one), in Qwen3's format: the arguments as the function's
 * `parameters` schema allows, then the closing. `required` lets the model pick the tool.
 */
function forcedCallFormat(tools: ToolDefinition[], name: string | null): Record<string, unknown> {
  const close = { type: 'const_string', value: '}\n</tool_call>' };
  const args = (t: ToolDefinition) => ({ type: 'json_schema', json_schema: t.function.parameters ?? { type: 'object' } });
  if (name !== null) return { type: 'sequence', elements: [args(tools.find((t) => t.function.name === name)!), close] };
  return {
    type: 'or',
    elements: tools.map((t) => ({
      type: 'sequence',
      elements: [{ type: 'const_string', value: `{"name": ${JSON.stringify(t.function.name)}, "arguments": ` }, args(t), close],
    })),
  };
}

/** Renders the prompt (tools, thinking, forced tool calls) and tokenizes it. */
export async function prepareChat(ctx: ServingContext, req: ChatRequest): Promise<PreparedChat> {
  const grammar = grammarRequest(req);
  // With thinking on, a grammar holds the answer after the thinking block (as vLLM does
  // with a reasoning parser); a tokenizer without </think> cannot say where that is.
  const thinkEnd = ctx.tokenizer.tokenId(THINK_END_TOKEN) ?? null;
  let thinking = thinkingFor(ctx, req) && !(grammar && thinkEnd === null);
  const choice = req.tool_choice ?? 'auto';
  if (grammar && (choice === 'required' || typeof choice === 'object')) {
    throw new InvalidRequestError(`${grammar.param} and a forced tool call (tool_choice) cannot both shape one answer.`, { param: grammar.param });
  }
  const tools: ToolDefinition[] = choice === 'none' ? [] : (req.tools ?? []);
  if (typeof choice === 'object' && !tools.some((t) => t.function.name === choice.function.name)) {
    throw new InvalidRequestError(`tool_choice names function '${choice.function.name}', which is not in tools.`, { param: 'tool_choice' });
  }
  if (choice === 'required' && tools.length === 0) {
    throw new InvalidRequestError("tool_choice 'required' needs at least one tool.", { param: 'tool_choice' });
  }
  const extra = { ...(req.chat_template_kwargs ?? {}) };
  delete extra.enable_thinking;
  let prompt = ctx.template.render(toTemplateMessages(req.messages), { tools, enableThinking: thinking, extra });
  let parserPrefix = '';
  let forced: GrammarRequest | null = null;
  if (choice === 'required' || typeof choice === 'object') {
    // A forced call is opened in the prompt, after an empty thinking block (the template
    // writes one when thinking is off), and the rest is held to the function's
    // parameters by the grammar engine, so the call always parses.
    if (thinking) prompt += '<think>\n\n</think>\n\n';
    parserPrefix = '<tool_call>\n' + (typeof choice === 'object' ? `{"name": ${JSON.stringify(choice.function.name)}, "arguments": ` : '');
    prompt += parserPrefix;
    thinking = false;
    forced = { param: 'tools', spec: { type: 'structural_tag', format: forcedCallFormat(tools, typeof choice === 'object' ? choice.function.name : null) } };
  }
  if (ctx.options.logPrompts) ctx.engine.emit('prompt', prompt);
  return {
    promptIds: await ctx.codec.encode(prompt),
    thinking,
    toolsOn: tools.length > 0 && !grammar,
    parserPrefix,
    grammar: grammar ?? forced,
    grammarAfter: grammar && thinking ? thinkEnd : null,
  };
}

interface ChoiceState {
  index: number;
  parser: OutputParser;
  reasoning: string;
  content: string;
  toolCalls: Array<ParsedToolCall & { id: string }>;
  logprobs: TokenLogprob[];
  completionTokens: number;
  reasoningTokens: number;
  sawThinkEnd: boolean;
  finish: EngineEvent | null;
}

function newChoice(index: number, p: PreparedChat): ChoiceState {
  return {
    index,
    parser: new OutputParser({ thinking: p.thinking, tools: p.toolsOn, prefix: p.parserPrefix }),
    reasoning: '',
    content: '',
    toolCalls: [],
    logprobs: [],
    completionTokens: 0,
    reasoningTokens: 0,
    sawThinkEnd: false,
    finish: null,
  };
}

function finishReason(c: ChoiceState): string {
  const r = c.finish?.finishReason ?? 'stop';
  if (r === 'stop' && c.toolCalls.length > 0) return 'tool_calls';
  return r === 'abort' || r === 'error' ? 'stop' : r;
}

export function registerChatCompletions(app: FastifyInstance, ctx: ServingContext): void {
  app.post('/v1/chat/completions', async (request: FastifyRequest, reply: FastifyReply) => {
    const req = parseBody(chatRequestSchema, request.body);
    checkModel(ctx, req.model);
    const prepared = await prepareChat(ctx, req);
    const maxTokens = resolveMaxTokens(ctx, prepared.promptIds.length, req.max_completion_tokens ?? req.max_tokens, 'max_tokens');
    const n = req.n ?? 1;
    const topLogprobs = req.logprobs ? (req.top_logprobs ?? 0) : null;
    const asIds = req.return_tokens_as_token_ids ?? false;
    const thinkEndId = ctx.tokenizer.tokenId(THINK_END_TOKEN);
    const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
    const created = unixNow();
    const model = ctx.options.modelName;
    const signal = clientAbortSignal(request, reply);
    const requests = Array.from({ length: n }, (_, i) => ({
      ...engineRequest(ctx, prepared.promptIds, samplingParams(ctx, req, topLogprobs, i), maxTokens, req),
      grammar: prepared.grammar,
      grammarAfter: prepared.grammarAfter,
      // The prompt is the same for every choice: the first scores it.
      promptLogprobs: i === 0 ? (req.prompt_logprobs ?? null) : null,
    }));
    // Every choice is queued before any output, so refusals (queue full) are HTTP errors.
    const streams = await submitAll(ctx, requests, signal);
    const choices = requests.map((_, i) => newChoice(i, prepared));

    /** vLLM's prompt_logprobs, from the first choice's first event (every choice has them). */
    let promptScores: EngineEvent['promptLogprobs'] | null = null;
    const account = (c: ChoiceState, ev: EngineEvent) => {
      if (ev.promptLogprobs) promptScores ??= ev.promptLogprobs;
      for (const t of ev.tokenIds) {
        c.completionTokens++;
        if (prepared.thinking && !c.sawThinkEnd) c.reasoningTokens++;
        if (t === thinkEndId) c.sawThinkEnd = true;
      }
      if (ev.logprobs) c.logprobs.push(...ev.logprobs);
      if (ev.finishReason) {
        c.finish = ev;
        if (ev.metrics) ctx.metrics.observe(ev.metrics, ev.finishReason);
      }
    };
    const usage = () => {
      const completion = choices.reduce((s, c) => s + c.completionTokens, 0);
      return {
        prompt_tokens: prepared.promptIds.length,
        completion_tokens: completion,
        total_tokens: prepared.promptIds.length + completion,
        prompt_tokens_details: { cached_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: choices.reduce((s, c) => s + c.reasoningTokens, 0) },
      };
    };
    const reasoningFields = (text: string): Record<string, string> => {
      const f = ctx.options.reasoningField;
      if (f === 'both') return { reasoning_content: text, reasoning: text };
      return { [f]: text };
    };

    if (!req.stream) {
      await Promise.all(
        streams.map(async (s, i) => {
          const c = choices[i];
          for await (const ev of s) {
            account(c, ev);
            const d = c.parser.push(ev.text);
            c.reasoning += d.reasoning;
            c.content += d.content;
            for (const call of d.toolCalls) c.toolCalls.push({ ...call, id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}` });
          }
          const d = c.parser.finish();
          c.reasoning += d.reasoning;
          c.content += d.content;
          for (const call of d.toolCalls) c.toolCalls.push({ ...call, id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}` });
        }),
      );
      if (signal.aborted) return reply; // the client is gone: nothing to send
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: choices.map((c) => ({
          index: c.index,
          message: {
            role: 'assistant',
            content: c.content === '' && c.toolCalls.length > 0 ? null : c.content,
            ...(prepared.thinking || c.reasoning ? reasoningFields(c.reasoning) : {}),
            ...(c.toolCalls.length > 0
              ? { tool_calls: c.toolCalls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } })) }
              : {}),
          },
          logprobs: topLogprobs === null ? null : { content: chatLogprobs(ctx, c.logprobs, asIds) },
          finish_reason: finishReason(c),
          stop_reason: c.finish?.stopReason ?? null,
        })),
        ...(req.prompt_logprobs != null ? { prompt_logprobs: promptScores ? vllmPromptLogprobs(ctx, promptScores, req.prompt_logprobs) : null } : {}),
        usage: usage(),
      };
    }

    const includeUsage = req.stream_options?.include_usage ?? false;
    const chunk = (choicesPart: unknown[], extra: Record<string, unknown> = {}) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: choicesPart,
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });
    return streamResponse(request, reply, ctx.options.streamBufferLimit, async (sse) => {
      for (const c of choices) sse.send(chunk([{ index: c.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
      sse.startKeepAlive(ctx.options.keepAliveMs);
      await Promise.all(
          streams.map(async (s, i) => {
            const c = choices[i];
            const emit = (d: ReturnType<OutputParser['push']>, lps: TokenLogprob[] | null) => {
              const delta: Record<string, unknown> = {};
              if (d.reasoning) Object.assign(delta, reasoningFields(d.reasoning));
              if (d.content) delta.content = d.content;
              if (d.toolCalls.length > 0) {
                delta.tool_calls = d.toolCalls.map((call) => {
                  const withId = { ...call, id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}` };
                  c.toolCalls.push(withId);
                  return { index: c.toolCalls.length - 1, id: withId.id, type: 'function', function: { name: call.name, arguments: call.arguments } };
                });
              }
              if (Object.keys(delta).length === 0 && !lps) return;
              sse.send(chunk([{ index: c.index, delta, logprobs: lps ? { content: chatLogprobs(ctx, lps, asIds) } : null, finish_reason: null }]));
            };
            for await (const ev of s) {
              sse.stopKeepAlive();
              account(c, ev);
              if (ev.finishReason) emit(c.parser.finish(), null);
              else emit(c.parser.push(ev.text), ev.logprobs);
            }
            sse.send(chunk([{ index: c.index, delta: {}, logprobs: null, finish_reason: finishReason(c), stop_reason: c.finish?.stopReason ?? null }]));
          }),
        );
      if (includeUsage) sse.send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage() });
    });
  });
}

/** Queues all choices; if one is refused, the others are aborted and the refusal thrown. */
export async function submitAll(ctx: ServingContext, requests: GenerateRequest[], signal: AbortSignal): Promise<AsyncGenerator<EngineEvent>[]> {
  const results = await Promise.allSettled(requests.map((r) => ctx.engine.submit(r, signal)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    requests.forEach((r) => ctx.engine.abort(r.requestId));
    throw failed.reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<AsyncGenerator<EngineEvent>>).value);
}
