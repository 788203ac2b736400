import { InvalidRequestError, NotFoundError } from '../errors.js';
import { prepareChat } from '../serving/chat_prompt.js';
import type { ChatRequest } from '../serving/chat_request.js';
import type { ServingContext } from '../serving/context.js';
import { checkModel, checkTokenIds, parseBody } from '../serving/request.js';
import { detokenizeRequestSchema, tokenizeRequestSchema } from './schemas.js';

/** The one model this server serves, as /v1/models lists it. */
export function modelCard(ctx: ServingContext) {
  return {
    id: ctx.options.modelName,
    object: 'model',
    created: ctx.createdAt,
    owned_by: 'qwen3-serve',
    root: ctx.options.modelName,
    parent: null,
    max_model_len: ctx.engine.info?.limits.maxModelLen ?? null,
  };
}

export function serveModel(ctx: ServingContext, id: string) {
  if (id !== ctx.options.modelName) throw new NotFoundError(`The model \`${id}\` does not exist.`, { param: 'model', code: 'model_not_found' });
  return modelCard(ctx);
}

/** vLLM's /tokenize: a prompt, or chat messages rendered as chat completions renders them. */
export async function serveTokenize(ctx: ServingContext, input: unknown) {
  const body = parseBody(tokenizeRequestSchema, input);
  checkModel(ctx, body.model);
  const tokens =
    'prompt' in body
      ? await ctx.codec.encode(body.prompt)
      : (
          await prepareChat(ctx, {
            messages: body.messages,
            tools: body.tools ?? undefined,
            chat_template_kwargs: body.chat_template_kwargs ?? undefined,
            add_generation_prompt: body.add_generation_prompt,
            continue_final_message: body.continue_final_message,
          } as ChatRequest)
        ).promptIds;
  return {
    count: tokens.length,
    max_model_len: ctx.engine.info?.limits.maxModelLen ?? null,
    tokens,
    ...(body.return_token_strs ? { token_strs: tokens.map((t) => ctx.tokenizer.tokenPiece(t) ?? '') } : {}),
  };
}

/** vLLM's /detokenize. */
export async function serveDetokenize(ctx: ServingContext, input: unknown) {
  const body = parseBody(detokenizeRequestSchema, input);
  checkModel(ctx, body.model);
  checkTokenIds(ctx, body.tokens, 'tokens');
  if (body.tokens.length > 1_000_000) throw new InvalidRequestError('Too many tokens.', { param: 'tokens' });
  return { prompt: await ctx.codec.decode(body.tokens, false) };
}
