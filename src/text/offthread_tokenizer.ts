import type { QwenTokenizer } from './tokenizer.js';
import type { TokenizerResult } from './tokenizer_thread.js';
import { type TokenizerTask, TokenizerThread } from './tokenizer_thread_client.js';

/**
 * Texts up to this many characters are encoded on the calling thread (well under a
 * millisecond each); longer ones go to the tokenizer thread, where BPE on a long word
 * can take seconds without blocking anything else.
 */
const INLINE_CHARS = 8192;
/** Token lists up to this long are decoded on the calling thread. */
const INLINE_TOKENS = 8192;

/**
 * Tokenizes on the tokenizer thread (src/text/tokenizer_thread_client.ts) when the input is
 * long, on the calling thread otherwise. A request's job always runs before a warm-up's.
 */
export class OffThreadTokenizer {
  private thread: TokenizerThread | null = null;
  private closed = false;

  constructor(
    readonly tokenizer: QwenTokenizer,
    private readonly dir: string,
    private readonly timeoutMs: number,
  ) {}

  /**
   * Starts the thread and its tokenizer now (the server calls it at start): loading takes a
   * second or more, which the first long prompt would otherwise wait for.
   */
  start(): void {
    if (this.thread || this.closed) return;
    this.thread = TokenizerThread.acquire(this.tokenizer, this.dir);
  }

  async encode(text: string): Promise<number[]> {
    if (text.length <= INLINE_CHARS) return this.tokenizer.encode(text);
    const r = await this.run({ type: 'encode', text });
    return r.ids!;
  }

  /**
   * Encodes for work no request waits for (a conversation's next turn, warmed ahead): always
   * on the tokenizer thread, whatever the length, and only when no request's job waits, so
   * a slow text never holds up the HTTP thread or a request.
   */
  async encodeInBackground(text: string): Promise<number[]> {
    const r = await this.run({ type: 'encode', text }, true);
    return r.ids!;
  }

  async decode(ids: number[], skipSpecialTokens = false): Promise<string> {
    if (ids.length <= INLINE_TOKENS) return this.tokenizer.decode(ids, skipSpecialTokens);
    const r = await this.run({ type: 'decode', ids, skipSpecialTokens });
    return r.text!;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.thread?.release();
    this.thread = null;
  }

  private run(task: TokenizerTask, background = false): Promise<TokenizerResult> {
    if (this.closed) return Promise.reject(new Error('the tokenizer is closed'));
    this.start();
    return this.thread!.run(task, this.timeoutMs, background);
  }
}
