import type { ToolCallSyntax, ToolDefinition } from '../text/chat_template.js';
import { typesOf } from '../text/xml_tool_call.js';

/** A forced call: the opening the prompt writes, and the structural tag that holds the rest. */
export interface ForcedCall {
  opening: string;
  format: Record<string, unknown>;
}

/**
 * A forced call (tool_choice `required` or a named function) in the template's syntax:
 * the prompt opens it (`<tool_call>\n`, plus the function's name for a named one) and the
 * grammar finishes it, its arguments as the function's `parameters` schema allows.
 * `required` (name null) lets the model pick the tool.
 */
export function forcedCall(tools: ToolDefinition[], name: string | null, syntax: ToolCallSyntax): ForcedCall {
  const named = name === null ? null : tools.find((t) => t.function.name === name)!;
  const call = syntax === 'json' ? jsonCall : xmlCall;
  const close = { type: 'const_string', value: syntax === 'json' ? '}\n</tool_call>' : '</function>\n</tool_call>' };
  if (named) {
    const { head, body } = call(named);
    return { opening: `<tool_call>\n${head}`, format: { type: 'sequence', elements: [...body, close] } };
  }
  return {
    opening: '<tool_call>\n',
    format: {
      type: 'or',
      elements: tools.map((t) => {
        const { head, body } = call(t);
        return { type: 'sequence', elements: [{ type: 'const_string', value: head }, ...body, close] };
      }),
    },
  };
}

/** A call's head (the text naming the function) and the structural tags of its arguments, per syntax. */
type CallForm = (tool: ToolDefinition) => { head: string; body: Array<Record<string, unknown>> };

const jsonCall: CallForm = (t) => ({
  head: `{"name": ${JSON.stringify(t.function.name)}, "arguments": `,
  body: [{ type: 'json_schema', json_schema: t.function.parameters ?? { type: 'object' } }],
});

const xmlCall: CallForm = (t) => ({ head: `<function=${t.function.name}>\n`, body: xmlParameters(t) });

/** Nothing: how a structural tag says an optional part may be left out. */
const NOTHING = { type: 'regex', pattern: '()?' };

/**
 * A function's parameters as the XML template writes them, in the schema's order, each
 * `<parameter=NAME>\nvalue\n</parameter>\n`; the required ones always, the others
 * optionally. Text values are written raw, other JSON values compactly.
 */
function xmlParameters(tool: ToolDefinition): Array<Record<string, unknown>> {
  const schema = (tool.function.parameters ?? {}) as { properties?: Record<string, unknown>; required?: unknown };
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  return Object.entries(schema.properties ?? {}).map(([key, property]) => {
    const tag = { type: 'tag', begin: `<parameter=${key}>\n`, content: xmlValue(property), end: '\n</parameter>\n' };
    return required.has(key) ? tag : { type: 'or', elements: [tag, NOTHING] };
  });
}

/** One parameter's value: raw text for strings (a choice among them for an enum), JSON for the other types. */
function xmlValue(property: unknown): Record<string, unknown> {
  const p = (property ?? {}) as { enum?: unknown; const?: unknown };
  const choices = Array.isArray(p.enum) ? p.enum : p.const !== undefined ? [p.const] : null;
  if (choices?.every((c) => typeof c === 'string')) {
    const consts = choices.map((c) => ({ type: 'const_string', value: c }));
    return consts.length === 1 ? consts[0] : { type: 'or', elements: consts };
  }
  const types = typesOf(property);
  if (types.length > 0 && !types.includes('string')) return { type: 'json_schema', json_schema: property };
  return { type: 'any_text' };
}
