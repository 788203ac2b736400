import { z } from 'zod';
import { messageSchema, promptLogprobsNotStreamed, samplingFields, toolSchema } from '../serving/chat_request.js';

/** Request bodies of OpenAI's other endpoints (Completions, and vLLM's tokenize and detokenize). */

const tokenIds = z.array(z.number().int().min(0)).min(1);

export const completionRequestSchema = z
  .object({
    ...samplingFields,
    prompt: z.union([z.string(), z.array(z.string()).min(1).max(64), tokenIds, z.array(tokenIds).min(1).max(64)], {
      error: 'expected a string, 1 to 64 strings, an array of token ids, or 1 to 64 such arrays',
    }),
    // 0 is the prompt alone, with echo (lm-eval's log-likelihood requests); checked in the route.
    max_tokens: z.number().int().min(0).max(1_000_000).nullable().optional(),
    echo: z.boolean().nullable().optional(),
    logprobs: z.number().int().min(0).max(20).nullable().optional(),
    suffix: z.string().nullable().optional(),
    best_of: z.number().int().min(1).max(16).nullable().optional(),
  })
  .superRefine(promptLogprobsNotStreamed);

export type CompletionRequest = z.infer<typeof completionRequestSchema>;

export const tokenizeRequestSchema = z.union(
  [
    z.object({
      model: z.string().optional(),
      prompt: z.string(),
      add_special_tokens: z.boolean().optional(),
      return_token_strs: z.boolean().optional(),
    }),
    z.object({
      model: z.string().optional(),
      messages: z.array(messageSchema).min(1),
      add_generation_prompt: z.boolean().nullable().optional(),
      continue_final_message: z.boolean().nullable().optional(),
      chat_template_kwargs: z.record(z.string(), z.unknown()).nullable().optional(),
      tools: z.array(toolSchema).nullable().optional(),
      return_token_strs: z.boolean().optional(),
    }),
  ],
  { error: 'expected a prompt (a string) or messages (an array of chat messages)' },
);

export const detokenizeRequestSchema = z.object({
  model: z.string().optional(),
  tokens: z.array(z.number().int().min(0)).min(1, 'give at least one token id'),
});
