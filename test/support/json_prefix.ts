/**
 * A byte-level recognizer of JSON object prefixes, written apart from the server's
 * grammar engine (xgrammar) so tests can check what constrained decoding produced: is the
 * output a prefix of one JSON object, and is the object complete?
 */

enum Mode {
  Value, // a value must start (whitespace allowed)
  TopObject, // the top-level value, which must be an object
  KeyOrEnd, // after '{': a key or '}'
  Key, // after ',' in an object: a key
  Colon, // after a key: ':'
  After, // after a value: ',' or a closing bracket
  Str, // inside a string
  Num, // inside a number
  Lit, // inside true / false / null
  Done, // the object is complete
}

// Number sub-states: which characters may come next.
enum N {
  Minus, // after '-'
  Zero, // after a leading 0
  Int, // in the integer part
  Dot, // after '.'
  Frac, // in the fraction
  E, // after e/E
  ESign, // after the exponent sign
  Exp, // in the exponent
}

export interface JsonState {
  mode: Mode;
  /** Open brackets, innermost last. */
  stack: string;
  /** Str: 0 plain, 1 after '\\', 2–5 hex digits of \\u left; Num: N; Lit: rest of the literal. */
  sub: number;
  lit: string;
  /** Str: the string is an object key. */
  key: boolean;
}

export function initialJsonState(): JsonState {
  return { mode: Mode.TopObject, stack: '', sub: 0, lit: '', key: false };
}

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);

function numCanEnd(sub: number): boolean {
  return sub === N.Zero || sub === N.Int || sub === N.Frac || sub === N.Exp;
}

/** After a value closes: back to the enclosing container, or done. */
function afterValue(s: JsonState): void {
  s.mode = s.stack.length === 0 ? Mode.Done : Mode.After;
}

/** Starts a value at byte `b`; returns false if no value can start with it. */
function startValue(s: JsonState, b: number): boolean {
  if (b === 0x7b) {
    s.stack += '{';
    s.mode = Mode.KeyOrEnd;
  } else if (b === 0x5b) {
    s.stack += '[';
    s.mode = Mode.Value;
    s.sub = 1; // "may close at once"
  } else if (b === 0x22) {
    s.mode = Mode.Str;
    s.sub = 0;
    s.key = false;
  } else if (b === 0x2d) {
    s.mode = Mode.Num;
    s.sub = N.Minus;
  } else if (b === 0x30) {
    s.mode = Mode.Num;
    s.sub = N.Zero;
  } else if (isDigit(b)) {
    s.mode = Mode.Num;
    s.sub = N.Int;
  } else if (b === 0x74 || b === 0x66 || b === 0x6e) {
    s.mode = Mode.Lit;
    s.lit = b === 0x74 ? 'rue' : b === 0x66 ? 'alse' : 'ull';
  } else {
    return false;
  }
  return true;
}

function close(s: JsonState, b: number): boolean {
  const open = s.stack[s.stack.length - 1];
  if ((b === 0x7d && open !== '{') || (b === 0x5d && open !== '[')) return false;
  s.stack = s.stack.slice(0, -1);
  afterValue(s);
  return true;
}

/** Feeds one byte; returns false (leaving `s` unusable) if the output would stop being JSON. */
export function feedByte(s: JsonState, b: number): boolean {
  switch (s.mode) {
    case Mode.TopObject:
      if (isWs(b)) return true;
      return b === 0x7b && startValue(s, b);
    case Mode.Value:
      if (isWs(b)) return true;
      if (b === 0x5d && s.sub === 1) return close(s, b);
      s.sub = 0;
      return startValue(s, b);
    case Mode.KeyOrEnd:
    case Mode.Key:
      if (isWs(b)) return true;
      if (b === 0x7d && s.mode === Mode.KeyOrEnd) return close(s, b);
      if (b !== 0x22) return false;
      s.mode = Mode.Str;
      s.sub = 0;
      s.key = true;
      return true;
    case Mode.Colon:
      if (isWs(b)) return true;
      if (b !== 0x3a) return false;
      s.mode = Mode.Value;
      s.sub = 0;
      return true;
    case Mode.After:
      if (isWs(b)) return true;
      if (b === 0x2c) {
        s.mode = s.stack[s.stack.length - 1] === '{' ? Mode.Key : Mode.Value;
        s.sub = 0;
        return true;
      }
      return b === 0x7d || b === 0x5d ? close(s, b) : false;
    case Mode.Str:
      if (s.sub === 1) {
        if (b === 0x75) s.sub = 5;
        else if ('"\\/bfnrt'.includes(String.fromCharCode(b))) s.sub = 0;
        else return false;
        return true;
      }
      if (s.sub >= 2) {
        if (!isHex(b)) return false;
        s.sub = s.sub === 2 ? 0 : s.sub - 1;
        return true;
      }
      if (b === 0x22) {
        if (s.key) s.mode = Mode.Colon;
        else afterValue(s);
        return true;
      }
      if (b === 0x5c) {
        s.sub = 1;
        return true;
      }
      return b >= 0x20; // raw control characters are not allowed; UTF-8 bytes are
    case Mode.Num: {
      const n = s.sub;
      if (isDigit(b)) {
        if (n === N.Zero) return false;
        s.sub = n === N.Minus ? (b === 0x30 ? N.Zero : N.Int) : n === N.Dot ? N.Frac : n === N.E || n === N.ESign ? N.Exp : n;
        return true;
      }
      if (b === 0x2e && (n === N.Zero || n === N.Int)) {
        s.sub = N.Dot;
        return true;
      }
      if ((b === 0x65 || b === 0x45) && (n === N.Zero || n === N.Int || n === N.Frac)) {
        s.sub = N.E;
        return true;
      }
      if ((b === 0x2b || b === 0x2d) && n === N.E) {
        s.sub = N.ESign;
        return true;
      }
      if (!numCanEnd(n)) return false;
      afterValue(s);
      return feedByte(s, b);
    }
    case Mode.Lit:
      if (b !== s.lit.charCodeAt(0)) return false;
      s.lit = s.lit.slice(1);
      if (s.lit.length === 0) afterValue(s);
      return true;
    case Mode.Done:
      return false;
  }
}

/** The state after `bytes`, or null if they break the JSON. */
export function advance(state: JsonState, bytes: Uint8Array): JsonState | null {
  const s = { ...state };
  for (let i = 0; i < bytes.length; i++) if (!feedByte(s, bytes[i])) return null;
  return s;
}

export function isComplete(s: JsonState): boolean {
  return s.mode === Mode.Done;
}
