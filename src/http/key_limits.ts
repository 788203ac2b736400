import { AbortedError, KeyLimitError } from '../errors.js';
import type { ApiKey } from './api_keys.js';

const WINDOW_MS = 60_000;

/** OpenAI's duration format in its x-ratelimit-reset-* headers: `20ms`, `1.5s`, `6m0s`. */
export function resetText(ms: number): string {
  const t = Math.max(0, Math.ceil(ms));
  if (t < 1000) return `${t}ms`;
  if (t < 60_000) return `${Number((t / 1000).toFixed(3))}s`;
  return `${Math.floor(t / 60_000)}m${Math.round((t % 60_000) / 1000)}s`;
}

/** One key's use: requests in flight, and the tokens of the last minute as (time, tokens) in time order. */
interface Use {
  inFlight: number;
  tokens: Array<{ at: number; n: number }>;
  sum: number;
  /** Across models (a server of several): requests passed on to their model, and those waiting for one of max_concurrent, oldest first. */
  admitted: number;
  gate: Array<{ go(): void; drop(): void }>;
}

/** What the rate-limit headers say of a key's requests and tokens. */
export interface KeyLimitState {
  requests: { limit: number; remaining: number } | null;
  tokens: { limit: number; remaining: number; resetMs: number } | null;
}

/**
 * Per-key accounting on the HTTP side: requests in flight (for the headers; the engine's
 * scheduler enforces max_concurrent and max_queued) and the tokens of the last 60 s, which
 * tokens_per_minute bounds: a request that comes while the key's last minute holds its
 * limit is refused (429) until enough of those tokens are a minute old.
 *
 * In a server of several models (`acrossModels`) each engine bounds only the requests it
 * runs, so max_concurrent and max_queued are kept here too, for all the models together:
 * a key spreading its requests over N models gets its limits once, not N times.
 */
export class KeyLimiter {
  private readonly uses = new Map<string, Use>();

  constructor(
    /** The server's batch and queue bounds, which stand in for a limit the key does not set. */
    private readonly server: { maxNumSeqs: number; maxQueue: number; acrossModels?: boolean },
    private readonly now: () => number = () => Date.now(),
  ) {}

  private use(name: string): Use {
    let u = this.uses.get(name);
    if (!u) {
      u = { inFlight: 0, tokens: [], sum: 0, admitted: 0, gate: [] };
      this.uses.set(name, u);
    }
    const cutoff = this.now() - WINDOW_MS;
    while (u.tokens.length > 0 && u.tokens[0].at <= cutoff) u.sum -= u.tokens.shift()!.n;
    return u;
  }

  /**
   * Counts a request of `key` until `onDone` calls back; throws the 429 when the key's
   * tokens of the last minute reached its tokens_per_minute, or (across models) when its
   * requests in flight reached max_concurrent + max_queued. Resolves once the request may
   * go on to its model: across models, while the key has max_concurrent requests there, it
   * waits (first come, first served); elsewhere at once (the engine keeps max_concurrent).
   */
  begin(key: ApiKey, onDone: (cb: () => void) => void): Promise<void> {
    const u = this.tokensChecked(key);
    const limit = this.requestsLimit(key);
    const { maxConcurrent, maxQueued } = key.limits;
    const gated = this.server.acrossModels === true && maxConcurrent !== null;
    if (this.server.acrossModels && limit !== null && u.inFlight >= limit) {
      throw new KeyLimitError(
        `Rate limit reached for API key '${key.name}': max_queued ${maxQueued ?? this.server.maxQueue} (it has ${u.inFlight} requests in flight across this server's models${maxConcurrent !== null ? `, max_concurrent ${maxConcurrent}` : ''}). Retry shortly.`,
        'max_queued',
      );
    }
    u.inFlight++;
    return new Promise((resolve, reject) => {
      let admitted = false;
      const waiter = {
        go: () => {
          admitted = true;
          u.admitted++;
          resolve();
        },
        // Gone while it waited (the client left): it never reaches its model.
        drop: () => reject(new AbortedError()),
      };
      onDone(() => {
        u.inFlight--;
        if (!gated) return;
        if (!admitted) {
          const at = u.gate.indexOf(waiter);
          if (at >= 0) u.gate.splice(at, 1);
          waiter.drop();
          return;
        }
        u.admitted--;
        // The freed place goes to the oldest request waiting for one.
        if (u.admitted < maxConcurrent) u.gate.shift()?.go();
      });
      if (!gated) resolve();
      else if (u.admitted < maxConcurrent && u.gate.length === 0) waiter.go();
      else u.gate.push(waiter);
    });
  }

  /** Throws the 429 when the key's tokens of the last minute reached its tokens_per_minute. */
  checkTokens(key: ApiKey): void {
    this.tokensChecked(key);
  }

  private tokensChecked(key: ApiKey): Use {
    const u = this.use(key.name);
    const tpm = key.limits.tokensPerMinute;
    if (tpm !== null && u.sum >= tpm) {
      const wait = this.tokensResetMs(u, tpm);
      throw new KeyLimitError(
        `Rate limit reached for API key '${key.name}': tokens_per_minute ${tpm} (used ${u.sum} in the last minute). Retry in ${resetText(wait)}.`,
        'tokens_per_minute',
        Math.max(1, Math.ceil(wait / 1000)),
      );
    }
    return u;
  }

  /** The key's requests in flight at most (max_concurrent + max_queued, the server's bounds for one not set); null without either. */
  private requestsLimit(key: ApiKey): number | null {
    const { maxConcurrent, maxQueued } = key.limits;
    if (maxConcurrent === null && maxQueued === null) return null;
    return (maxConcurrent ?? this.server.maxNumSeqs) + (maxQueued ?? this.server.maxQueue);
  }

  /** Records tokens a request of `name` used (prompt and generated). */
  record(name: string, tokens: number): void {
    if (tokens <= 0) return;
    const u = this.use(name);
    u.tokens.push({ at: this.now(), n: tokens });
    u.sum += tokens;
  }

  /** Milliseconds until the key's window holds less than `limit` tokens. */
  private tokensResetMs(u: Use, limit: number): number {
    let sum = u.sum;
    for (const t of u.tokens) {
      if (sum < limit) break;
      sum -= t.n;
      if (sum < limit) return t.at + WINDOW_MS - this.now();
    }
    return 0;
  }

  /** What the key's limits and use are now, for the rate-limit headers; null parts for limits it does not have. */
  state(key: ApiKey): KeyLimitState {
    const u = this.use(key.name);
    const { tokensPerMinute } = key.limits;
    const limit = this.requestsLimit(key);
    const requests = limit === null ? null : { limit, remaining: Math.max(0, limit - u.inFlight) };
    const tokens =
      tokensPerMinute === null
        ? null
        : {
            limit: tokensPerMinute,
            remaining: Math.max(0, tokensPerMinute - u.sum),
            // Until the window is empty again: its newest tokens are a minute old.
            resetMs: u.tokens.length > 0 ? u.tokens[u.tokens.length - 1].at + WINDOW_MS - this.now() : 0,
          };
    return { requests, tokens };
  }
}

/** OpenAI's x-ratelimit-* headers for a key's state (the reset of requests: 0s while one is left, else 1s, when a running one may end). */
export function openAIRateHeaders(s: KeyLimitState): Record<string, string> {
  const out: Record<string, string> = {};
  if (s.requests) {
    out['x-ratelimit-limit-requests'] = String(s.requests.limit);
    out['x-ratelimit-remaining-requests'] = String(s.requests.remaining);
    out['x-ratelimit-reset-requests'] = s.requests.remaining > 0 ? '0s' : '1s';
  }
  if (s.tokens) {
    out['x-ratelimit-limit-tokens'] = String(s.tokens.limit);
    out['x-ratelimit-remaining-tokens'] = String(s.tokens.remaining);
    out['x-ratelimit-reset-tokens'] = resetText(s.tokens.resetMs);
  }
  return out;
}

/** Anthropic's anthropic-ratelimit-* headers for the same state (resets as RFC 3339 times). */
export function anthropicRateHeaders(s: KeyLimitState, now = Date.now()): Record<string, string> {
  const out: Record<string, string> = {};
  const at = (ms: number) => new Date(now + Math.max(0, ms)).toISOString().replace(/\.\d{3}Z$/, 'Z');
  if (s.requests) {
    out['anthropic-ratelimit-requests-limit'] = String(s.requests.limit);
    out['anthropic-ratelimit-requests-remaining'] = String(s.requests.remaining);
    out['anthropic-ratelimit-requests-reset'] = at(s.requests.remaining > 0 ? 0 : 1000);
  }
  if (s.tokens) {
    out['anthropic-ratelimit-tokens-limit'] = String(s.tokens.limit);
    out['anthropic-ratelimit-tokens-remaining'] = String(s.tokens.remaining);
    out['anthropic-ratelimit-tokens-reset'] = at(s.tokens.resetMs);
  }
  return out;
}
