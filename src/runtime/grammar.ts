import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { InvalidRequestError } from '../errors.js';

/**
 * Structured outputs: before each token is sampled, every token that would take the output
 * out of a grammar is masked. The grammar engine is xgrammar (`@mlc-ai/web-xgrammar`, its
 * WebAssembly build), the library vLLM and SGLang use for the same job: it compiles a JSON
 * schema, JSON itself, a regular expression or an EBNF grammar against the tokenizer's
 * vocabulary, then gives each step's allowed tokens as a bitmask in under a millisecond.
 */

/** What the output must match: plain data, carried with a request to the worker. */
export type GrammarSpec =
  | { type: 'json_object' }
  | { type: 'json_schema'; schema: string }
  | { type: 'choice'; choices: string[] }
  | { type: 'regex'; pattern: string }
  | { type: 'ebnf'; grammar: string }
  /** xgrammar's structural-tag format (sequences of literal text and JSON schemas). */
  | { type: 'structural_tag'; format: Record<string, unknown> };

/** A spec and the request field it came from (named in a 400 when it does not compile). */
export interface GrammarRequest {
  spec: GrammarSpec;
  param: string;
}

// The slice of xgrammar's API used here (its typings are not exported for a CommonJS load).
interface XgMatcher {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  dispose(): void;
}
interface XgCompiled {
  dispose(): void;
}
interface XgCompiler {
  compileJSONSchema(
    schema: string,
    anyWhitespace?: boolean,
    indent?: number,
    separators?: [string, string],
    strictMode?: boolean,
  ): Promise<XgCompiled>;
  compileGrammar(grammar: string, rootRule?: string): Promise<XgCompiled>;
  compileStructuralTag(tag: unknown): Promise<XgCompiled>;
}
interface XgGrammar {
  toString(): string;
  dispose(): void;
}
interface Xgrammar {
  Grammar: {
    fromJSONSchema(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean): Promise<XgGrammar>;
    fromEBNF(grammar: string, rootRule?: string): Promise<XgGrammar>;
    fromStructuralTag(tag: unknown): Promise<XgGrammar>;
  };
  TokenizerInfo: {
    createTokenizerInfo(vocab: string[], vocabType: string, prependSpace: boolean, vocabSize: number, stopIds: number[]): Promise<unknown>;
  };
  GrammarCompiler: { createGrammarCompiler(info: unknown, cacheEnabled?: boolean): Promise<XgCompiler> };
  GrammarMatcher: { createGrammarMatcher(compiled: XgCompiled, overrideStopTokens?: number[]): Promise<XgMatcher> };
}

/** What xgrammar's C++ side printed during the current call: the reason behind an abort. */
let captured: string[] | null = null;

/**
 * Loads xgrammar. The package ships one UMD bundle under `"type": "module"`, so Node
 * would load it as an ES module, where the bundle's Node branch (CommonJS `module`,
 * `require`, `__filename`) finds none of them; it is evaluated with those bindings
 * instead. Its `console` is ours too: xgrammar reports why a schema or grammar is refused
 * only by printing it before aborting the call, and that text belongs in the 400.
 */
function loadXgrammar(): Xgrammar {
  const require = createRequire(import.meta.url);
  const file = require.resolve('@mlc-ai/web-xgrammar');
  const module = { exports: {} as Record<string, unknown> };
  const console_ = {
    ...console,
    error: (...args: unknown[]) => {
      if (captured) captured.push(args.map(String).join(' '));
      else console.error(...args);
    },
  };
  const evaluate = new Function('exports', 'module', 'require', '__filename', '__dirname', 'console', readFileSync(file, 'utf8'));
  evaluate(module.exports, module, require, file, dirname(file), console_);
  return module.exports as unknown as Xgrammar;
}

/** Runs an xgrammar call, turning its abort into the message it printed. */
async function explained<T>(call: () => Promise<T>): Promise<T> {
  captured = [];
  try {
    return await call();
  } catch (err) {
    const said = captured
      .map((line) => line.replace(/^\[FATAL\]\s*\S+:\d+:\s*/, '').trim())
      .filter((line) => line.length > 0 && !line.startsWith('Aborted('))
      .join('; ');
    throw new Error(said || (err as Error).message);
  } finally {
    captured = null;
  }
}

/**
 * Sets the logits of tokens a bitmask forbids (bit `id % 32` of word `id / 32` clear) to
 * -Infinity; returns how many tokens remain.
 */
export function applyMask(bits: Int32Array, logits: Float32Array): number {
  let allowed = 0;
  for (let word = 0; word * 32 < logits.length; word++) {
    const w = bits[word];
    const base = word * 32;
    const end = Math.min(32, logits.length - base);
    // Whole words are the common case: inside a string nearly everything is allowed,
    // between JSON tokens nearly nothing.
    if (w === -1 && end === 32) {
      allowed += 32;
    } else if (w === 0) {
      logits.fill(-Infinity, base, base + end);
    } else {
      for (let b = 0; b < end; b++) {
        if ((w >>> b) & 1) allowed++;
        else logits[base + b] = -Infinity;
      }
    }
  }
  return allowed;
}

/** One request's constraint: which tokens may come next, and the tokens taken. */
export class TokenConstraint {
  private disposed = false;
  /** The mask until the next token is taken: the check when the constraint is made computes the first one, the first step reuses it. */
  private next: Promise<Int32Array> | null = null;

  constructor(private readonly matcher: XgMatcher) {}

  /** Sets the logits of tokens the grammar forbids now to -Infinity; returns how many remain. */
  async mask(logits: Float32Array): Promise<number> {
    return applyMask(await this.nextBitmask(), logits);
  }

  /** The allowed tokens now, one bit per token id (callers do not change it). */
  nextBitmask(): Promise<Int32Array> {
    this.next ??= this.matcher.getNextTokenBitmask();
    return this.next;
  }

  /** Takes the sampled token; false if the grammar refuses it (it was masked: never). */
  accept(token: number): boolean {
    this.next = null;
    return this.matcher.acceptToken(token);
  }

  /** A stop token ended the grammar: the output is complete. */
  get terminated(): boolean {
    return this.matcher.isTerminated();
  }

  /** Frees the matcher's WebAssembly memory; safe to call twice. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.matcher.dispose();
  }
}

/**
 * Whitespace in JSON output. 'compact' is one line with ', ' and ': ' between items, the
 * spacing of Python's json.dumps, in which Qwen3's chat template writes tool calls (so
 * the model's own habit), and small models cannot fill an answer with newlines once a
 * value is done, a known failure of 'any' (vLLM's default; it added
 * `disable_any_whitespace` for it). A bounded count (xgrammar's max_whitespace_cnt) was
 * tried and dropped: its grammars were far slower to compile and larger to keep
 * (docs/structured-outputs.md).
 */
export type JsonWhitespace = 'compact' | 'any';

/**
 * xgrammar's JSON-schema options for a whitespace mode: anyWhitespace, indent (−1: one
 * line; its default, 2, pretty-prints), separators.
 */
function whitespaceArgs(ws: JsonWhitespace): [boolean, number | undefined, [string, string] | undefined] {
  return ws === 'any' ? [true, undefined, undefined] : [false, -1, [', ', ': ']];
}

/**
 * A structural-tag format with each JSON schema in it replaced by its grammar, compiled
 * here in the same whitespace mode as whole-answer schemas (structural tags take no
 * whitespace option, and allow any: a forced tool call's arguments from the test model
 * were all whitespace until max_tokens).
 */
async function spacedFormat(xg: Xgrammar, format: unknown, ws: JsonWhitespace): Promise<unknown> {
  if (Array.isArray(format)) return Promise.all(format.map((f) => spacedFormat(xg, f, ws)));
  if (format === null || typeof format !== 'object') return format;
  const f = format as Record<string, unknown>;
  if (f.type === 'json_schema') {
    const grammar = await xg.Grammar.fromJSONSchema(JSON.stringify(f.json_schema), ...whitespaceArgs(ws), true);
    try {
      return { type: 'grammar', grammar: grammar.toString() };
    } finally {
      grammar.dispose();
    }
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) out[k] = await spacedFormat(xg, v, ws);
  return out;
}

/**
 * A spec as xgrammar takes it: structural tags with their JSON schemas already turned
 * into grammars (text, so it moves between instances).
 */
async function prepared(xg: Xgrammar, spec: GrammarSpec, ws: JsonWhitespace): Promise<GrammarSpec> {
  return spec.type === 'structural_tag'
    ? { type: 'structural_tag', format: (await spacedFormat(xg, spec.format, ws)) as Record<string, unknown> }
    : spec;
}

const choiceGrammar = (choices: string[]) => `root ::= ${choices.map((c) => JSON.stringify(c)).join(' | ')}`;
const regexTag = (pattern: string) => ({ type: 'structural_tag', format: { type: 'regex', pattern } });

/**
 * Parses a prepared spec into a grammar without compiling it against the vocabulary:
 * every refusal seen (syntax, unsupported schema features, nesting too deep for its
 * stack) happens here, in an instance that is thrown away when it refuses.
 */
async function parse(xg: Xgrammar, spec: GrammarSpec, ws: JsonWhitespace): Promise<void> {
  let grammar: XgGrammar;
  switch (spec.type) {
    case 'json_object':
      return;
    case 'json_schema':
      grammar = await xg.Grammar.fromJSONSchema(spec.schema, ...whitespaceArgs(ws), true);
      break;
    case 'choice':
      grammar = await xg.Grammar.fromEBNF(choiceGrammar(spec.choices));
      break;
    case 'regex':
      grammar = await xg.Grammar.fromStructuralTag(regexTag(spec.pattern));
      break;
    case 'ebnf':
      grammar = await xg.Grammar.fromEBNF(spec.grammar);
      break;
    case 'structural_tag':
      grammar = await xg.Grammar.fromStructuralTag({ type: 'structural_tag', format: spec.format });
      break;
  }
  grammar.dispose();
}

/** Compiles a prepared spec against the vocabulary. */
async function compile(compiler: XgCompiler, spec: GrammarSpec, ws: JsonWhitespace): Promise<XgCompiled> {
  switch (spec.type) {
    // Any object: the schema {"type": "object"} outside strict mode, so any keys.
    case 'json_object':
      return compiler.compileJSONSchema('{"type": "object"}', ...whitespaceArgs(ws), false);
    // Strict mode, as vLLM compiles schemas: properties and items the schema does not
    // name are left out (every such output is still valid under the schema).
    case 'json_schema':
      return compiler.compileJSONSchema(spec.schema, ...whitespaceArgs(ws), true);
    case 'choice':
      return compiler.compileGrammar(choiceGrammar(spec.choices));
    case 'regex':
      return compiler.compileStructuralTag(regexTag(spec.pattern));
    case 'ebnf':
      return compiler.compileGrammar(spec.grammar);
    case 'structural_tag':
      return compiler.compileStructuralTag({ type: 'structural_tag', format: spec.format });
  }
}

/**
 * Grammars kept compiled, most recently used last. A compiled grammar holds xgrammar's
 * token masks for its states (small: docs/structured-outputs.md). xgrammar's own cache
 * keeps every grammar ever compiled, which
 * a client sending fresh schemas would grow without bound, so it is off and this cache
 * serves repeated schemas instead.
 */
const KEPT_GRAMMARS = 32;

/**
 * Compiles grammars for one tokenizer and makes a constraint per request. It lives on the
 * grammar thread (src/engine/grammar_thread.ts), since xgrammar's state cannot cross
 * threads and a compile must never hold up the engine's steps; a repeated spec is taken
 * from the cache.
 */
export class GrammarCompiler {
  private readonly kept = new Map<string, XgCompiled>();
  /**
   * A second xgrammar instance that parses each new spec first. xgrammar refuses by
   * aborting inside WebAssembly, which leaves that instance's memory and stack as the
   * abort found them (after tens of refusals every call failed); the parser instance is
   * replaced after each refusal, so the instance holding compiled grammars and matchers
   * never sees one.
   */
  private parser: Xgrammar;
  /**
   * Set when the compiling instance itself faulted (a spec that parsed but did not
   * compile, or a matcher call that threw): its state can no longer be trusted, and the
   * owner must build a new compiler.
   */
  broken: string | null = null;

  private constructor(
    private readonly compiler: XgCompiler,
    private readonly xg: Xgrammar,
    private readonly whitespace: JsonWhitespace,
  ) {
    this.parser = loadXgrammar();
  }

  /**
   * `vocabulary`: each token id's text in byte-level form ('' for special tokens and
   * holes, which constrained output never contains), padded to the model's vocab size.
   */
  static async create(vocabulary: string[], stopTokenIds: number[], whitespace: JsonWhitespace = 'compact'): Promise<GrammarCompiler> {
    const xg = loadXgrammar();
    const info = await explained(() => xg.TokenizerInfo.createTokenizerInfo(vocabulary, 'byte_level', false, vocabulary.length, stopTokenIds));
    return new GrammarCompiler(await xg.GrammarCompiler.createGrammarCompiler(info, false), xg, whitespace);
  }

  /** Grammars currently kept compiled (for tests). */
  get keptCount(): number {
    return this.kept.size;
  }

  private async compiled(request: GrammarRequest): Promise<XgCompiled> {
    const key = JSON.stringify(request.spec);
    let compiled = this.kept.get(key);
    if (compiled) {
      this.kept.delete(key); // re-inserted below: most recently used last
    } else {
      const refuse = (err: unknown) =>
        new InvalidRequestError(`${request.param} cannot be used for constrained decoding: ${(err as Error).message}`, { param: request.param });
      let spec: GrammarSpec;
      try {
        spec = await explained(async () => {
          const p = await prepared(this.parser, request.spec, this.whitespace);
          await parse(this.parser, p, this.whitespace);
          return p;
        });
      } catch (err) {
        this.parser = loadXgrammar();
        throw refuse(err);
      }
      try {
        compiled = await explained(() => compile(this.compiler, spec, this.whitespace));
      } catch (err) {
        this.broken = `compiling a spec that parsed failed: ${(err as Error).message}`;
        throw refuse(err);
      }
    }
    this.kept.set(key, compiled);
    if (this.kept.size > KEPT_GRAMMARS) {
      const [oldest, grammar] = this.kept.entries().next().value!;
      this.kept.delete(oldest);
      grammar.dispose(); // matchers made from it hold their own reference
    }
    return compiled;
  }

  /**
   * A fresh constraint for one request; a spec xgrammar refuses, or one that allows no
   * first token (a schema that only refers to itself), is a 400 naming `param`.
   */
  async constraint(request: GrammarRequest, stopTokenIds: number[]): Promise<TokenConstraint> {
    const compiled = await this.compiled(request);
    const constraint = new TokenConstraint(await this.xg.GrammarMatcher.createGrammarMatcher(compiled, stopTokenIds));
    if (!(await constraint.nextBitmask()).some((word) => word !== 0)) {
      constraint.dispose();
      throw new InvalidRequestError(`${request.param} accepts no output at all: no text can satisfy it.`, { param: request.param });
    }
    return constraint;
  }
}
