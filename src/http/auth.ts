import type { FastifyRequest } from 'fastify';
import { AuthenticationError } from '../errors.js';
import type { ApiKey, Keyring } from './api_keys.js';

/** Routes open without an API key: probes and scrapers have no token. */
const OPEN_PATHS = new Set(['/health', '/live', '/metrics']);

/** The key a request presents: `Authorization: Bearer <key>` (OpenAI's clients) or `x-api-key: <key>` (Anthropic's). */
function presented(request: FastifyRequest): string {
  const auth = request.headers.authorization ?? '';
  const xKey = request.headers['x-api-key'];
  return auth.startsWith('Bearer ') ? auth.slice(7).trim() : typeof xKey === 'string' ? xKey.trim() : '';
}

/**
 * An onRequest check: with keys configured, every route but the open ones needs one of
 * them. Returns the key the request came with (null on open routes, or when the server
 * needs none); a missing or unknown key is a 401.
 */
export function requireApiKey(keys: Keyring) {
  return (request: FastifyRequest): ApiKey | null => {
    const path = request.url.split('?')[0];
    // The chat page is open too: it asks for the key itself, and sends it with each API call.
    if (!keys.enabled || OPEN_PATHS.has(path) || path === '/' || path.startsWith('/ui/') || request.method === 'OPTIONS') return null;
    const token = presented(request);
    const key = token ? keys.match(token) : null;
    if (!key) throw new AuthenticationError();
    return key;
  };
}
