/**
 * One error hierarchy for the whole project. Every failure a user can cause is an
 * `AppError` with an HTTP status and an OpenAI error `type`/`code`; the HTTP layer maps
 * them to the OpenAI envelope in one place, the CLI prints `message` and exits. Layers
 * below serving throw codes, never request fields: `requestFieldOf` in
 * src/serving/request.ts names the field a code is about.
 * Anything that is not an AppError is an internal fault (HTTP 500).
 */
export interface ErrorDetails {
  param?: string | null;
  code?: string | null;
  /** Seconds a client should wait before retrying (429/503). */
  retryAfter?: number;
}

export class AppError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfter: number | undefined;

  constructor(status: number, type: string, message: string, details: ErrorDetails = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.param = details.param ?? null;
    this.code = details.code ?? null;
    this.retryAfter = details.retryAfter;
  }

  /** This error, naming the request field it is about (the serving layer maps codes to fields). */
  withParam(param: string, message: string = this.message): this {
    return Object.assign(Object.create(Object.getPrototypeOf(this) as object) as this, this, { param, message, stack: this.stack });
  }
}

/** The request is malformed or asks for something impossible (HTTP 400). */
export class InvalidRequestError extends AppError {
  constructor(message: string, details: ErrorDetails = {}) {
    super(400, 'invalid_request_error', message, details);
  }
}

/** Prompt plus completion exceed the model's context; the one wording names both numbers. */
export class ContextLengthExceededError extends InvalidRequestError {
  constructor(limit: number, promptTokens: number, completionTokens: number) {
    super(
      `This model's maximum context length is ${limit} tokens. However, you requested ${promptTokens + completionTokens} tokens (${promptTokens} in the prompt, ${completionTokens} for the completion). Please reduce the length of the prompt or of the completion.`,
      { code: 'context_length_exceeded' },
    );
  }
}

export class AuthenticationError extends AppError {
  constructor(message = 'Invalid or missing API key.') {
    super(401, 'authentication_error', message, { code: 'invalid_api_key' });
  }
}

export class NotFoundError extends AppError {
  constructor(message: string, details: ErrorDetails = {}) {
    super(404, 'not_found_error', message, details);
  }
}

export class PayloadTooLargeError extends AppError {
  constructor(message: string) {
    super(413, 'invalid_request_error', message, { code: 'payload_too_large' });
  }
}

/** The waiting queue is full: the client should retry later (HTTP 429). */
export class QueueFullError extends AppError {
  constructor(message: string, retryAfter = 1) {
    super(429, 'rate_limit_error', message, { code: 'queue_full', retryAfter });
  }
}

/** An API key's limits, by the keys file's names for them. */
export type KeyLimitName = 'max_concurrent' | 'max_queued' | 'tokens_per_minute';

/**
 * An API key reached one of its own limits (HTTP 429, OpenAI's `rate_limit_exceeded`):
 * `limit` names which, and the message says so in words.
 */
export class KeyLimitError extends AppError {
  constructor(
    message: string,
    readonly limit: KeyLimitName,
    retryAfter = 1,
  ) {
    // The limit's name rides in `param`: machine-readable, and it survives the worker's messages.
    super(429, 'rate_limit_error', message, { code: 'rate_limit_exceeded', param: limit, retryAfter });
  }
}

/** The engine is loading, restarting or shutting down (HTTP 503). */
export class ServiceUnavailableError extends AppError {
  constructor(message: string, retryAfter = 5) {
    super(503, 'service_unavailable', message, { code: 'service_unavailable', retryAfter });
  }
}

/** A request was aborted (client went away, shutdown deadline). */
export class AbortedError extends AppError {
  constructor(message = 'The request was aborted.') {
    super(499, 'aborted', message, { code: 'aborted' });
  }
}

/**
 * A model checkpoint or export directory is unusable: bad config, missing tensor,
 * truncated file. Raised by the exporter and the loader; the CLI exits with it.
 */
export class ModelFormatError extends AppError {
  constructor(message: string) {
    super(500, 'model_error', message, { code: 'model_format' });
  }
}

/** A command-line or environment setting is invalid (the CLI exits with code 2). */
export class ConfigError extends AppError {
  constructor(message: string) {
    super(400, 'config_error', message, { code: 'invalid_config' });
  }
}
