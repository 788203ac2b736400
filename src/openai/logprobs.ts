import type { EngineEvent, TokenLogprob } from '../engine/types.js';
import type { ServingContext } from '../serving/context.js';

// One decoder for all logprob token names: this runs up to 21 times per generated token.
const utf8 = new TextDecoder();

/** How a token is named in logprobs: its text, or `token_id:N` when asked (byte pieces never collide). */
export function tokenName(ctx: ServingContext, id: number, asIds: boolean): { token: string; bytes: number[] } {
  const bytes = ctx.tokenizer.tokenBytes(id) ?? new Uint8Array();
  return { token: asIds ? `token_id:${id}` : utf8.decode(bytes), bytes: Array.from(bytes) };
}

/** OpenAI chat `logprobs.content` entries. */
export function chatLogprobs(ctx: ServingContext, lps: TokenLogprob[], asIds: boolean) {
  return lps.map((lp) => ({
    ...tokenName(ctx, lp.token, asIds),
    logprob: lp.logprob,
    top_logprobs: lp.top.map((t) => ({ ...tokenName(ctx, t.token, asIds), logprob: t.logprob })),
  }));
}

/**
 * vLLM's `prompt_logprobs`: per prompt token, null for the first, else its own entry and
 * the `n` most likely, keyed by token id, each with its log-probability, 1-based rank
 * and text.
 */
export function vllmPromptLogprobs(ctx: ServingContext, scores: Array<TokenLogprob | null>, n: number) {
  return scores.map((lp) => {
    if (!lp) return null;
    const entry = (token: number, logprob: number, rank: number | null) => ({ logprob, rank, decoded_token: tokenName(ctx, token, false).token });
    const out: Record<string, ReturnType<typeof entry>> = {};
    lp.top.slice(0, n).forEach((t, i) => (out[t.token] = entry(t.token, t.logprob, i + 1)));
    out[lp.token] = entry(lp.token, lp.logprob, lp.rank ?? null);
    return out;
  });
}

/** A token in a legacy logprobs object: its id, and its scores (null for a prompt's first token). */
export interface ScoredToken {
  id: number;
  lp: TokenLogprob | null;
}

/** The legacy completions `logprobs` object for some tokens, text offsets from `textOffset`. */
export function legacyLogprobs(ctx: ServingContext, tokens: ScoredToken[], asIds: boolean, textOffset: number) {
  const out = {
    tokens: [] as string[],
    token_logprobs: [] as Array<number | null>,
    top_logprobs: [] as Array<Record<string, number> | null>,
    text_offset: [] as number[],
  };
  let offset = textOffset;
  for (const { id, lp } of tokens) {
    const name = tokenName(ctx, id, asIds).token;
    out.tokens.push(name);
    out.token_logprobs.push(lp ? lp.logprob : null);
    let top: Record<string, number> | null = null;
    if (lp) {
      top = {};
      for (const t of lp.top) top[tokenName(ctx, t.token, asIds).token] = t.logprob;
      top[name] = lp.logprob;
    }
    out.top_logprobs.push(top);
    out.text_offset.push(offset);
    // Offsets index the text, whatever the tokens are named.
    offset += asIds ? tokenName(ctx, id, false).token.length : name.length;
  }
  return out;
}

export const generated = (lps: TokenLogprob[]): ScoredToken[] => lps.map((lp) => ({ id: lp.token, lp }));

/**
 * The prompt's tokens with their scores, as the first event of a request carries them,
 * `n` alternatives each (the engine may have kept more, for prompt_logprobs).
 */
export function promptScores(promptIds: number[], ev: EngineEvent, n: number): ScoredToken[] {
  return promptIds.map((id, i) => {
    const lp = ev.promptLogprobs?.[i] ?? null;
    return { id, lp: lp && { ...lp, top: lp.top.slice(0, n) } };
  });
}
