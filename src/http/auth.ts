import type { FastifyRequest } from 'fastify';
import { AuthenticationError } from '../errors.js';
import type { ApiKey, Keyring } from './api_keys.js';

/** Routes open without an API key: probes and scrapers have no token. */
const OPEN_PATHS = new Set(['/health', '/live', '/metrics']);

/** `Bearer <token>`, the scheme in any case (RFC 7235) and any spaces after it. */
const BEARER = /^bearer +(.*)$/i;

/** The key a request presents: `Authorization: Bearer <key>` (OpenAI's clients) or `x-api-key: <key>` (Anthropic's). */
export function presentedKey(headers: FastifyRequest['headers']): string {
  const bearer = BEARER.exec(headers.authorization ?? '');
  const xKey = headers['x-api-key'];
  return bearer ? bearer[1].trim() : typeof xKey === 'string' ? xKey.trim() : '';
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
    const token = presentedKey(request.headers);
    const key = token ? keys.match(token) : null;
    if (!key) throw new AuthenticationError();
    return key;
  };
}
