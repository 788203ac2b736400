import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AppError, ContextLengthExceededError, QueueFullError } from '../errors.js';
import { toAnthropicError, toOpenAIError } from './error_envelope.js';

test('an engine fault is a 500 that keeps its code and hides its details', () => {
  const fault = new AppError(500, 'server_error', 'onnxruntime: bad alloc at layer 3', { code: 'engine_fault' });
  const openai = toOpenAIError(fault);
  assert.equal(openai.status, 500);
  assert.equal(openai.internal, true);
  assert.deepEqual(openai.body.error, {
    message: 'The server had an internal error while processing the request.',
    type: 'server_error',
    param: null,
    code: 'engine_fault',
  });
  const anthropic = toAnthropicError(fault);
  assert.deepEqual(anthropic.body, { type: 'error', error: { type: 'api_error', message: openai.body.error.message } });
  // Anything that is not an AppError has no code to give.
  assert.equal(toOpenAIError(new Error('boom')).body.error.code, null);
});

test('client errors keep status, code and field; 429s carry Retry-After in both envelopes', () => {
  const long = toOpenAIError(new ContextLengthExceededError(512, 500, 100).withParam('messages'));
  assert.equal(long.status, 400);
  assert.equal(long.body.error.code, 'context_length_exceeded');
  assert.equal(long.body.error.param, 'messages');
  const full = toAnthropicError(new QueueFullError('the queue is full', 3));
  assert.equal(full.status, 429);
  assert.equal(full.headers['retry-after'], '3');
  assert.equal(full.body.error.type, 'rate_limit_error');
});
