import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
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

export function readTokenizerFiles(dir: string): TokenizerFiles {
  const tokPath = join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new ModelFormatError(`${dir} has no tokenizer.json.`);
  const cfgPath = join(dir, 'tokenizer_config.json');
  return {
    tokenizer: JSON.parse(readFileSync(tokPath, 'utf8')) as Record<string, unknown>,
    config: existsSync(cfgPath) ? (JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>) : {},
  };
}

/**
 * The checkpoint's tokenizer (`@huggingface/tokenizers` on tokenizer.json) plus what
 * streaming needs: the exact bytes of every token, so text can be produced byte-exactly
 * as tokens arrive.
 */
export class QwenTokenizer {
  private readonly tok: Tokenizer;
  /** Raw bytes per token id; null where the vocabulary has a hole. */
  private readonly bytes: Array<Uint8Array | null>;
  readonly specialIds: Set<number>;
  readonly vocabSize: number;

  constructor(files: TokenizerFiles) {
    this.tok = new Tokenizer(files.tokenizer, files.config);
    const model = files.tokenizer.model as { vocab?: Record<string, number> } | undefined;
    const decoder = files.tokenizer.decoder as { type?: string } | null | undefined;
    if (!model?.vocab || decoder?.type !== 'ByteLevel') {
      throw new ModelFormatError('tokenizer.json is not a byte-level BPE tokenizer (Qwen2/Qwen3 family).');
    }
    const table = byteLevelDecoderTable();
    const added = (files.tokenizer.added_tokens ?? []) as Array<{ id: number; content: string; special: boolean }>;
    let maxId = 0;
    for (const id of Object.values(model.vocab)) maxId = Math.max(maxId, id);
    for (const t of added) maxId = Math.max(maxId, t.id);
    this.vocabSize = maxId + 1;
    this.bytes = new Array<Uint8Array | null>(this.vocabSize).fill(null);
    for (const [piece, id] of Object.entries(model.vocab)) {
      const out = new Uint8Array(piece.length);
      let n = 0;
      for (const ch of piece) {
        const b = table.get(ch);
        if (b === undefined) throw new ModelFormatError(`tokenizer.json: token ${id} has a character outside the byte-level alphabet.`);
        out[n++] = b;
      }
      this.bytes[id] = out.subarray(0, n);
    }
    const enc = new TextEncoder();
    this.specialIds = new Set();
    for (const t of added) {
      this.bytes[t.id] = enc.encode(t.content);
      if (t.special) this.specialIds.add(t.id);
    }
  }

  static fromDir(dir: string): QwenTokenizer {
    return new QwenTokenizer(readTokenizerFiles(dir));
  }

  /** Token ids of `text`; special-token text such as `<|im_start|>` maps to its id. */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[], skipSpecialTokens = false): string {
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  /** Bytes of every id, with special tokens as null: what constrained decoding may emit. */
  textTokenBytes(): Array<Uint8Array | null> {
    return this.bytes.map((b, id) => (this.specialIds.has(id) ? null : b));
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

  tokenBytes(id: number): Uint8Array | null {
    return id >= 0 && id < this.bytes.length ? this.bytes[id] : null;
  }

  /** The token's text as the tokenizer spells it (byte-level pieces look like `Ġthe`). */
  tokenPiece(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  tokenId(text: string): number | undefined {
    return this.tok.token_to_id(text);
  }
}
