import { z } from 'zod';

/** Anthropic's Messages API request, as its SDK and Claude Code send it. */
const text = z.object({ type: z.literal('text'), text: z.string() }).passthrough();
const toolUse = z.object({ type: z.literal('tool_use'), id: z.string().min(1), name: z.string().min(1), input: z.record(z.string(), z.unknown()) }).passthrough();
const toolResult = z
  .object({
    type: z.literal('tool_result'),
    tool_use_id: z.string().min(1),
    content: z.union([z.string(), z.array(text)]).optional(),
    is_error: z.boolean().optional(),
  })
  .passthrough();
const thinking = z.object({ type: z.literal('thinking'), thinking: z.string(), signature: z.string().optional() }).passthrough();
const redactedThinking = z.object({ type: z.literal('redacted_thinking'), data: z.string() }).passthrough();
const block = z.discriminatedUnion('type', [text, toolUse, toolResult, thinking, redactedThinking]);
export type ContentBlock = z.infer<typeof block>;

const message = z.object({
  role: z.enum(['user', 'assistant']),
  content: z.union([z.string(), z.array(block).min(1)]),
});
export type AnthropicMessage = z.infer<typeof message>;

const tool = z
  .object({
    name: z.string().min(1).max(128),
    description: z.string().optional(),
    input_schema: z.record(z.string(), z.unknown()),
  })
  .passthrough();

const toolChoice = z.discriminatedUnion('type', [
  z.object({ type: z.literal('auto'), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('any'), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('tool'), name: z.string().min(1), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('none') }),
]);

const thinkingConfig = z.discriminatedUnion('type', [
  z.object({ type: z.literal('enabled'), budget_tokens: z.number().int().min(0).max(10_000_000) }),
  z.object({ type: z.literal('disabled') }),
]);

const common = {
  model: z.string().min(1).max(256),
  messages: z.array(message).min(1, 'at least one message is required').max(4096),
  system: z.union([z.string(), z.array(text)]).optional(),
  tools: z.array(tool).max(128).optional(),
  tool_choice: toolChoice.optional(),
  thinking: thinkingConfig.optional(),
};

export const messagesRequestSchema = z.object({
  ...common,
  max_tokens: z.number({ error: 'is required' }).int().min(1).max(1_000_000),
  stop_sequences: z.array(z.string()).max(16).optional(),
  temperature: z.number().min(0).max(1).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  top_k: z.number().int().min(0).max(1_000_000).optional(),
  stream: z.boolean().optional(),
  metadata: z.object({ user_id: z.string().nullable().optional() }).passthrough().optional(),
  service_tier: z.string().optional(),
});
export type MessagesRequest = z.infer<typeof messagesRequestSchema>;

export const countTokensRequestSchema = z.object(common);
export type CountTokensRequest = z.infer<typeof countTokensRequestSchema>;
