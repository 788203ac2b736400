import type { GrammarRequest, GrammarSpec } from '../engine/types.js';
import { InvalidRequestError } from '../errors.js';
import type { StructuredFields } from './chat_request.js';

/** A JSON schema given as an object or as JSON text. */
function schemaText(value: string | Record<string, unknown>, param: string): string {
  if (typeof value !== 'string') return JSON.stringify(value);
  try {
    const parsed: unknown = JSON.parse(value);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
  } catch {
    throw new InvalidRequestError(`${param} must be a JSON schema: an object, or JSON text of one.`, { param });
  }
  return value;
}

/**
 * The grammar a request asks its output to follow, from OpenAI's `response_format` or
 * vLLM's `structured_outputs` / `guided_*` fields; null for free text. At most one may
 * be given: two constraints would have to hold at once, which no server composes.
 */
export function grammarRequest(f: StructuredFields): GrammarRequest | null {
  const asked: GrammarRequest[] = [];
  const add = (param: string, spec: GrammarSpec) => asked.push({ param, spec });
  const rf = f.response_format;
  if (rf?.type === 'json_object') add('response_format', { type: 'json_object' });
  if (rf?.type === 'json_schema') {
    // OpenAI makes `schema` optional; without one, any JSON object.
    const schema = rf.json_schema.schema;
    add('response_format', schema ? { type: 'json_schema', schema: JSON.stringify(schema) } : { type: 'json_object' });
  }
  const fields: Array<
    [string, StructuredFields['guided_json'], StructuredFields['guided_choice'], string | null | undefined, string | null | undefined]
  > = [
    ['guided', f.guided_json, f.guided_choice, f.guided_grammar, f.guided_regex],
    ['structured_outputs', f.structured_outputs?.json, f.structured_outputs?.choice, f.structured_outputs?.grammar, f.structured_outputs?.regex],
  ];
  for (const [prefix, json, choice, grammar, regex] of fields) {
    const name = (kind: string) => (prefix === 'guided' ? `guided_${kind}` : `structured_outputs.${kind}`);
    if (json !== null && json !== undefined) add(name('json'), { type: 'json_schema', schema: schemaText(json, name('json')) });
    if (choice) add(name('choice'), { type: 'choice', choices: choice });
    if (grammar) add(name('grammar'), { type: 'ebnf', grammar });
    if (regex !== null && regex !== undefined) add(name('regex'), { type: 'regex', pattern: regex });
  }
  if (asked.length > 1) {
    throw new InvalidRequestError(`Only one structured output may be asked for; got ${asked.map((a) => a.param).join(' and ')}.`, {
      param: asked[1].param,
    });
  }
  return asked[0] ?? null;
}
