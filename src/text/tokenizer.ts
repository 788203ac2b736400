import { createHash } from 'node:crypto';
import { Tokenizer } from '@huggingface/tokenizers';
import {
  byteLevelVocab,
  parseTokenizerFiles,
  readTokenizerTexts,
  type TokenizerFiles,
  type TokenVocabulary,
  VocabularyTable,
} from './token_vocabulary.js';

export type { TokenizerFiles, TokenVocabulary } from './token_vocabulary.js';

/** Tokenizers by the digest of their files, held only while a model uses them. */
const built = new Map<string, WeakRef<QwenTokenizer>>();
const forget = new FinalizationRegistry<string>((key) => {
  if (built.get(key)?.deref() === undefined) built.delete(key);
});
/**
 * The last tokenizer built or shared, held even when no model does: a model loaded again,
 * or the next Qwen3 model (they all have the same tokenizer), then starts without building
 * it again, and its tokenizer thread (tokenizer_thread_client.ts, keyed by this instance)
 * is still the loaded one.
 */
let lastUsed: { key: string; tokenizer: QwenTokenizer } | null = null;

/**
 * The checkpoint's tokenizer (`@huggingface/tokenizers` on tokenizer.json) plus what
 * streaming needs: the exact bytes of every token (its VocabularyTable), so text can be
 * produced byte-exactly as tokens arrive.
 */
export class QwenTokenizer implements TokenVocabulary {
  private readonly tok: Tokenizer;
  /** The parsed tokenizer.json and tokenizer_config.json (with the chat template) it was built from. */
  readonly files: TokenizerFiles;
  private table: VocabularyTable | null = null;

  constructor(files: TokenizerFiles) {
    byteLevelVocab(files);
    this.files = files;
    this.tok = new Tokenizer(files.tokenizer, files.config);
  }

  /** Built when first asked for: a thread that only encodes and decodes never needs it. */
  get vocabulary(): VocabularyTable {
    this.table ??= VocabularyTable.fromFiles(this.files);
    return this.table;
  }

  /**
   * The tokenizer of a model folder. Folders whose tokenizer files say the same share one
   * instance while any holds it: every Qwen3 checkpoint has the same 11 MB tokenizer.json,
   * which takes most of a second and over a hundred megabytes to build.
   */
  static fromDir(dir: string): QwenTokenizer {
    const texts = readTokenizerTexts(dir);
    const key = createHash('sha256')
      .update(texts.tokenizer)
      .update('\0')
      .update(texts.config ?? '')
      .update('\0')
      .update(texts.template ?? '')
      .digest('hex');
    if (lastUsed?.key === key) return lastUsed.tokenizer;
    let tokenizer = built.get(key)?.deref();
    if (!tokenizer) {
      tokenizer = new QwenTokenizer(parseTokenizerFiles(texts));
      built.set(key, new WeakRef(tokenizer));
      forget.register(tokenizer, key);
    }
    lastUsed = { key, tokenizer };
    return tokenizer;
  }

  get specialIds(): ReadonlySet<number> {
    return this.vocabulary.specialIds;
  }

  get vocabSize(): number {
    return this.vocabulary.vocabSize;
  }

  /** Token ids of `text`; special-token text such as `<|im_start|>` maps to its id. */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[], skipSpecialTokens = false): string {
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  textTokenBytes(): Array<Uint8Array | null> {
    return this.vocabulary.textTokenBytes();
  }

  byteLevelVocabulary(size: number): string[] {
    return this.vocabulary.byteLevelVocabulary(size);
  }

  tokenBytes(id: number): Uint8Array | null {
    return this.vocabulary.tokenBytes(id);
  }

  /** The token's text as the tokenizer spells it (byte-level pieces look like `Ġthe`). */
  tokenPiece(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  tokenId(text: string): number | undefined {
    return this.tok.token_to_id(text);
  }
}
