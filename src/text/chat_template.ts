import { Template } from '@huggingface/jinja';
import { InvalidRequestError, ModelFormatError } from '../errors.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  reasoning_content?: string;
  tool_calls?: Array<{ id?: string; type: 'function'; function: { name: string; arguments: string | Record<string, unknown> } }>;
  tool_call_id?: string;
  name?: string;
}

export interface ToolDefinition {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

/**
 * How a checkpoint writes tool calls inside `<tool_call>…</tool_call>`: Qwen3's JSON
 * object (`{"name": …, "arguments": {…}}`), or the XML of Qwen3-Coder and later Qwen models
 * (`<function=NAME><parameter=P>value</parameter>…</function>`).
 */
export type ToolCallSyntax = 'json' | 'xml';

/** The syntax a chat template teaches: the one it renders earlier calls in. */
export function toolCallSyntaxOf(templateSource: string): ToolCallSyntax {
  return templateSource.includes('<function=') && templateSource.includes('<parameter=') ? 'xml' : 'json';
}

export interface RenderOptions {
  tools?: ToolDefinition[];
  enableThinking: boolean;
  addGenerationPrompt?: boolean;
  /** Further variables for the template (the request's chat_template_kwargs). */
  extra?: Record<string, unknown>;
}

/**
 * The checkpoint's own chat template (tokenizer_config.json `chat_template`), rendered
 * with @huggingface/jinja. Qwen3's template takes `enable_thinking` and `tools`, and drops
 * the thinking of earlier assistant turns.
 */
export class ChatTemplate {
  private readonly template: Template;
  /** How this template writes tool calls, and so how the model will. */
  readonly toolCallSyntax: ToolCallSyntax;

  constructor(
    source: string,
    private readonly specialTokens: { bos_token?: string; eos_token?: string } = {},
  ) {
    this.toolCallSyntax = toolCallSyntaxOf(source);
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new ModelFormatError(`the chat template does not parse: ${(err as Error).message}`);
    }
  }

  static fromTokenizerConfig(config: Record<string, unknown>): ChatTemplate {
    let source = config.chat_template;
    if (Array.isArray(source)) source = (source.find((t: { name?: string }) => t.name === 'default') as { template?: string } | undefined)?.template;
    if (typeof source !== 'string') throw new ModelFormatError('tokenizer_config.json has no chat_template.');
    const token = (v: unknown) =>
      typeof v === 'string' ? v : typeof v === 'object' && v !== null ? ((v as { content?: string }).content ?? '') : '';
    return new ChatTemplate(source, { bos_token: token(config.bos_token), eos_token: token(config.eos_token) });
  }

  render(messages: ChatMessage[], o: RenderOptions): string {
    try {
      return this.template.render({
        ...this.specialTokens,
        ...o.extra,
        messages,
        tools: o.tools && o.tools.length > 0 ? o.tools : undefined,
        add_generation_prompt: o.addGenerationPrompt ?? true,
        enable_thinking: o.enableThinking,
      });
    } catch (err) {
      // Templates raise on conversations they do not accept (e.g. a bad role order).
      throw new InvalidRequestError(`The chat template rejected these messages: ${(err as Error).message}`, { param: 'messages' });
    }
  }
}
