import type { TenantLimits } from '../engine/types.js';

/** Who sent a request, as the HTTP layer found it from the API key: plain data for the serving layer. */
export interface Caller {
  /** The API key's name (`default` for --api-key), or null when the server needs no key. */
  key: string | null;
  /** The key's name and bounds for the engine's scheduler (which admits round robin over keys), or null without a key. */
  limits: TenantLimits | null;
  /** The prefix cache scope the key gives: its name under --prefix-cache-scope key, null when shared. */
  cacheScope: string | null;
}

/** A request to a server without keys. */
export const ANONYMOUS: Caller = { key: null, limits: null, cacheScope: null };

/**
 * The engine's prefix-cache salt for a request (GenerateRequest.cacheSalt): the key's
 * scope and the request's own `cache_salt` together, so blocks are shared only between
 * requests that have both alike; null (no salt) when neither is set, as before keys existed.
 */
export function cacheSalt(caller: Caller, salt: string | null | undefined): string | null {
  const own = salt ?? null;
  if (caller.cacheScope === null && own === null) return null;
  return JSON.stringify({ scope: caller.cacheScope, salt: own });
}
