import { Worker } from 'node:worker_threads';
import { InvalidRequestError } from '../errors.js';
import type { QwenTokenizer } from './tokenizer.js';
import type { TokenizerJob, TokenizerResult } from './tokenizer_thread.js';

/** A job as a caller gives it: the thread client numbers it. */
export type TokenizerTask = { type: 'encode'; text: string } | { type: 'decode'; ids: number[]; skipSpecialTokens: boolean };

interface Job {
  job: TokenizerJob;
  resolve: (r: TokenizerResult) => void;
  reject: (err: Error) => void;
  /** Work no request waits for: it runs only when no other job waits. */
  background: boolean;
  timeoutMs: number;
}

/** How long a thread no model uses is kept, so a model loaded again soon after finds it loaded. */
const IDLE_MS = 30_000;

/**
 * One tokenizer thread and its queue, shared by the models whose tokenizer is the same
 * instance (QwenTokenizer.fromDir shares one per content): loading it takes most of a second
 * and a hundred megabytes, the same for every Qwen3 model. Jobs run one at a time; one that
 * runs past its time bound is refused with a 400 and the thread is replaced (the only way to
 * stop a tokenization under way), so a degenerate input cannot hold the queue.
 */
export class TokenizerThread {
  private thread: Worker | null = null;
  /** The thread has loaded its tokenizer (a job's time bound starts then). */
  private loaded = false;
  private readonly queue: Job[] = [];
  private running: { job: Job; timer: NodeJS.Timeout } | null = null;
  private nextId = 0;
  private users = 0;
  private idle: NodeJS.Timeout | null = null;

  /** `dir`: a model folder holding the tokenizer files, which a new thread loads. */
  private constructor(private dir: string) {}

  /** The thread of this tokenizer, started now (the server calls it at start, so the first long prompt does not wait for the load). */
  static acquire(tokenizer: QwenTokenizer, dir: string): TokenizerThread {
    let shared = threads.get(tokenizer);
    if (!shared) threads.set(tokenizer, (shared = new TokenizerThread(dir)));
    shared.dir = dir;
    shared.users++;
    if (shared.idle) clearTimeout(shared.idle);
    shared.idle = null;
    shared.ensureThread();
    shared.pump();
    return shared;
  }

  /** One user fewer; with none left, the thread stops after a while. */
  release(): void {
    if (--this.users > 0) return;
    this.idle = setTimeout(() => {
      if (this.users > 0) return;
      const t = this.thread;
      this.thread = null;
      void t?.terminate();
    }, IDLE_MS);
    this.idle.unref();
  }

  run(task: TokenizerTask, timeoutMs: number, background = false): Promise<TokenizerResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ job: { ...task, id: this.nextId++ }, resolve, reject, background, timeoutMs });
      this.pump();
    });
  }

  /** The thread, started (and its tokenizer loading) if there is none. */
  private ensureThread(): Worker {
    if (!this.thread) {
      this.loaded = false;
      this.thread = this.spawn();
    }
    return this.thread;
  }

  private spawn(): Worker {
    const thread = new Worker(new URL('./tokenizer_thread.js', import.meta.url), { workerData: this.dir });
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
    this.dispatch();
    // The thread keeps the process alive while a job waits or runs, never while idle (kept for another model).
    if (this.running || this.queue.length > 0) this.thread?.ref();
    else this.thread?.unref();
  }

  private dispatch(): void {
    if (this.running || this.queue.length === 0) return;
    const thread = this.ensureThread();
    if (!this.loaded) return;
    const first = this.queue.findIndex((j) => !j.background);
    const next = this.queue.splice(Math.max(first, 0), 1)[0];
    const timer = setTimeout(() => {
      if (this.running?.job !== next) return;
      this.running = null;
      const old = this.thread;
      this.thread = null;
      void old?.terminate();
      next.reject(new InvalidRequestError(`The text could not be tokenized within ${next.timeoutMs / 1000} s; it is too long or too repetitive.`));
      this.pump();
    }, next.timeoutMs);
    this.running = { job: next, timer };
    thread.postMessage(next.job);
  }
}

/** Threads by tokenizer: models that share a tokenizer share its thread. */
const threads = new WeakMap<QwenTokenizer, TokenizerThread>();
