import { z } from 'zod';

/** Anthropic's Messages API request, as its SDK and Claude Code send it. */
const text = z.object({ type: z.literal('text'), text: z.string() }).passthrough();
const toolUse = z
  .object({ type: z.literal('tool_use'), id: z.string().min(1), name: z.string().min(1), input: z.record(z.string(), z.unknown()) })
  .passthrough();
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

const message = z.union([
  z.object({
    role: z.enum(['user', 'assistant']),
    content: z.union([z.string(), z.array(block).min(1)]),
  }),
  // Claude Code puts system turns among the messages; Qwen3's template renders them where they stand.
  z.object({ role: z.literal('system'), content: z.union([z.string(), z.array(text)]) }),
]);
export type AnthropicMessage = z.infer<typeof message>;

const customTool = z
  .object({
    type: z.literal('custom').optional(),
    name: z.string().min(1).max(128),
    description: z.string().optional(),
    input_schema: z.record(z.string(), z.unknown()),
  })
  .passthrough();
export type CustomTool = z.infer<typeof customTool>;
/** Anthropic's server tools and versioned built-ins (`web_search_20250305`, `bash_20250124`, …): accepted, left out of the prompt. */
const typedTool = z
  .object({
    type: z
      .string()
      .min(1)
      .refine((t) => t !== 'custom'),
    name: z.string().min(1).max(128),
  })
  .passthrough();
const tool = z.union([customTool, typedTool]);

const toolChoice = z.discriminatedUnion('type', [
  z.object({ type: z.literal('auto'), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('any'), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('tool'), name: z.string().min(1), disable_parallel_tool_use: z.boolean().optional() }),
  z.object({ type: z.literal('none') }),
]);

const display = z.enum(['summarized', 'omitted']).optional();
const thinkingConfig = z.discriminatedUnion('type', [
  z.object({ type: z.literal('enabled'), budget_tokens: z.number().int().min(0).max(10_000_000), display }),
  z.object({ type: z.literal('disabled') }),
  // The model decides how much to think; here, thinking on with output_config.effort's budget.
  z.object({ type: z.literal('adaptive'), display }),
]);

const outputConfig = z
  .object({
    effort: z.enum(['low', 'medium', 'high', 'xhigh', 'max']).optional(),
    format: z
      .object({ type: z.literal('json_schema'), schema: z.record(z.string(), z.unknown()) })
      .passthrough()
      .nullable()
      .optional(),
  })
  .passthrough();

const common = {
  model: z.string().min(1).max(256),
  messages: z.array(message).min(1, 'at least one message is required').max(4096),
  system: z.union([z.string(), z.array(text)]).optional(),
  tools: z.array(tool).max(128).optional(),
  tool_choice: toolChoice.optional(),
  thinking: thinkingConfig.optional(),
  output_config: outputConfig.optional(),
};

export const messagesRequestSchema = z.object({
  ...common,
  // Anthropic's API requires it; other bad values keep zod's own message ("expected int", ">=1").
  max_tokens: z
    .number({ error: (issue) => (issue.input === undefined ? 'is required' : undefined) })
    .int()
    .min(1)
    .max(1_000_000),
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
