import { AppError } from '../errors.js';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface MappedError {
  status: number;
  body: OpenAIErrorBody;
  headers: Record<string, string>;
  /** True for a fault of ours (logged as an error, not a client mistake). */
  internal: boolean;
}

/** Fastify's own client errors, by their codes. */
const FASTIFY_CLIENT_ERRORS: Record<string, { status: number; code: string; message?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: 'payload_too_large', message: 'Request body is too large.' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { status: 415, code: 'unsupported_media_type', message: 'Send the body as application/json.' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, code: 'invalid_json', message: 'The request body is empty; expected JSON.' },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: 'invalid_json' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, code: 'invalid_content_length' },
  FST_ERR_CTP_INVALID_CHARSET: { status: 415, code: 'unsupported_media_type' },
};

/**
 * The one place where errors become OpenAI's envelope
 * `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
 */
export function toOpenAIError(err: unknown): MappedError {
  if (err instanceof AppError && err.status < 500) {
    const headers: Record<string, string> = {};
    if (err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
    return { status: err.status === 499 ? 400 : err.status, body: { error: { message: err.message, type: err.type, param: err.param, code: err.code } }, headers, internal: false };
  }
  if (err instanceof AppError && (err.status === 503 || err.status === 429)) {
    return {
      status: err.status,
      body: { error: { message: err.message, type: err.type, param: err.param, code: err.code } },
      headers: err.retryAfter !== undefined ? { 'retry-after': String(err.retryAfter) } : {},
      internal: false,
    };
  }
  const e = err as { code?: string; statusCode?: number; message?: string } | null;
  const known = e?.code ? FASTIFY_CLIENT_ERRORS[e.code] : undefined;
  if (known) {
    return {
      status: known.status,
      body: { error: { message: known.message ?? e?.message ?? 'Bad request.', type: 'invalid_request_error', param: null, code: known.code } },
      headers: {},
      internal: false,
    };
  }
  // Malformed JSON (a SyntaxError from the parser) and other 4xx errors Fastify raised.
  if (err instanceof SyntaxError || (e?.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500)) {
    return {
      status: e?.statusCode && e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 400,
      body: { error: { message: `Invalid request: ${e?.message ?? 'malformed body'}`, type: 'invalid_request_error', param: null, code: 'invalid_json' } },
      headers: {},
      internal: false,
    };
  }
  return {
    status: 500,
    body: { error: { message: 'The server had an internal error while processing the request.', type: 'internal_error', param: null, code: null } },
    headers: {},
    internal: true,
  };
}
