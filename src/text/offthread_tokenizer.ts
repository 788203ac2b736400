import { Worker } from 'node:worker_threads';
import { InvalidRequestError } from '../errors.js';
import type { QwenTokenizer } from './tokenizer.js';
import type { TokenizerJob, TokenizerResult } from './tokenizer_thread.js';

/**
 * Texts up to this many characters are encoded on the calling thread (well under a
 * millisecond each); longer ones go to the tokenizer thread, where BPE on a long word
 * can take seconds without blocking anything else.
 */
const INLINE_CHARS = 8192;
/** Token lists up to this long are decoded on the calling thread. */
const INLINE_TOKENS = 8192;

interface Job {
  job: TokenizerJob;
  resolve: (r: TokenizerResult) => void;
  reject: (err: Error) => void;
  /** Work no request waits for: it runs only when no other job waits. */
  background: boolean;
}

/**
 * Tokenizes on a worker thread when the input is long. Jobs run one at a time; one
 * that runs past `timeoutMs` is refused with a 400 and the thread is replaced (the only
 * way to stop a tokenization under way), so a degenerate input cannot hold the queue.
 */
export class OffThreadTokenizer {
  private thread: Worker | null = null;
  /** The thread has loaded its tokenizer (a job's time bound starts then). */
  private loaded = false;
  private readonly queue: Job[] = [];
  private running: { job: Job; timer: NodeJS.Timeout } | null = null;
  private nextId = 0;
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
    this.loaded = false;
    this.thread = this.spawn();
  }

  async encode(text: string): Promise<number[]> {
    if (text.length <= INLINE_CHARS) return this.tokenizer.encode(text);
    const r = await this.run({ id: this.nextId++, type: 'encode', text });
    return r.ids!;
  }

  /**
   * Encodes for work no request waits for (a conversation's next turn, warmed ahead): always
   * on the tokenizer thread, whatever the length, and only when no request's job waits, so
   * a slow text never holds up the HTTP thread or a request.
   */
  async encodeInBackground(text: string): Promise<number[]> {
    const r = await this.run({ id: this.nextId++, type: 'encode', text }, true);
    return r.ids!;
  }

  async decode(ids: number[], skipSpecialTokens = false): Promise<string> {
    if (ids.length <= INLINE_TOKENS) return this.tokenizer.decode(ids, skipSpecialTokens);
    const r = await this.run({ id: this.nextId++, type: 'decode', ids, skipSpecialTokens });
    return r.text!;
  }

  async close(): Promise<void> {
    this.closed = true;
    const t = this.thread;
    this.thread = null;
    await t?.terminate();
  }

  private run(job: TokenizerJob, background = false): Promise<TokenizerResult> {
    if (this.closed) return Promise.reject(new Error('the tokenizer is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ job, resolve, reject, background });
      this.pump();
    });
  }

  private spawn(): Worker {
    const thread = new Worker(new URL('./tokenizer_thread.js', import.meta.url), { workerData: this.dir });
    thread.unref();
    thread.on('message', (r: TokenizerResult) => {
      if (this.thread !== thread) return;
      if (r.id === -1) {
        this.loaded = true;
        this.pump();
        return;
      }
      if (!this.running || this.running.job.job.id !== r.id) return;
      const { job, timer } = this.running;
      clearTimeout(timer);
      this.running = null;
      if (r.error !== undefined) job.reject(new InvalidRequestError(`The text could not be tokenized: ${r.error}`));
      else job.resolve(r);
      this.pump();
    });
    const lost = (why: string) => {
      if (this.thread !== thread) return;
      this.thread = null;
      if (this.running) {
        clearTimeout(this.running.timer);
        this.running.job.reject(new Error(`the tokenizer thread ${why}`));
        this.running = null;
      } else if (!this.loaded) {
        // It died while loading: fail what waits rather than start threads in a loop.
        for (const job of this.queue.splice(0)) job.reject(new Error(`the tokenizer thread ${why}`));
      }
      this.pump();
    };
    thread.on('error', (err) => lost(`failed: ${err.message}`));
    thread.on('exit', () => lost('exited'));
    return thread;
  }

  private pump(): void {
    if (this.running || this.closed || this.queue.length === 0) return;
    if (!this.thread) {
      this.loaded = false;
      this.thread = this.spawn();
    }
    if (!this.loaded) return;
    const first = this.queue.findIndex((j) => !j.background);
    const next = this.queue.splice(Math.max(first, 0), 1)[0];
    const timer = setTimeout(() => {
      if (this.running?.job !== next) return;
      this.running = null;
      const old = this.thread;
      this.thread = null;
      void old?.terminate();
      next.reject(new InvalidRequestError(`The text could not be tokenized within ${this.timeoutMs / 1000} s; it is too long or too repetitive.`));
      this.pump();
    }, this.timeoutMs);
    this.running = { job: next, timer };
    this.thread.postMessage(next.job);
  }
}
