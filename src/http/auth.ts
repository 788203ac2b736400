import { timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { AuthenticationError } from '../errors.js';

/** Routes open without an API key: probes and scrapers have no token. */
const OPEN_PATHS = new Set(['/health', '/live', '/metrics']);

function sameKey(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * An onRequest hook: with an API key set, every route but the open ones needs it, as
 * `Authorization: Bearer <key>` (OpenAI's clients) or `x-api-key: <key>` (Anthropic's).
 */
export function requireApiKey(apiKey: string | null) {
  return async (request: FastifyRequest): Promise<void> => {
    const path = request.url.split('?')[0];
    // The chat page is open too: it asks for the key itself, and sends it with each API call.
    if (!apiKey || OPEN_PATHS.has(path) || path === '/' || path.startsWith('/ui/') || request.method === 'OPTIONS') return;
    const auth = request.headers.authorization ?? '';
    const xKey = request.headers['x-api-key'];
    const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : typeof xKey === 'string' ? xKey.trim() : '';
    if (!token || !sameKey(token, apiKey)) throw new AuthenticationError();
  };
}
