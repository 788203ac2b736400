import type { ToolDefinition } from './chat_template.js';

export interface ParsedToolCall {
  name: string;
  /** JSON text of the arguments object. */
  arguments: string;
}

/** A piece of a call as it streams: the first names it, the arguments' JSON text arrives in order, the last is `done`. */
export interface ToolCallPart {
  name?: string;
  arguments: string;
  done: boolean;
}

/** Reads one `<tool_call>` block as it arrives. */
export interface ToolCallReader {
  /** The block's text so far: the parts it adds. */
  read(block: string): ToolCallPart[];
  /** The whole block (or all there was): the call and its last parts, or null when it is no call and never began as one. */
  close(block: string): { call: ParsedToolCall; parts: ToolCallPart[] } | null;
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

/** The text between `from` and the first of `ends` (or the end), and where that end was (-1: none). */
function until(body: string, from: number, ends: string[], searchFrom = from): { text: string; end: number } {
  let end = -1;
  for (const e of ends) {
    const at = body.indexOf(e, Math.max(from, searchFrom));
    if (at >= 0 && (end < 0 || at < end)) end = at;
  }
  return { text: body.slice(from, end < 0 ? body.length : end), end };
}

/** `<function=NAME>` opening the block: its name and end, null while incomplete, 'invalid' when the block is no call. */
function functionTag(block: string): { name: string; end: number } | null | 'invalid' {
  const lead = block.length - block.trimStart().length;
  const rest = block.slice(lead);
  if (rest.length < FUNCTION_OPEN.length) return FUNCTION_OPEN.startsWith(rest) ? null : 'invalid';
  if (!rest.startsWith(FUNCTION_OPEN)) return 'invalid';
  const close = block.indexOf('>', lead);
  if (close < 0) return /[\s<]/.test(block.slice(lead + FUNCTION_OPEN.length)) ? 'invalid' : null;
  const name = block.slice(lead + FUNCTION_OPEN.length, close).trim();
  return name === '' || /[\s<]/.test(name) ? 'invalid' : { name, end: close + 1 };
}

/**
 * The parameter starting at `at` (after whitespace), once its value has ended: at its
 * `</parameter>`, or where a next tag begins when that is missing. Null when none is
 * there yet or what is there is not a parameter.
 */
function nextParameter(block: string, at: number, searchFrom = 0): { key: string; text: string; end: number } | null {
  const start = block.indexOf(PARAMETER_OPEN, at);
  if (start < 0 || block.slice(at, start).trim() !== '') return null;
  const keyEnd = block.indexOf('>', start);
  if (keyEnd < 0) return null;
  const key = block.slice(start + PARAMETER_OPEN.length, keyEnd).trim();
  if (key === '') return null;
  const value = until(block, keyEnd + 1, [PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE], searchFrom);
  if (value.end < 0) return null;
  // The template writes each value between newlines, which are layout.
  const text = value.text.replace(/^\n/, '').replace(/\n$/, '');
  return { key, text, end: block.startsWith(PARAMETER_CLOSE, value.end) ? value.end + PARAMETER_CLOSE.length : value.end };
}

/** The schema of each of a tool's parameters. */
function propertiesOf(tools: readonly ToolDefinition[], name: string): Record<string, unknown> {
  return ((tools.find((t) => t.function.name === name)?.function.parameters ?? {}) as { properties?: Record<string, unknown> }).properties ?? {};
}

/**
 * One XML tool call (the text inside `<tool_call>…</tool_call>`), its parameters typed by
 * the tool's JSON schema. A value may stand inline, and a missing `</parameter>` ends at
 * the next tag; a parameter given twice keeps its first value. Without its `</function>`
 * the call was cut short, and is not one.
 */
export function parseXmlToolCall(body: string, tools: readonly ToolDefinition[]): ParsedToolCall | null {
  const reader = new XmlCallReader(tools);
  reader.read(body);
  return reader.complete(body);
}

/**
 * Reads an XML call as it streams: it begins once `<function=NAME>` is whole, and each
 * parameter's JSON follows as soon as its value has ended, so a client sees the
 * arguments grow a parameter at a time. Once begun, the block is a call whatever follows:
 * what was sent cannot be taken back.
 */
export class XmlCallReader implements ToolCallReader {
  private name: string | null = null;
  private at = 0;
  private readonly args: Record<string, unknown> = {};
  /** The arguments' JSON text sent so far. */
  private sent = '';
  /** Where the search for the open value's end resumes: a long value is not scanned again on every token. */
  private scanned = 0;

  constructor(private readonly tools: readonly ToolDefinition[]) {}

  read(block: string): ToolCallPart[] {
    const parts: ToolCallPart[] = [];
    if (this.name === null) {
      const head = functionTag(block);
      if (head === null || head === 'invalid') return parts;
      this.name = head.name;
      this.at = head.end;
      parts.push({ name: head.name, arguments: '', done: false });
    }
    const properties = propertiesOf(this.tools, this.name);
    for (let p = nextParameter(block, this.at, this.scanned); p; p = nextParameter(block, this.at)) {
      this.at = p.end;
      this.scanned = 0;
      if (Object.hasOwn(this.args, p.key)) continue;
      const value = xmlParameterValue(p.text, Object.hasOwn(properties, p.key) ? properties[p.key] : undefined);
      this.args[p.key] = value;
      const piece = `${this.sent === '' ? '{' : ','}${JSON.stringify(p.key)}:${JSON.stringify(value)}`;
      this.sent += piece;
      parts.push({ arguments: piece, done: false });
    }
    // No end tag lies before the last few characters, which a longer text may complete into one.
    this.scanned = Math.max(this.at, block.length - PARAMETER_CLOSE.length);
    return parts;
  }

  /** The call, if the block holds a whole one (its `</function>` and nothing after). */
  complete(block: string): ParsedToolCall | null {
    if (this.name === null) return null;
    const rest = block.slice(this.at).trim();
    return rest === FUNCTION_CLOSE ? { name: this.name, arguments: JSON.stringify(this.args) } : null;
  }

  close(block: string): { call: ParsedToolCall; parts: ToolCallPart[] } | null {
    const began = this.name !== null;
    const parts = this.read(block);
    if (this.name === null) return null;
    if (!began && !this.complete(block)) return null;
    const args = JSON.stringify(this.args);
    parts.push({ arguments: args.slice(this.sent.length), done: true });
    return { call: { name: this.name, arguments: args }, parts };
  }
}
