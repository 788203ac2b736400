import type { ToolDefinition } from './chat_template.js';

export interface ParsedToolCall {
  name: string;
  /** JSON text of the arguments object. */
  arguments: string;
}

const FUNCTION_OPEN = '<function=';
const FUNCTION_CLOSE = '</function>';
const PARAMETER_OPEN = '<parameter=';
const PARAMETER_CLOSE = '</parameter>';

/** The JSON types a parameter's schema allows, in the order to try them (string last). */
export function typesOf(schema: unknown): string[] {
  if (schema === null || typeof schema !== 'object') return [];
  const s = schema as { type?: unknown; anyOf?: unknown; oneOf?: unknown; enum?: unknown; const?: unknown };
  const types: string[] = [];
  if (typeof s.type === 'string') types.push(s.type);
  else if (Array.isArray(s.type)) types.push(...s.type.filter((t): t is string => typeof t === 'string'));
  for (const alternatives of [s.anyOf, s.oneOf]) if (Array.isArray(alternatives)) for (const a of alternatives) types.push(...typesOf(a));
  for (const v of Array.isArray(s.enum) ? s.enum : s.const !== undefined ? [s.const] : []) {
    types.push(v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v === 'string' ? 'string' : typeof v);
  }
  return [...new Set(types)].sort((a, b) => Number(a === 'string') - Number(b === 'string'));
}

/** The value a parameter's text stands for, as its schema types it; text stays text when nothing else fits. */
export function xmlParameterValue(text: string, schema: unknown): unknown {
  const t = text.trim();
  for (const type of typesOf(schema)) {
    switch (type) {
      case 'integer':
        if (/^-?\d+$/.test(t)) return Number(t);
        break;
      case 'number': {
        const n = Number(t);
        if (t !== '' && Number.isFinite(n)) return n;
        break;
      }
      case 'boolean':
        if (/^(true|false)$/i.test(t)) return t.toLowerCase() === 'true';
        break;
      case 'null':
        if (t === 'null' || t === 'None') return null;
        break;
      case 'object':
      case 'array':
        try {
          const v = JSON.parse(t) as unknown;
          if (type === 'array' ? Array.isArray(v) : v !== null && typeof v === 'object' && !Array.isArray(v)) return v;
        } catch {
          // Not JSON: the next type, or the text itself.
        }
        break;
      case 'string':
        return text;
    }
  }
  return text;
}

/** The text between `from` and the first of `ends` (or the end), and where that end was. */
function until(body: string, from: number, ends: string[]): { text: string; end: number } {
  let end = body.length;
  for (const e of ends) {
    const at = body.indexOf(e, from);
    if (at >= 0 && at < end) end = at;
  }
  return { text: body.slice(from, end), end };
}

/**
 * One XML tool call (the text inside `<tool_call>…</tool_call>`), its parameters typed by
 * the tool's JSON schema. The template writes each value between newlines, which are
 * layout; a value may also stand inline, and a missing `</parameter>` ends at the next
 * tag. Without its `</function>` the call was cut short, and is not one.
 */
export function parseXmlToolCall(body: string, tools: readonly ToolDefinition[]): ParsedToolCall | null {
  const open = body.indexOf(FUNCTION_OPEN);
  if (open < 0 || body.slice(0, open).trim() !== '') return null;
  const nameEnd = body.indexOf('>', open);
  if (nameEnd < 0) return null;
  const name = body.slice(open + FUNCTION_OPEN.length, nameEnd).trim();
  if (name === '' || /[\s<]/.test(name)) return null;
  const properties =
    ((tools.find((t) => t.function.name === name)?.function.parameters ?? {}) as { properties?: Record<string, unknown> }).properties ?? {};
  const args: Record<string, unknown> = {};
  let at = nameEnd + 1;
  for (;;) {
    const next = until(body, at, [PARAMETER_OPEN, FUNCTION_CLOSE]);
    if (next.text.trim() !== '') return null;
    if (!body.startsWith(PARAMETER_OPEN, next.end)) {
      at = next.end;
      break;
    }
    const keyEnd = body.indexOf('>', next.end);
    if (keyEnd < 0) return null;
    const key = body.slice(next.end + PARAMETER_OPEN.length, keyEnd).trim();
    if (key === '') return null;
    const value = until(body, keyEnd + 1, [PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE]);
    const text = value.text.replace(/^\n/, '').replace(/\n$/, '');
    args[key] = xmlParameterValue(text, Object.hasOwn(properties, key) ? properties[key] : undefined);
    at = body.startsWith(PARAMETER_CLOSE, value.end) ? value.end + PARAMETER_CLOSE.length : value.end;
  }
  // A call cut short (no `</function>`) is not a call: its last value may be cut too.
  if (!body.startsWith(FUNCTION_CLOSE, at) || body.slice(at + FUNCTION_CLOSE.length).trim() !== '') return null;
  return { name, arguments: JSON.stringify(args) };
}
