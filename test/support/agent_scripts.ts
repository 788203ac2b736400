import { isDeepStrictEqual } from 'node:util';
import { parseToolCallJson } from '../../src/text/output_parser.js';
import type { QwenTokenizer } from '../../src/text/tokenizer.js';
import { mulberry32 } from '../../src/util/random.js';
import { chain, type ScriptBranch } from './scripted_checkpoint.js';

// What scripted checkpoints say in an agent session: two turns told apart by a marker,
// and tool calls spelled in tokens no other part of the script uses.

export interface TwoTurnScript {
  transitions: Array<[number, number]>;
  branch: ScriptBranch;
}

/**
 * A script for a two-request agent session: `first` is written while the context has no
 * marker (`<tool_response>` by default), `second` once it has one, both after prompts
 * that end in `assistant\n` (thinking on) or `</think>\n\n` (thinking off), each followed
 * by `<|im_end|>`. With `thinking`, both turns open with `<think>{thinking}</think>\n\n`
 * (without it a thinking-on response is all reasoning). Each turn needs distinct tokens.
 * Use: `writeScriptedCheckpoint(dir, s.transitions, { branch: s.branch })`.
 */
export function twoTurnScript(tokenizer: QwenTokenizer, o: { first: string; second: string; thinking?: string; marker?: string }): TwoTurnScript {
  const newline = tokenizer.encode('\n')[0];
  const blank = tokenizer.encode('\n\n')[0];
  const thinkEnd = tokenizer.tokenId('</think>');
  const markerText = o.marker ?? '<tool_response>';
  const marker = tokenizer.tokenId(markerText);
  if (marker === undefined) throw new Error(`${markerText} is not a token`);
  const turn = (text: string, which: string): Array<[number, number]> => {
    const opening = o.thinking === undefined ? '' : `<think>${o.thinking}</think>\n\n`;
    const ids = tokenizer.encode(opening + text + (text.endsWith('<|im_end|>') ? '' : '<|im_end|>'));
    const seen = new Set<number>();
    for (const id of ids) {
      if (id === newline) throw new Error(`the ${which} turn has "\\n" (token ${id}), where thinking-on prompts end: it cannot lead anywhere else`);
      if (seen.has(id))
        throw new Error(`the ${which} turn repeats ${JSON.stringify(tokenizer.decode([id]))} (token ${id}): a bigram script needs distinct tokens`);
      seen.add(id);
    }
    const at = ids.indexOf(blank);
    if (at >= 0 && ids[at - 1] !== thinkEnd)
      throw new Error(`the ${which} turn has "\\n\\n" other than after </think>: thinking-off prompts end there`);
    return [...chain(newline, ids), ...(at >= 0 ? [] : [[blank, ids[0]] as [number, number]])];
  };
  return { transitions: turn(o.first, 'first'), branch: { marker, whenMarked: turn(o.second, 'second') } };
}

export interface ScriptedToolCall {
  name: string;
  arguments: Record<string, unknown>;
}

/** Whitespace JSON allows between tokens. */
const GAPS = ['', ' ', '  ', '\n', '\t'];
const TAG_GAPS = ['\n', '', ' ', '\t'];

/** A text made of fixed pieces and slots, each slot a list of interchangeable spellings. */
class Spellings {
  readonly parts: Array<string | number> = [];
  readonly slots: string[][] = [];
  /** The template's own choice per slot. */
  readonly usual: number[] = [];

  fixed(text: string): void {
    this.parts.push(text);
  }

  choice(options: string[], usual = 0): void {
    this.parts.push(this.slots.length);
    this.slots.push(options);
    this.usual.push(usual);
  }

  render(pick: number[]): string {
    return this.parts.map((p) => (typeof p === 'string' ? p : this.slots[p][pick[p]])).join('');
  }
}

function spellString(out: Spellings, s: string): void {
  const chars = [...s];
  const plain = chars.map((ch) => JSON.stringify(ch).slice(1, -1));
  const options = [`"${plain.join('')}"`];
  chars.forEach((ch, i) => {
    const hex = Array.from({ length: ch.length }, (_, u) => ch.charCodeAt(u).toString(16).padStart(4, '0'));
    // Qwen splits digits: an escape that repeats one (any \u00XX) can never help.
    if (ch !== '/' && hex.some((h) => /(\d).*\1/.test(h))) return;
    const escapes = ch === '/' ? ['\\/'] : [...new Set([hex.map((h) => `\\u${h}`).join(''), hex.map((h) => `\\u${h.toUpperCase()}`).join('')])];
    for (const e of escapes) options.push(`"${[...plain.slice(0, i), e, ...plain.slice(i + 1)].join('')}"`);
  });
  out.choice(options);
}

function spellJson(out: Spellings, v: unknown): void {
  if (typeof v === 'string') {
    spellString(out, v);
    return;
  }
  if (typeof v === 'number') {
    const text = JSON.stringify(v);
    const round = /^(-?[1-9]\d*?)(0+)$/.exec(text);
    out.choice(round ? [text, `${round[1]}e${round[2].length}`] : [text]);
    return;
  }
  if (v === null || typeof v !== 'object') {
    out.fixed(JSON.stringify(v));
    return;
  }
  const array = Array.isArray(v);
  const entries: Array<[string | null, unknown]> = array ? v.map((x) => [null, x]) : Object.entries(v);
  out.fixed(array ? '[' : '{');
  if (entries.length > 0) out.choice(GAPS);
  entries.forEach(([key, x], i) => {
    if (i > 0) {
      out.choice(GAPS);
      out.fixed(',');
      out.choice(GAPS, 1); // json.dumps / tojson write ", "
    }
    if (key !== null) {
      spellString(out, key);
      out.choice(GAPS);
      out.fixed(':');
      out.choice(GAPS, 1); // and ": "
    }
    spellJson(out, x);
  });
  if (entries.length > 0) out.choice(GAPS);
  out.fixed(array ? ']' : '}');
}

/**
 * A rendering of the Qwen3 tool call `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`
 * whose tokens are all distinct and none in `avoid`, as a bigram script needs. It starts
 * from the template's spelling and walks through JSON-equivalent ones (whitespace between
 * JSON tokens and inside the tags, `\/` and `\uXXXX` escapes, `1e2` for 100) until no
 * token repeats. Qwen splits digits, so `\u00XX` always repeats its `0`: escapes help
 * only for `/` and characters past U+00FF. The output parser reads it as the same call.
 */
export function distinctToolCallText(tokenizer: QwenTokenizer, call: ScriptedToolCall, avoid: Iterable<number> = []): string {
  const banned = new Set(avoid);
  const want = JSON.parse(JSON.stringify(call.arguments)) as unknown;
  const out = new Spellings();
  out.fixed('<tool_call>');
  out.choice(TAG_GAPS);
  spellJson(out, { name: call.name, arguments: want });
  out.choice(TAG_GAPS);
  out.fixed('</tool_call>');
  // Repeated or banned tokens, then (a little) each departure from the template's spelling.
  const cost = (pick: number[]) => {
    const text = out.render(pick);
    const ids = tokenizer.encode(text);
    const repeats = ids.length - new Set(ids).size + ids.filter((id) => banned.has(id)).length;
    const changes = pick.filter((p, i) => p !== out.usual[i]).length;
    return (tokenizer.decode(ids) === text ? repeats : repeats + 1000) + changes * 1e-4;
  };
  // Hill climbing with sideways moves: change one slot at a time to whatever costs least.
  const rand = mulberry32(7);
  const compact = out.usual.map(() => 0);
  let pick = [...out.usual];
  let current = cost(pick);
  let best = { pick, cost: current };
  for (let step = 1; step <= 4000 && best.cost >= 1; step++) {
    if (step % 400 === 0) {
      // Restart from one of the two styles, shaken up a little.
      pick = [...((step / 400) % 2 === 1 ? compact : out.usual)];
      for (let k = 0; k < 3; k++) {
        const s = Math.floor(rand() * pick.length);
        pick[s] = Math.floor(rand() * out.slots[s].length);
      }
      current = cost(pick);
    }
    const s = Math.floor(rand() * pick.length);
    const n = out.slots[s].length;
    if (n < 2) continue;
    const tries = n <= 8 ? Array.from({ length: n }, (_, i) => i) : Array.from({ length: 8 }, () => Math.floor(rand() * n));
    let moves: number[] = [];
    let low = Infinity;
    for (const option of tries) {
      if (option === pick[s]) continue;
      const c = cost(pick.map((p, i) => (i === s ? option : p)));
      if (c < low) [low, moves] = [c, [option]];
      else if (c === low) moves.push(option);
    }
    if (low <= current) {
      pick = pick.map((p, i) => (i === s ? moves[Math.floor(rand() * moves.length)] : p));
      current = low;
      if (current < best.cost) best = { pick, cost: current };
    }
  }
  const text = out.render(best.pick);
  const parsed = parseToolCallJson(text.slice('<tool_call>'.length, -'</tool_call>'.length));
  if (best.cost >= 1 || !parsed || parsed.name !== call.name || !isDeepStrictEqual(JSON.parse(parsed.arguments), want)) {
    throw new Error(
      `no rendering of the ${call.name} call with distinct tokens found (closest: ${JSON.stringify(text)}); shorten or reword its arguments`,
    );
  }
  return text;
}
