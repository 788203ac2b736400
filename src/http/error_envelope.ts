import { AppError } from '../errors.js';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface AnthropicErrorBody {
  type: 'error';
  error: { type: string; message: string };
}

export interface MappedError<B = OpenAIErrorBody> {
  status: number;
  body: B;
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
    return {
      status: err.status === 499 ? 400 : err.status,
      body: { error: { message: err.message, type: err.type, param: err.param, code: err.code } },
      headers,
      internal: false,
    };
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
      body: {
        error: { message: `Invalid request: ${e?.message ?? 'malformed body'}`, type: 'invalid_request_error', param: null, code: 'invalid_json' },
      },
      headers: {},
      internal: false,
    };
  }
  // The details stay in the log; the client learns the kind of fault from the code.
  return {
    status: 500,
    body: {
      error: {
        message: 'The server had an internal error while processing the request.',
        type: 'server_error',
        param: null,
        code: err instanceof AppError ? err.code : null,
      },
    },
    headers: {},
    internal: true,
  };
}

/** Fastify's routing errors (frameworkErrors), in the envelope. */
export function frameworkError(err: { code?: string; message: string }): MappedError {
  const known: Record<string, { status: number; code: string; message: string }> = {
    FST_ERR_BAD_URL: { status: 400, code: 'invalid_url', message: 'The URL is not valid (a path component does not decode).' },
    FST_ERR_MAX_PARAM_LENGTH: { status: 414, code: 'uri_too_long', message: 'A path component of the URL is too long.' },
  };
  const k = err.code ? known[err.code] : undefined;
  if (k)
    return {
      status: k.status,
      body: { error: { message: k.message, type: 'invalid_request_error', param: null, code: k.code } },
      headers: {},
      internal: false,
    };
  return toOpenAIError(err);
}

/** Node's parser and timer errors, by code: status and what to tell the client. */
const NODE_CLIENT_ERRORS: Record<string, { status: number; code: string; message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: {
    status: 408,
    code: 'request_timeout',
    message: "The request was not received in time (the server's --request-timeout).",
  },
  ERR_HTTP_HEADERS_TIMEOUT: {
    status: 408,
    code: 'request_timeout',
    message: "The request headers were not received in time (the server's --headers-timeout).",
  },
  HPE_HEADER_OVERFLOW: { status: 431, code: 'headers_too_large', message: 'The request headers are too large.' },
  HPE_URI_TOO_LONG: { status: 414, code: 'uri_too_long', message: 'The URL is too long.' },
};

const REASONS: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 414: 'URI Too Long', 431: 'Request Header Fields Too Large' };

/**
 * A whole HTTP response for an error Node raised before Fastify saw a request (no
 * reply object exists yet), in the envelope and with a request id.
 */
export function clientErrorResponse(err: { code?: string }, requestId: string): string {
  const k = (err.code && NODE_CLIENT_ERRORS[err.code]) || { status: 400, code: 'bad_request', message: 'The request is not valid HTTP.' };
  const body = JSON.stringify({ error: { message: k.message, type: 'invalid_request_error', param: null, code: k.code } });
  return (
    `HTTP/1.1 ${k.status} ${REASONS[k.status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `x-request-id: ${requestId}\r\nConnection: close\r\n\r\n${body}`
  );
}

/** Anthropic's error types by HTTP status. */
const ANTHROPIC_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  503: 'overloaded_error',
};

/**
 * The same errors in Anthropic's envelope `{"type": "error", "error": {"type", "message"}}`,
 * for the Messages API: same statuses and headers, Anthropic's type names.
 */
export function toAnthropicError(err: unknown): MappedError<AnthropicErrorBody> {
  const m = toOpenAIError(err);
  const type = ANTHROPIC_TYPES[m.status] ?? (m.status >= 500 ? 'api_error' : 'invalid_request_error');
  return { ...m, body: { type: 'error', error: { type, message: m.body.error.message } } };
}
