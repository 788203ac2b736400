import { randomUUID } from 'node:crypto';
import type { GrammarRequest } from '../engine/types.js';
import { InvalidRequestError } from '../errors.js';
import type { ChatMessage, RenderOptions, ToolCallSyntax, ToolDefinition } from '../text/chat_template.js';
import type { ChatRequest, MessageInput } from './chat_request.js';
import type { ReasoningEffortBudgets, ServingContext } from './context.js';
import { forcedCall } from './forced_call.js';
import { grammarRequest } from './structured_output.js';

export const THINK_END_TOKEN = '</think>';

function textOf(content: MessageInput['content'] | null | undefined): string {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  return content.map((p) => (p as { text?: string }).text ?? '').join('');
}

/**
 * A past call's arguments as its template takes them: Qwen3's writes the client's JSON
 * text as it is; an XML template walks the arguments' keys, so it needs the object.
 */
function templateArguments(args: string | Record<string, unknown>, syntax: ToolCallSyntax, at: string): string | Record<string, unknown> {
  if (syntax === 'json' || typeof args !== 'string') return args;
  let parsed: unknown;
  try {
    parsed = JSON.parse(args);
  } catch {
    parsed = undefined;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InvalidRequestError(`${at}.function.arguments must be a JSON object: this model's template writes each argument as a parameter.`, {
      param: 'messages',
    });
  }
  return parsed as Record<string, unknown>;
}

function toTemplateMessages(messages: MessageInput[], syntax: ToolCallSyntax): ChatMessage[] {
  return messages.map((m, i) => {
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
          // Qwen3's template shows the reasoning of turns after the last user message again.
          ...(typeof m.reasoning_content === 'string' && m.reasoning_content !== '' ? { reasoning_content: m.reasoning_content } : {}),
          ...(m.tool_calls
            ? {
                tool_calls: m.tool_calls.map((c, j) => ({
                  ...c,
                  type: 'function' as const,
                  function: { ...c.function, arguments: templateArguments(c.function.arguments, syntax, `messages[${i}].tool_calls[${j}]`) },
                })),
              }
            : {}),
        };
    }
  });
}

/**
 * The closing Qwen's documentation gives a thinking cut short by a budget: the model then
 * answers from what it thought so far.
 */
export const THINKING_TRANSITION =
  '\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now.\n</think>\n\n';

/** What a request asks of thinking: on or off, and a budget in tokens (null: unbounded). */
export interface ThinkingAsk {
  /** chat_template_kwargs.enable_thinking, Anthropic's thinking.type. */
  enabled?: boolean | null;
  /** vLLM's thinking_token_budget, Anthropic's thinking.budget_tokens; 0 turns thinking off. */
  budget?: number | null;
  /** OpenAI's reasoning_effort / reasoning.effort: 'none' turns thinking off, a level maps to a budget. */
  effort?: 'none' | 'minimal' | 'low' | 'medium' | 'high' | null;
}

/** What thinking a request gets: on or off, a budget (null: unbounded), and whether an effort level gave it. */
export interface ThinkingPlan {
  on: boolean;
  budget: number | null;
  fromEffort: boolean;
}

/** Thinking per request: an explicit on/off, then a budget, then an effort level, then the server default. */
export function thinkingPlan(ctx: ServingContext, ask: ThinkingAsk): ThinkingPlan {
  const fromEffort = (ask.budget === null || ask.budget === undefined) && Boolean(ask.effort) && ask.effort !== 'none';
  const budget = ask.budget ?? (fromEffort ? ctx.options.reasoningEffortBudgets[ask.effort as keyof ReasoningEffortBudgets] : null);
  let on =
    ask.enabled ??
    (ask.effort === 'none' ? false : ask.budget !== null && ask.budget !== undefined ? true : ask.effort ? true : ctx.options.defaultThinking);
  if (budget === 0) on = false;
  return { on, budget: on ? budget : null, fromEffort: on && fromEffort };
}

/**
 * The share of max_tokens that thinking from an effort level may take, its closing
 * sentence included: the answer keeps the rest (an explicit budget is taken as given).
 */
export const EFFORT_THINKING_SHARE = 0.75;

/**
 * The engine's thinking budget once max_tokens is known: an effort level's budget capped
 * to EFFORT_THINKING_SHARE of `maxTokens` (less the closing sentence), so that thinking
 * ends and the model answers instead of spending every token on thinking.
 */
export function thinkingBudgetFor(prepared: PreparedChat, maxTokens: number): PreparedChat['thinkingBudget'] {
  const b = prepared.thinkingBudget;
  if (!b || !prepared.budgetFromEffort) return b;
  const cap = Math.max(0, Math.floor(maxTokens * EFFORT_THINKING_SHARE) - b.transition.length);
  return b.tokens <= cap ? b : { ...b, tokens: cap };
}

function chatThinking(ctx: ServingContext, req: ChatRequest): ThinkingPlan {
  const kw = req.chat_template_kwargs?.enable_thinking;
  if (kw !== undefined && kw !== null && typeof kw !== 'boolean') {
    throw new InvalidRequestError('chat_template_kwargs.enable_thinking must be a boolean.', { param: 'chat_template_kwargs.enable_thinking' });
  }
  return thinkingPlan(ctx, { enabled: kw as boolean | undefined, budget: req.thinking_token_budget, effort: req.reasoning_effort });
}

export interface PreparedChat {
  promptIds: number[];
  thinking: boolean;
  toolsOn: boolean;
  /** Text the prompt puts in the assistant turn, which the output parser must see first. */
  parserPrefix: string;
  /** How the answer's tool calls are written: the template's syntax and the tools offered (their schemas type XML values). */
  toolCalls: { syntax: ToolCallSyntax; tools: ToolDefinition[] };
  /** Structured output the answer must follow, or null. */
  grammar: GrammarRequest | null;
  /** The token that ends thinking, from which the grammar applies (null: from the start). */
  grammarAfter: number | null;
  /** The engine's thinking budget (see GenerateRequest.thinkingBudget), or null; see thinkingBudgetFor. */
  thinkingBudget: { tokens: number; endId: number; transition: number[] } | null;
  /** The budget came from an effort level (capped below max_tokens), not an explicit one. */
  budgetFromEffort: boolean;
  /** What the prompt was rendered from, to render the conversation's next turn alike. */
  rendered: { messages: ChatMessage[]; options: RenderOptions };
  /** The text of the assistant message the answer continues (continue_final_message), or null. */
  continued: string | null;
}

/**
 * The assistant message a request asks the answer to continue (vLLM's
 * continue_final_message; Anthropic's prefilled final turn), or null, with what it rules out.
 */
function continuation(req: ChatRequest, grammar: GrammarRequest | null): string | null {
  if (!req.continue_final_message) return null;
  if (req.add_generation_prompt === true)
    throw new InvalidRequestError('continue_final_message and add_generation_prompt cannot both be true.', { param: 'continue_final_message' });
  const last = req.messages[req.messages.length - 1];
  if (last.role !== 'assistant' || last.tool_calls?.length)
    throw new InvalidRequestError('continue_final_message needs the last message to be an assistant message without tool calls.', {
      param: 'continue_final_message',
    });
  if (grammar) throw new InvalidRequestError(`${grammar.param} cannot shape an answer that continues a message.`, { param: grammar.param });
  const choice = req.tool_choice ?? 'auto';
  if (choice === 'required' || typeof choice === 'object')
    throw new InvalidRequestError('A forced tool call (tool_choice) cannot continue a message.', { param: 'tool_choice' });
  return textOf(last.content);
}

/** Renders the prompt (tools, thinking, forced tool calls) and tokenizes it. */
export async function prepareChat(ctx: ServingContext, req: ChatRequest): Promise<PreparedChat> {
  const grammar = grammarRequest(req);
  // With thinking on, a grammar holds the answer after the thinking block (as vLLM does
  // with a reasoning parser); a tokenizer without </think> cannot say where that is.
  const thinkEnd = ctx.tokenizer.tokenId(THINK_END_TOKEN) ?? null;
  const plan = chatThinking(ctx, req);
  const continuing = continuation(req, grammar);
  // An empty message to continue is no prefill at all: the answer is a new turn (as Anthropic's API has it).
  const continued = continuing === '' ? null : continuing;
  // A continued answer is past any thinking: it goes on with the message's text.
  let thinking = plan.on && !(grammar && thinkEnd === null) && continued === null;
  const choice = req.tool_choice ?? 'auto';
  if (grammar && (choice === 'required' || typeof choice === 'object')) {
    throw new InvalidRequestError(`${grammar.param} and a forced tool call (tool_choice) cannot both shape one answer.`, { param: grammar.param });
  }
  const tools: ToolDefinition[] = choice === 'none' ? [] : (req.tools ?? []);
  if (typeof choice === 'object' && !tools.some((t) => t.function.name === choice.function.name)) {
    throw new InvalidRequestError(`tool_choice names function '${choice.function.name}', which is not in tools.`, { param: 'tool_choice' });
  }
  if (choice === 'required' && tools.length === 0) {
    throw new InvalidRequestError('tool_choice asks for a tool call, but no tools are given.', { param: 'tool_choice' });
  }
  const extra = { ...(req.chat_template_kwargs ?? {}) };
  delete extra.enable_thinking;
  const syntax = ctx.template.toolCallSyntax;
  const messages = toTemplateMessages(continuing === '' ? req.messages.slice(0, -1) : req.messages, syntax);
  const addGenerationPrompt = continued === null && (continuing === '' || req.add_generation_prompt !== false);
  let prompt: string;
  if (continued === null) prompt = ctx.template.render(messages, { tools, enableThinking: thinking, extra, addGenerationPrompt });
  else {
    // The continued message is rendered with a stand-in for its text, cut there, and its
    // text put back as the client wrote it: searching for the text itself could land in
    // the template's own markup or in an earlier turn.
    const marker = `\u0000continue-${randomUUID()}\u0000`;
    const stand = [...messages.slice(0, -1), { ...messages[messages.length - 1], content: marker }];
    const rendered = ctx.template.render(stand, { tools, enableThinking: thinking, extra, addGenerationPrompt: false });
    const at = rendered.indexOf(marker);
    if (at < 0)
      throw new InvalidRequestError("The chat template does not write the last message's text, so it cannot be continued.", {
        param: 'continue_final_message',
      });
    prompt = rendered.slice(0, at) + continued;
  }
  // The next turn is rendered from the conversation without the message being continued (see nextTurnPrefix).
  const rendered = { messages: continued === null ? messages : messages.slice(0, -1), options: { tools, enableThinking: thinking, extra } };
  let parserPrefix = '';
  let forced: GrammarRequest | null = null;
  if (choice === 'required' || typeof choice === 'object') {
    // A forced call is opened in the prompt, after an empty thinking block (the template
    // writes one when thinking is off), and the rest is held to the function's
    // parameters by the grammar engine, so the call always parses.
    if (thinking) prompt += '<think>\n\n</think>\n\n';
    const call = forcedCall(tools, typeof choice === 'object' ? choice.function.name : null, syntax);
    parserPrefix = call.opening;
    prompt += parserPrefix;
    thinking = false;
    forced = { param: 'tools', spec: { type: 'structural_tag', format: call.format } };
  }
  if (ctx.options.logPrompts) ctx.engine.emit('prompt', prompt);
  return {
    promptIds: await ctx.codec.encode(prompt),
    thinking,
    toolsOn: tools.length > 0 && !grammar,
    parserPrefix,
    toolCalls: { syntax, tools },
    grammar: grammar ?? forced,
    grammarAfter: grammar && thinking ? thinkEnd : null,
    thinkingBudget:
      thinking && plan.budget !== null && thinkEnd !== null
        ? { tokens: plan.budget, endId: thinkEnd, transition: ctx.tokenizer.encode(THINKING_TRANSITION) }
        : null,
    budgetFromEffort: plan.fromEffort,
    rendered,
    continued,
  };
}

/**
 * The text the conversation's next prompt will begin with, once the client sends this
 * answer back with a new message: the messages so far and the answer, rendered as the
 * template renders an earlier assistant turn (Qwen3's drops its thinking), up to where
 * the next message's own content starts. Null when the template puts nothing there.
 */
export function nextTurnPrefix(
  ctx: ServingContext,
  prepared: PreparedChat,
  answer: { content: string; toolCalls: Array<{ id: string; name: string; arguments: string }> },
): string | null {
  // A stand-in for the next message, found again in the rendering and cut off with all after it.
  const marker = `\u0000next-turn-${randomUUID()}\u0000`;
  // The answer as a client sends it back, through the conversion every request's messages take.
  const [assistant] = toTemplateMessages(
    [
      {
        role: 'assistant',
        content: (prepared.continued ?? '') + answer.content,
        ...(answer.toolCalls.length > 0
          ? { tool_calls: answer.toolCalls.map((c) => ({ id: c.id, type: 'function' as const, function: { name: c.name, arguments: c.arguments } })) }
          : {}),
      },
    ],
    ctx.template.toolCallSyntax,
  );
  const text = ctx.template.render([...prepared.rendered.messages, assistant, { role: 'user', content: marker }], {
    ...prepared.rendered.options,
    addGenerationPrompt: false,
  });
  const at = text.indexOf(marker);
  return at > 0 ? text.slice(0, at) : null;
}
