import { z } from 'zod';

/** OpenAI's Responses API request (the parts a local model can honour). */
const textPart = z.object({ type: z.enum(['input_text', 'output_text']), text: z.string() }).passthrough();
const messageItem = z
  .object({
    type: z.literal('message').optional(),
    role: z.enum(['user', 'system', 'developer', 'assistant']),
    content: z.union([z.string(), z.array(textPart)]),
  })
  .passthrough();
const functionCallItem = z
  .object({
    type: z.literal('function_call'),
    call_id: z.string().min(1),
    name: z.string().min(1),
    namespace: z.string().nullable().optional(),
    arguments: z.string(),
    id: z.string().optional(),
  })
  .passthrough();
const outputValue = z.union([z.string(), z.array(textPart)]);
const functionOutputItem = z.object({ type: z.literal('function_call_output'), call_id: z.string().min(1), output: outputValue }).passthrough();
const customCallItem = z
  .object({
    type: z.literal('custom_tool_call'),
    call_id: z.string().min(1),
    name: z.string().min(1),
    namespace: z.string().nullable().optional(),
    input: z.string(),
  })
  .passthrough();
const customOutputItem = z.object({ type: z.literal('custom_tool_call_output'), call_id: z.string().min(1), output: outputValue }).passthrough();
const reasoningItem = z
  .object({
    type: z.literal('reasoning'),
    encrypted_content: z.string().nullable().optional(),
    content: z
      .array(z.object({ type: z.string(), text: z.string().optional() }).passthrough())
      .nullable()
      .optional(),
  })
  .passthrough();
const inputItem = z.union([functionCallItem, functionOutputItem, customCallItem, customOutputItem, reasoningItem, messageItem]);
export type ResponsesInputItem = z.infer<typeof inputItem>;

const functionTool = z
  .object({
    type: z.literal('function'),
    name: z.string().min(1).max(128),
    description: z.string().nullable().optional(),
    parameters: z.record(z.string(), z.unknown()).nullable().optional(),
    strict: z.boolean().nullable().optional(),
  })
  .passthrough();
const customTool = z
  .object({
    type: z.literal('custom'),
    name: z.string().min(1).max(128),
    description: z.string().nullable().optional(),
    format: z.record(z.string(), z.unknown()).optional(),
  })
  .passthrough();
/** A namespace groups function and custom tools; the model calls them as `namespace.name`. */
const namespaceTool = z
  .object({
    type: z.literal('namespace'),
    name: z.string().min(1).max(64),
    description: z.string().nullable().optional(),
    tools: z
      .array(z.union([functionTool, customTool]))
      .min(1)
      .max(128),
  })
  .passthrough();
/** OpenAI's tool types this server cannot run: left out, never refused. */
export const UNSERVED_TOOL_TYPES: ReadonlySet<string> = new Set([
  'web_search',
  'web_search_2025_08_26',
  'web_search_preview',
  'web_search_preview_2025_03_11',
  'file_search',
  'code_interpreter',
  'computer',
  'computer_use',
  'computer_use_preview',
  'image_generation',
  'mcp',
  'local_shell',
  'shell',
  'apply_patch',
  'tool_search',
  'programmatic_tool_calling',
]);

/** A tool of a type only OpenAI can run: accepted, and left out of the prompt. */
const unservedTool = z
  .object({ type: z.string() })
  .passthrough()
  .superRefine((t, c) => {
    if (UNSERVED_TOOL_TYPES.has(t.type)) return;
    // A tool of a type served here that lands here is malformed: say what is wrong with it.
    const served = t.type === 'function' ? functionTool : t.type === 'custom' ? customTool : t.type === 'namespace' ? namespaceTool : null;
    const issue = served?.safeParse(t).error?.issues[0];
    if (issue) c.addIssue({ code: 'custom', path: issue.path as Array<string | number>, message: issue.message });
    else
      c.addIssue({ code: 'custom', path: ['type'], message: `tools of type '${t.type}' are not supported; use function, custom or namespace tools` });
  });
const tool = z.union([functionTool, customTool, namespaceTool, unservedTool]);
export type FunctionToolSpec = z.infer<typeof functionTool>;
export type CustomToolSpec = z.infer<typeof customTool>;
export type NamespaceToolSpec = z.infer<typeof namespaceTool>;
export type ResponsesTool = FunctionToolSpec | CustomToolSpec | NamespaceToolSpec | { type: string };

const format = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text') }),
  z.object({ type: z.literal('json_object') }),
  z.object({
    type: z.literal('json_schema'),
    name: z.string().min(1).max(64),
    schema: z.record(z.string(), z.unknown()),
    description: z.string().optional(),
    strict: z.boolean().nullable().optional(),
  }),
]);

export const responsesRequestSchema = z.object({
  model: z.string().optional(),
  input: z.union([z.string(), z.array(inputItem).max(4096)]),
  instructions: z.string().nullable().optional(),
  tools: z.array(tool).max(128).nullable().optional(),
  tool_choice: z
    .union([
      z.enum(['auto', 'none', 'required']),
      z.object({ type: z.enum(['function', 'custom']), name: z.string().min(1), namespace: z.string().nullable().optional() }).passthrough(),
      z.object({
        type: z.literal('allowed_tools'),
        mode: z.enum(['auto', 'required']),
        tools: z.array(z.object({ type: z.string(), name: z.string().optional() }).passthrough()).max(512),
      }),
      z.object({ type: z.string().min(1) }).passthrough(),
    ])
    .nullable()
    .optional(),
  /** Extra output to include; `reasoning.encrypted_content` seals the reasoning into its item. */
  include: z.array(z.string()).max(32).nullable().optional(),
  parallel_tool_calls: z.boolean().nullable().optional(),
  text: z.object({ format: format.optional() }).passthrough().nullable().optional(),
  reasoning: z
    .object({
      effort: z.enum(['none', 'minimal', 'low', 'medium', 'high']).nullable().optional(),
      summary: z.enum(['auto', 'concise', 'detailed']).nullable().optional(),
    })
    .passthrough()
    .nullable()
    .optional(),
  /** vLLM's bound on thinking tokens (0: thinking off). */
  thinking_token_budget: z.number().int().min(0).max(10_000_000).nullable().optional(),
  max_output_tokens: z.number().int().min(1).max(1_000_000).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  // Checked as OpenAI checks them and echoed; input is never dropped to fit (too long is a 400), and no logprobs are returned.
  top_logprobs: z.number().int().min(0).max(20).nullable().optional(),
  truncation: z.enum(['auto', 'disabled']).nullable().optional(),
  metadata: z.record(z.string(), z.string().max(512)).nullable().optional(),
  user: z.string().nullable().optional(),
  store: z.boolean().nullable().optional(),
  previous_response_id: z.string().nullable().optional(),
  /** vLLM's prefix-cache salt (blocks are shared only between requests with the same salt). */
  cache_salt: z.string().min(1, 'must be a non-empty string').max(1024).nullable().optional(),
  stream: z.boolean().nullable().optional(),
});
export type ResponsesRequest = z.infer<typeof responsesRequestSchema>;
