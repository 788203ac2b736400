import { ANONYMOUS, type Caller } from './caller.js';
import { ChatChoice, type ChatDelta } from './chat_choice.js';
import { nextTurnPrefix, type PreparedChat, prepareChat, THINK_END_TOKEN, thinkingBudgetFor } from './chat_prompt.js';
import type { ChatRequest } from './chat_request.js';
import type { ServingContext } from './context.js';
import { engineRequest, resolveMaxTokens, samplingParams, submitAll } from './request.js';

/**
 * One chat generation, whichever API asked for it: the prompt rendered, `n` engine
 * requests queued (refusals throw here, before any output), and each choice's events read
 * into a ChatChoice. The Chat Completions, Responses and Messages APIs are translations
 * to and from this.
 */
export interface ChatSession {
  prepared: PreparedChat;
  choices: ChatChoice[];
  /** Reads choice `i`'s events to their end, passing each delta on. */
  run(i: number, onDelta?: (c: ChatChoice, d: ChatDelta) => void): Promise<void>;
  /** Reads every choice to its end. */
  runAll(onDelta?: (c: ChatChoice, d: ChatDelta) => void): Promise<void>;
  usage(): { promptTokens: number; completionTokens: number; reasoningTokens: number; cachedTokens: number };
}

/**
 * Has the engine compute, while idle, the prefix cache's blocks of the conversation's next
 * prompt: the template renders this answer there at other positions than it was generated
 * at (and without its thinking), so without this the next turn computes it again.
 */
function warmNextTurn(ctx: ServingContext, prepared: PreparedChat, choice: ChatChoice, salt: string | null): void {
  let text: string | null;
  try {
    text = nextTurnPrefix(ctx, prepared, choice);
  } catch {
    // A template that rejects the conversation with this answer has no next turn to warm.
    return;
  }
  if (text === null) return;
  ctx.codec.encodeInBackground(text).then(
    (ids) => ctx.engine.warm(ids, salt),
    () => {},
  );
}

export async function startChat(ctx: ServingContext, req: ChatRequest, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<ChatSession> {
  const prepared = await prepareChat(ctx, req);
  const maxTokens = resolveMaxTokens(ctx, prepared.promptIds.length, req.max_completion_tokens ?? req.max_tokens);
  const n = req.n ?? 1;
  const topLogprobs = req.logprobs ? (req.top_logprobs ?? 0) : null;
  const requests = Array.from({ length: n }, (_, i) => ({
    ...engineRequest(ctx, prepared.promptIds, samplingParams(ctx, req, topLogprobs, i), maxTokens, req, caller),
    grammar: prepared.grammar,
    grammarAfter: prepared.grammarAfter,
    thinkingBudget: thinkingBudgetFor(prepared, maxTokens),
    // The prompt is the same for every choice: the first scores it.
    promptLogprobs: i === 0 ? (req.prompt_logprobs ?? null) : null,
  }));
  const streams = await submitAll(ctx, requests, signal);
  const thinkEndId = ctx.tokenizer.tokenId(THINK_END_TOKEN);
  const choices = requests.map((_, i) => new ChatChoice(i, prepared, thinkEndId));
  // Prompt tokens served from the prefix cache. The prompt is counted once, as the first
  // choice ran it (the others share its blocks).
  let cachedTokens = 0;
  const run = async (i: number, onDelta?: (c: ChatChoice, d: ChatDelta) => void) => {
    const c = choices[i];
    for await (const ev of streams[i]) {
      if (i === 0 && ev.cachedTokens !== undefined) cachedTokens = ev.cachedTokens;
      const d = c.push(ev);
      onDelta?.(c, d);
      if (ev.finishReason && ev.metrics) {
        ctx.observe(ev.metrics, ev.finishReason, caller.key);
        if (i === 0) cachedTokens = ev.metrics.cachedTokens;
      }
    }
    if (n === 1 && ctx.options.warmNextTurn && (c.finishReason === 'stop' || c.finishReason === 'length' || c.finishReason === 'tool_calls')) {
      warmNextTurn(ctx, prepared, c, requests[0].cacheSalt ?? null);
    }
  };
  return {
    prepared,
    choices,
    run,
    runAll: async (onDelta) => {
      await Promise.all(choices.map((_, i) => run(i, onDelta)));
    },
    usage: () => ({
      promptTokens: prepared.promptIds.length,
      completionTokens: choices.reduce((s, c) => s + c.completionTokens, 0),
      reasoningTokens: choices.reduce((s, c) => s + c.reasoningTokens, 0),
      cachedTokens,
    }),
  };
}
