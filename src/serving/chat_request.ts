import { z } from 'zod';

/**
 * The chat request every protocol becomes: Chat Completions' body with vLLM's extensions,
 * which the Responses and Anthropic translations build and the chat session takes. Unknown
 * fields are ignored (as vLLM does), known ones are checked strictly: a bad value is a
 * 400 naming the parameter.
 */

const contentPart = z
  .object({ type: z.string(), text: z.unknown().optional() })
  .passthrough()
  .superRefine((p, c) => {
    if (p.type !== 'text')
      c.addIssue({ code: 'custom', path: ['type'], message: `content parts of type '${p.type}' are not supported; only 'text' is` });
    else if (typeof p.text !== 'string') c.addIssue({ code: 'custom', path: ['text'], message: 'a text part needs a string `text`' });
  })
  .transform((p) => ({ type: 'text' as const, text: p.text as string }));
const content = z.union([z.string(), z.array(contentPart)]);

const toolCall = z.object({
  id: z.string().optional(),
  type: z.literal('function').default('function'),
  function: z.object({ name: z.string(), arguments: z.union([z.string(), z.record(z.string(), z.unknown())]) }),
});

export const messageSchema = z.discriminatedUnion('role', [
  z.object({ role: z.literal('system'), content, name: z.string().optional() }),
  z.object({ role: z.literal('developer'), content, name: z.string().optional() }),
  z.object({ role: z.literal('user'), content, name: z.string().optional() }),
  z.object({
    role: z.literal('assistant'),
    content: content.nullable().optional(),
    reasoning_content: z.string().nullable().optional(),
    tool_calls: z.array(toolCall).optional(),
    name: z.string().optional(),
  }),
  z.object({ role: z.literal('tool'), content, tool_call_id: z.string().optional() }),
]);

export type MessageInput = z.infer<typeof messageSchema>;

export const toolSchema = z.object({
  type: z.literal('function'),
  function: z.object({
    name: z.string().min(1).max(256),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
    strict: z.boolean().nullable().optional(),
  }),
});

const toolChoice = z.union([
  z.enum(['none', 'auto', 'required']),
  z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) }),
]);

const stop = z
  .union([z.string(), z.array(z.string()).max(16)])
  .nullable()
  .optional();

const logitBias = z.record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100)).nullable().optional();

const jsonSchemaObject = z.record(z.string(), z.unknown());

/** OpenAI's `response_format`: free text, any JSON object, or JSON following a schema. */
const responseFormat = z
  .discriminatedUnion('type', [
    z.object({ type: z.literal('text') }),
    z.object({ type: z.literal('json_object') }),
    z.object({
      type: z.literal('json_schema'),
      json_schema: z.object({
        name: z.string().max(256).optional(),
        description: z.string().optional(),
        schema: jsonSchemaObject.optional(),
        strict: z.boolean().nullable().optional(),
      }),
    }),
  ])
  .nullable()
  .optional();

/**
 * Structured outputs: OpenAI's `response_format`, and vLLM's in its newer spelling
 * (`structured_outputs`) and its older one (`guided_*`).
 */
const structuredFields = {
  response_format: responseFormat,
  guided_json: z.union([z.string(), jsonSchemaObject]).nullable().optional(),
  guided_choice: z.array(z.string().min(1)).min(1).max(1024).nullable().optional(),
  guided_grammar: z.string().min(1).nullable().optional(),
  guided_regex: z.string().nullable().optional(),
  structured_outputs: z
    .object({
      json: z.union([z.string(), jsonSchemaObject]).nullable().optional(),
      choice: z.array(z.string().min(1)).min(1).max(1024).nullable().optional(),
      grammar: z.string().min(1).nullable().optional(),
      regex: z.string().nullable().optional(),
    })
    .nullable()
    .optional(),
};

export type StructuredFields = { [K in keyof typeof structuredFields]?: z.infer<(typeof structuredFields)[K]> };

/** vLLM's rule: prompt log-probabilities come in the whole response, not in a stream. */
export function promptLogprobsNotStreamed(r: { stream?: boolean | null; prompt_logprobs?: number | null }, ctx: z.RefinementCtx): void {
  if (r.stream && r.prompt_logprobs != null && r.prompt_logprobs > 0) {
    ctx.addIssue({ code: 'custom', path: ['prompt_logprobs'], message: 'prompt_logprobs are not available when stream is true' });
  }
}

/** Sampling and limits shared by both endpoints. */
export const samplingFields = {
  ...structuredFields,
  model: z.string().optional(),
  max_tokens: z.number().int().min(1).max(1_000_000).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  top_k: z.number().int().min(-1).max(1_000_000).nullable().optional(),
  min_p: z.number().min(0).max(1).nullable().optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  repetition_penalty: z.number().gt(0).max(10).nullable().optional(),
  stop,
  stop_token_ids: z.array(z.number().int().min(0)).max(64).nullable().optional(),
  seed: z
    .number()
    .int()
    .min(-(2 ** 53))
    .max(2 ** 53)
    .nullable()
    .optional(),
  n: z.number().int().min(1).max(16).nullable().optional(),
  logit_bias: logitBias,
  user: z.string().max(512).optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().nullable().optional() }).nullable().optional(),
  ignore_eos: z.boolean().optional(),
  /** vLLM's: the stop string that ended the text is kept at its end. */
  include_stop_str_in_output: z.boolean().nullable().optional(),
  skip_special_tokens: z.boolean().optional(),
  return_tokens_as_token_ids: z.boolean().optional(),
  prompt_logprobs: z.number().int().min(0).max(20).nullable().optional(),
  /** vLLM's prefix-cache salt (blocks are shared only between requests with the same salt). */
  cache_salt: z.string().min(1, 'must be a non-empty string').max(1024).nullable().optional(),
};

export const chatRequestSchema = z
  .object({
    ...samplingFields,
    messages: z.array(messageSchema).min(1, 'at least one message is required').max(4096),
    max_completion_tokens: z.number().int().min(1).max(1_000_000).nullable().optional(),
    logprobs: z.boolean().nullable().optional(),
    top_logprobs: z.number().int().min(0).max(20).nullable().optional(),
    tools: z.array(toolSchema).max(128).nullable().optional(),
    tool_choice: toolChoice.nullable().optional(),
    parallel_tool_calls: z.boolean().nullable().optional(),
    chat_template_kwargs: z.record(z.string(), z.unknown()).nullable().optional(),
    reasoning_effort: z.enum(['none', 'minimal', 'low', 'medium', 'high']).nullable().optional(),
    /** vLLM's bound on thinking tokens (0: thinking off). */
    thinking_token_budget: z.number().int().min(0).max(10_000_000).nullable().optional(),
    /** vLLM's: the prompt ends with the assistant's turn opened (default), or after the last message. */
    add_generation_prompt: z.boolean().nullable().optional(),
    /** vLLM's: the answer continues the last message, an assistant's, rather than starting a new turn. */
    continue_final_message: z.boolean().nullable().optional(),
  })
  .superRefine((r, ctx) => {
    // OpenAI and vLLM refuse top_logprobs without logprobs rather than silently return none.
    if (r.top_logprobs != null && r.logprobs !== true) {
      ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: 'logprobs must be true when top_logprobs is set' });
    }
    promptLogprobsNotStreamed(r, ctx);
  });

export type ChatRequest = z.infer<typeof chatRequestSchema>;

/** "messages[0].content" from a zod issue path. */
export function paramName(path: PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}
