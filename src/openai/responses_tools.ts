import { InvalidRequestError } from '../errors.js';
import type { CustomToolSpec, FunctionToolSpec, NamespaceToolSpec, ResponsesRequest, ResponsesTool } from './responses_schemas.js';

/**
 * The Responses API's tools as the chat tools Qwen3 sees. Functions pass through; a
 * namespace's functions are offered under `namespace.name`; a custom (free-text) tool
 * becomes a function of one string, `input`. Tool types only OpenAI can run (its hosted
 * search, code, image and MCP tools, and the built-ins of its own models) are left out of
 * the prompt and named in `ignored`, so an agent that always sends them still works.
 */

/** How a call the model makes goes back to the client. */
export interface CallTarget {
  kind: 'function' | 'custom';
  name: string;
  namespace?: string;
}

export interface ChatTool {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface ToolPlan {
  tools: ChatTool[] | null;
  /** By the name the model calls. */
  targets: Map<string, CallTarget>;
  /** Types left out of the prompt, in the order given. */
  ignored: string[];
  toolChoice: unknown;
}

/** The name the model sees for a tool inside a namespace. */
export const qualifiedName = (name: string, namespace?: string | null) => (namespace ? `${namespace}.${name}` : name);

const CUSTOM_PARAMETERS = { type: 'object', properties: { input: { type: 'string' } }, required: ['input'] };

function customDescription(t: CustomToolSpec): string | undefined {
  const f = t.format as { type?: string; syntax?: string; definition?: string } | undefined;
  const grammar = f?.type === 'grammar' && f.definition ? `\nThe input must follow this ${f.syntax ?? ''} grammar:\n${f.definition}` : '';
  const text = `${t.description ?? ''}${grammar}`;
  return text === '' ? undefined : text;
}

export function planTools(req: Pick<ResponsesRequest, 'tools' | 'tool_choice'>): ToolPlan {
  const targets = new Map<string, CallTarget>();
  const ignored: string[] = [];
  const tools: ChatTool[] = [];
  const add = (tool: ResponsesTool, namespace?: string) => {
    if (tool.type === 'function') {
      const t = tool as FunctionToolSpec;
      const name = qualifiedName(t.name, namespace);
      tools.push({ type: 'function', function: { name, description: t.description ?? undefined, parameters: t.parameters ?? undefined } });
      targets.set(name, { kind: 'function', name: t.name, ...(namespace ? { namespace } : {}) });
    } else if (tool.type === 'custom') {
      const t = tool as CustomToolSpec;
      const name = qualifiedName(t.name, namespace);
      tools.push({ type: 'function', function: { name, description: customDescription(t), parameters: CUSTOM_PARAMETERS } });
      targets.set(name, { kind: 'custom', name: t.name, ...(namespace ? { namespace } : {}) });
    } else if (tool.type === 'namespace') {
      const t = tool as NamespaceToolSpec;
      for (const inner of t.tools) add(inner, t.name);
    } else {
      ignored.push(tool.type);
    }
  };
  for (const t of req.tools ?? []) add(t);
  return { tools: req.tools ? tools : null, targets, ignored, toolChoice: toolChoice(req.tool_choice, targets) };
}

/** The chat tool_choice for a Responses one; naming a tool this server cannot run is a 400. */
function toolChoice(choice: ResponsesRequest['tool_choice'], targets: Map<string, CallTarget>): unknown {
  if (choice === null || choice === undefined || typeof choice === 'string') return choice ?? undefined;
  const named = (name: string, namespace?: string | null) => {
    const full = qualifiedName(name, namespace);
    // A namespace's function may be named alone when that is unambiguous.
    const matches = targets.has(full) ? [full] : [...targets].filter(([, t]) => t.name === name && !namespace).map(([k]) => k);
    if (matches.length !== 1) throw new InvalidRequestError(`tool_choice names tool '${full}', which is not in tools.`, { param: 'tool_choice' });
    return { type: 'function', function: { name: matches[0] } };
  };
  const c = choice as { type: string; name?: string; namespace?: string; mode?: string; tools?: Array<{ type: string; name?: string }> };
  if (c.type === 'function' || c.type === 'custom') return named(c.name ?? '', c.namespace);
  if (c.type === 'allowed_tools') return c.mode === 'required' ? 'required' : 'auto';
  throw new InvalidRequestError(
    `tool_choice names a '${c.type}' tool, which this server cannot run (only function, custom and namespace tools run here).`,
    { param: 'tool_choice' },
  );
}

/** `allowed_tools` keeps only the tools it lists. */
export function allowedTools(plan: ToolPlan, choice: ResponsesRequest['tool_choice']): ChatTool[] | null {
  const c = choice as { type?: string; tools?: Array<{ type: string; name?: string; namespace?: string }> } | null | undefined;
  if (!plan.tools || c?.type !== 'allowed_tools') return plan.tools;
  const keep = new Set((c.tools ?? []).filter((t) => t.name).map((t) => qualifiedName(t.name!, t.namespace)));
  return plan.tools.filter((t) => keep.has(t.function.name) || keep.has(plan.targets.get(t.function.name)?.name ?? ''));
}
