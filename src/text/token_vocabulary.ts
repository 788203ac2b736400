import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModelFormatError } from '../errors.js';

/** GPT-2's byte ↔ printable-character table, which Qwen2's byte-level BPE uses. */
function byteLevelDecoderTable(): Map<string, number> {
  const bytes: number[] = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + n++);
    }
  }
  return new Map(bytes.map((b, i) => [String.fromCodePoint(chars[i]), b]));
}

/**
 * The decoder table indexed by character code (all below 324): the byte each printable
 * character stands for, -1 elsewhere. An array lookup per character, not a Map lookup of a
 * one-character string, since every thread that loads the tokenizer walks all 151k tokens.
 */
function byteLevelCodeTable(): Int16Array {
  const table = new Int16Array(324).fill(-1);
  for (const [ch, b] of byteLevelDecoderTable()) table[ch.charCodeAt(0)] = b;
  return table;
}

/** The inverse table: the printable character standing for each byte. */
function byteLevelEncoderTable(): string[] {
  const chars = new Array<string>(256);
  for (const [ch, b] of byteLevelDecoderTable()) chars[b] = ch;
  return chars;
}

export interface TokenizerFiles {
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
}

/** The raw texts of a model's tokenizer files: what `parseTokenizerFiles` reads, and a key for their content. */
export interface TokenizerTexts {
  tokenizer: string;
  config: string | null;
  template: string | null;
}

export function readTokenizerTexts(dir: string): TokenizerTexts {
  const tokPath = join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new ModelFormatError(`${dir} has no tokenizer.json.`);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const templatePath = join(dir, 'chat_template.jinja');
  return {
    tokenizer: readFileSync(tokPath, 'utf8'),
    config: existsSync(cfgPath) ? readFileSync(cfgPath, 'utf8') : null,
    template: existsSync(templatePath) ? readFileSync(templatePath, 'utf8') : null,
  };
}

export function parseTokenizerFiles(texts: TokenizerTexts): TokenizerFiles {
  const config = texts.config !== null ? (JSON.parse(texts.config) as Record<string, unknown>) : {};
  // Newer checkpoints keep the chat template in a file of its own, which then wins (as in transformers).
  if (texts.template !== null) config.chat_template = texts.template;
  return { tokenizer: JSON.parse(texts.tokenizer) as Record<string, unknown>, config };
}

export function readTokenizerFiles(dir: string): TokenizerFiles {
  return parseTokenizerFiles(readTokenizerTexts(dir));
}

/** What the engine needs of a tokenizer: every token's bytes and the special ones, never encoding. */
export interface TokenVocabulary {
  readonly specialIds: ReadonlySet<number>;
  readonly vocabSize: number;
  tokenBytes(id: number): Uint8Array | null;
  tokenId(text: string): number | undefined;
  /** Bytes of every id, with special tokens as null: what constrained decoding may emit. */
  textTokenBytes(): Array<Uint8Array | null>;
  byteLevelVocabulary(size: number): string[];
}

/**
 * A vocabulary as plain data (typed arrays and a short list), so the thread that read
 * tokenizer.json can hand it to another instead of that thread parsing the file again.
 */
export interface VocabularyData {
  pool: Uint8Array;
  byteStart: Int32Array;
  byteLength: Int32Array;
  added: Array<{ id: number; content: string; special: boolean }>;
}

/** Checks that tokenizer.json is a byte-level BPE tokenizer, and returns its vocabulary. */
export function byteLevelVocab(files: TokenizerFiles): Record<string, number> {
  const model = files.tokenizer.model as { vocab?: Record<string, number> } | undefined;
  const decoder = files.tokenizer.decoder as { type?: string } | null | undefined;
  if (!model?.vocab || decoder?.type !== 'ByteLevel') {
    throw new ModelFormatError('tokenizer.json is not a byte-level BPE tokenizer (Qwen2/Qwen3 family).');
  }
  return model.vocab;
}

/** The vocabulary's bytes from tokenizer.json, without building the tokenizer itself. */
function vocabularyData(files: TokenizerFiles): VocabularyData {
  const vocab = byteLevelVocab(files);
  const table = byteLevelCodeTable();
  const added = ((files.tokenizer.added_tokens ?? []) as Array<{ id: number; content: string; special: boolean }>).map(
    ({ id, content, special }) => ({ id, content, special }),
  );
  // One pass over the keys: iterating an object of 151k keys is what a start spends here.
  const pieces = Object.keys(vocab);
  const ids = new Int32Array(pieces.length);
  let maxId = 0;
  let total = 0;
  for (let i = 0; i < pieces.length; i++) {
    ids[i] = vocab[pieces[i]];
    if (ids[i] > maxId) maxId = ids[i];
    total += pieces[i].length;
  }
  for (const t of added) maxId = Math.max(maxId, t.id);
  const byteStart = new Int32Array(maxId + 1).fill(-1);
  const byteLength = new Int32Array(maxId + 1);
  const pool = new Uint8Array(total);
  let at = 0;
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i];
    const id = ids[i];
    byteStart[id] = at;
    byteLength[id] = piece.length;
    for (let j = 0; j < piece.length; j++) {
      const code = piece.charCodeAt(j);
      const b = code < table.length ? table[code] : -1;
      if (b < 0) throw new ModelFormatError(`tokenizer.json: token ${id} has a character outside the byte-level alphabet.`);
      pool[at++] = b;
    }
  }
  return { pool, byteStart, byteLength, added };
}

/**
 * A byte-level BPE vocabulary: the engine's worker needs the exact bytes of every token
 * (streaming text, grammars), never encoding, so it takes this rather than a tokenizer.
 */
export class VocabularyTable implements TokenVocabulary {
  /**
   * Raw bytes of every vocabulary token, one after another: token `id` is `byteLength[id]`
   * bytes from `byteStart[id]` (-1 where the vocabulary has a hole). One buffer rather than
   * 151k small arrays, so that it is cheap to build and to hand to another thread.
   */
  private readonly pool: Uint8Array;
  private readonly byteStart: Int32Array;
  private readonly byteLength: Int32Array;
  private readonly added: VocabularyData['added'];
  /** Added tokens' bytes (their content as UTF-8), which take precedence over the vocabulary's. */
  private readonly addedBytes = new Map<number, Uint8Array>();
  private readonly addedIds = new Map<string, number>();
  readonly specialIds: Set<number>;
  readonly vocabSize: number;

  constructor(data: VocabularyData) {
    this.pool = data.pool;
    this.byteStart = data.byteStart;
    this.byteLength = data.byteLength;
    this.added = data.added;
    this.vocabSize = data.byteStart.length;
    const enc = new TextEncoder();
    this.specialIds = new Set();
    for (const t of data.added) {
      this.addedBytes.set(t.id, enc.encode(t.content));
      this.addedIds.set(t.content, t.id);
      if (t.special) this.specialIds.add(t.id);
    }
  }

  static fromFiles(files: TokenizerFiles): VocabularyTable {
    return new VocabularyTable(vocabularyData(files));
  }

  /** The table as plain data, for another thread (structured clone copies the arrays). */
  data(): VocabularyData {
    return { pool: this.pool, byteStart: this.byteStart, byteLength: this.byteLength, added: this.added };
  }

  static fromDir(dir: string): VocabularyTable {
    return VocabularyTable.fromFiles(readTokenizerFiles(dir));
  }

  tokenBytes(id: number): Uint8Array | null {
    const added = this.addedBytes.get(id);
    if (added) return added;
    if (!(id >= 0 && id < this.vocabSize) || this.byteStart[id] < 0) return null;
    return this.pool.subarray(this.byteStart[id], this.byteStart[id] + this.byteLength[id]);
  }

  /** The id of a token spelled as tokenizer.json spells it (an added token's content, or a byte-level piece). */
  tokenId(text: string): number | undefined {
    const added = this.addedIds.get(text);
    if (added !== undefined) return added;
    // A byte-level piece: its bytes, then the token with exactly those bytes. A scan, since
    // the few lookups an engine makes at start cost less than a map of 151k pieces.
    const table = byteLevelCodeTable();
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i);
      const b = code < table.length ? table[code] : -1;
      if (b < 0) return undefined;
      bytes[i] = b;
    }
    for (let id = 0; id < this.vocabSize; id++) {
      if (this.byteLength[id] !== bytes.length || this.byteStart[id] < 0) continue;
      const start = this.byteStart[id];
      let same = true;
      for (let i = 0; i < bytes.length && same; i++) same = this.pool[start + i] === bytes[i];
      if (same) return id;
    }
    return undefined;
  }

  textTokenBytes(): Array<Uint8Array | null> {
    return Array.from({ length: this.vocabSize }, (_, id) => (this.specialIds.has(id) ? null : this.tokenBytes(id)));
  }

  /**
   * Every id's bytes spelled in the byte-level alphabet (as tokenizer.json spells its
   * vocabulary), '' for special tokens and ids without a token, padded to `size` (the
   * model's vocabulary may be larger than the tokenizer's): what grammar compilers take.
   */
  byteLevelVocabulary(size: number): string[] {
    const chars = byteLevelEncoderTable();
    const out = new Array<string>(Math.max(size, this.vocabSize)).fill('');
    this.textTokenBytes().forEach((b, id) => {
      if (b) out[id] = Array.from(b, (byte) => chars[byte]).join('');
    });
    return out;
  }
}
