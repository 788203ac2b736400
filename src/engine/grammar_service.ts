import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { InvalidRequestError, ServiceUnavailableError } from '../errors.js';
import { applyMask, type GrammarRequest, type JsonWhitespace } from '../runtime/grammar.js';
import { nestingDepth } from '../util/nesting.js';
import type { GrammarCall, GrammarReply, GrammarThreadOptions } from './grammar_thread.js';

/** A spec's text longer than this is refused before it reaches xgrammar. */
export const MAX_GRAMMAR_BYTES = 256 * 1024;
/**
 * Deepest nesting of objects and arrays in a spec. Real schemas stay well inside it;
 * xgrammar's parser runs out of WebAssembly stack at ~120 levels.
 */
export const MAX_GRAMMAR_DEPTH = 64;

export type GrammarState = 'starting' | 'ready' | 'rebuilding' | 'failed';

export interface GrammarStats {
  state: GrammarState;
  /** Times the grammar thread was replaced (a compile over its bound, or a fault). */
  rebuilds: number;
}

export interface GrammarServiceOptions {
  vocabulary: string[];
  stopTokenIds: number[];
  whitespace: JsonWhitespace;
  /** A compile taking longer is refused, and the thread that ran it replaced. */
  compileTimeoutMs: number;
  /** Called when a mask arrives or a constraint fails: the step loop may go on. */
  onProgress: () => void;
  log?: (message: string) => void;
}

/** Refuses specs too large or too deep for xgrammar, before any recursive code sees them. */
function checkBounds(request: GrammarRequest): void {
  const { spec, param } = request;
  const text = spec.type === 'json_schema' ? spec.schema : spec.type === 'ebnf' ? spec.grammar : spec.type === 'regex' ? spec.pattern : null;
  let size = text?.length ?? 0;
  let depth = 0;
  if (spec.type === 'json_schema') {
    try {
      depth = nestingDepth(JSON.parse(spec.schema), MAX_GRAMMAR_DEPTH);
    } catch {
      throw new InvalidRequestError(`${param} is not valid JSON.`, { param });
    }
  } else if (spec.type === 'structural_tag') {
    depth = nestingDepth(spec.format, MAX_GRAMMAR_DEPTH);
    if (depth <= MAX_GRAMMAR_DEPTH) size = JSON.stringify(spec.format).length;
  } else if (spec.type === 'choice') {
    size = spec.choices.reduce((n, c) => n + c.length, 0);
  }
  if (depth > MAX_GRAMMAR_DEPTH) {
    throw new InvalidRequestError(`${param} is nested more than ${MAX_GRAMMAR_DEPTH} levels deep, more than constrained decoding supports.`, {
      param,
    });
  }
  if (size > MAX_GRAMMAR_BYTES) {
    throw new InvalidRequestError(`${param} is ${size} characters long; constrained decoding takes at most ${MAX_GRAMMAR_BYTES}.`, { param });
  }
}

/**
 * One request's constraint, kept in the grammar thread: the engine reads the mask for
 * the next token (computed there while the model runs) and reports each sampled token.
 */
export class RemoteConstraint {
  /** Tokens taken so far: replayed into a new matcher if the thread is replaced. */
  readonly accepted: number[] = [];
  /** Allowed tokens at the current position; null until the grammar thread answers. */
  bits: Int32Array | null = null;
  /** A stop token was taken: the grammar is complete. */
  terminated = false;
  /** Why the constraint cannot go on (its grammar thread failed for good). */
  failed: string | null = null;
  private readonly stops: Set<number>;

  constructor(
    readonly id: number,
    readonly request: GrammarRequest,
    readonly stopTokenIds: number[],
    private readonly service: GrammarService,
  ) {
    this.stops = new Set(stopTokenIds);
  }

  /** The next token can be masked now without waiting. */
  get ready(): boolean {
    return this.bits !== null || this.failed !== null;
  }

  /** Masks `logits` with the current mask (only when `ready`); returns how many tokens remain. */
  mask(logits: Float32Array): number {
    return applyMask(this.bits!, logits);
  }

  /** Takes the sampled token (always one the mask allowed). */
  accept(token: number): void {
    this.accepted.push(token);
    this.bits = null;
    // xgrammar's matcher ends exactly when it takes one of its stop tokens.
    if (this.stops.has(token)) this.terminated = true;
    this.service.send({ type: 'accept', id: this.id, token, position: this.accepted.length });
  }

  dispose(): void {
    this.service.close(this);
  }
}

interface PendingOpen {
  constraint: RemoteConstraint;
  /** A new request waits for this; a replay after a rebuild has no one waiting. */
  settle: { resolve: (c: RemoteConstraint) => void; reject: (err: Error) => void } | null;
  tries: number;
}

const REMEMBERED_SLOW = 256;

/**
 * The engine's handle on the grammar thread (grammar_thread.ts). Compiles run there one
 * at a time under a time bound; a compile over the bound is refused with a 400 and the
 * thread is replaced (the only way to stop WebAssembly mid-call), its live matchers
 * rebuilt by replaying their tokens. The same happens if the thread faults, so a broken
 * grammar engine is rebuilt instead of failing every later request.
 */
export class GrammarService {
  private thread: Worker | null = null;
  private state: GrammarState = 'starting';
  private rebuilds = 0;
  private startFailures = 0;
  private readonly live = new Map<number, RemoteConstraint>();
  private readonly queue: PendingOpen[] = [];
  private inFlight: { open: PendingOpen; timer: NodeJS.Timeout } | null = null;
  /** Hashes of specs that overran the bound, refused at once when sent again. */
  private readonly slow = new Map<string, string>();
  private nextId = 0;

  constructor(private readonly options: GrammarServiceOptions) {
    this.spawn();
  }

  stats(): GrammarStats {
    return { state: this.state, rebuilds: this.rebuilds };
  }

  /** A compile or a rebuild is under way: masks may take a while. */
  get busy(): boolean {
    return this.inFlight !== null || this.state !== 'ready';
  }

  /**
   * A constraint for `request`, resolved once its grammar is compiled and its first mask
   * is known. Refusals (bounds, xgrammar's reasons, the time bound) are 400s.
   */
  open(request: GrammarRequest, stopTokenIds: number[]): Promise<RemoteConstraint> {
    try {
      checkBounds(request);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const remembered = this.slow.get(specHash(request));
    if (remembered) return Promise.reject(new InvalidRequestError(remembered, { param: request.param }));
    if (this.state === 'failed') return Promise.reject(new ServiceUnavailableError('The grammar engine is unavailable.'));
    const constraint = new RemoteConstraint(this.nextId++, request, stopTokenIds, this);
    return new Promise((resolve, reject) => {
      this.queue.push({ constraint, settle: { resolve, reject }, tries: 0 });
      this.pump();
    });
  }

  /** @internal Sends a call to the current thread (dropped while it is replaced: replays carry the state). */
  send(call: GrammarCall): void {
    if (this.state === 'ready' && this.thread) this.thread.postMessage(call);
  }

  /** @internal */
  close(constraint: RemoteConstraint): void {
    const queued = this.queue.findIndex((p) => p.constraint === constraint);
    if (queued >= 0) this.queue.splice(queued, 1);
    if (this.live.delete(constraint.id)) this.send({ type: 'close', id: constraint.id });
  }

  async shutdown(): Promise<void> {
    this.state = 'failed';
    if (this.inFlight) clearTimeout(this.inFlight.timer);
    await this.thread?.terminate();
    this.thread = null;
  }

  private spawn(): void {
    const data: GrammarThreadOptions = {
      vocabulary: this.options.vocabulary,
      stopTokenIds: this.options.stopTokenIds,
      whitespace: this.options.whitespace,
    };
    const thread = new Worker(new URL('./grammar_thread.js', import.meta.url), { workerData: data });
    this.thread = thread;
    thread.on('message', (reply: GrammarReply) => {
      if (this.thread === thread) this.onReply(reply);
    });
    thread.on('error', (err) => {
      if (this.thread === thread) this.rebuild(`the grammar thread failed: ${err.message}`);
    });
    thread.on('exit', () => {
      if (this.thread === thread && this.state !== 'failed') this.rebuild('the grammar thread exited');
    });
  }

  private onReply(reply: GrammarReply): void {
    switch (reply.type) {
      case 'ready':
        this.state = 'ready';
        this.startFailures = 0;
        this.pump();
        return;
      case 'mask': {
        if (this.inFlight?.open.constraint.id === reply.id) {
          const { open, timer } = this.inFlight;
          clearTimeout(timer);
          this.inFlight = null;
          open.settle?.resolve(open.constraint);
          this.pump();
        }
        const c = this.live.get(reply.id);
        if (c && reply.position === c.accepted.length) c.bits = reply.bits;
        this.options.onProgress();
        return;
      }
      case 'refused': {
        if (this.inFlight?.open.constraint.id !== reply.id) return;
        const { open, timer } = this.inFlight;
        clearTimeout(timer);
        this.inFlight = null;
        this.live.delete(reply.id);
        this.settleFailure(open, new InvalidRequestError(reply.message, { param: reply.param }));
        this.pump();
        return;
      }
      case 'broken':
        if (this.state === 'starting' || this.state === 'rebuilding') this.startFailures++;
        this.rebuild(reply.message);
        return;
    }
  }

  /** Sends the next queued open when the thread is free. */
  private pump(): void {
    if (this.state !== 'ready' || this.inFlight || !this.thread) return;
    const open = this.queue.shift();
    if (!open) return;
    const c = open.constraint;
    this.live.set(c.id, c);
    open.tries++;
    const timer = setTimeout(() => this.overran(open), this.options.compileTimeoutMs);
    timer.unref();
    this.inFlight = { open, timer };
    this.thread.postMessage({
      type: 'open',
      id: c.id,
      request: c.request,
      stopTokenIds: c.stopTokenIds,
      replay: [...c.accepted],
    } satisfies GrammarCall);
  }

  private overran(open: PendingOpen): void {
    if (this.inFlight?.open !== open) return;
    this.inFlight = null;
    const { param } = open.constraint.request;
    const message = `${param} took longer than ${this.options.compileTimeoutMs} ms to compile for constrained decoding (the server's --grammar-compile-timeout); simplify the schema or grammar.`;
    this.remember(specHash(open.constraint.request), message);
    this.live.delete(open.constraint.id);
    this.settleFailure(open, new InvalidRequestError(message, { param }));
    this.rebuild(`a compile overran ${this.options.compileTimeoutMs} ms`);
  }

  private settleFailure(open: PendingOpen, err: Error): void {
    if (open.settle) open.settle.reject(err);
    else open.constraint.failed = err.message;
    this.options.onProgress();
  }

  /**
   * Replaces the thread; every live constraint is opened again in the new one with its
   * tokens replayed. An open that was in flight when the thread faulted is tried once more.
   */
  private rebuild(reason: string): void {
    if (this.state === 'failed') return;
    const old = this.thread;
    this.thread = null;
    void old?.terminate();
    this.rebuilds++;
    this.options.log?.(`grammar engine rebuilt: ${reason}`);
    const retry: PendingOpen[] = [];
    if (this.inFlight) {
      const { open, timer } = this.inFlight;
      clearTimeout(timer);
      this.inFlight = null;
      if (open.tries < 2) retry.push(open);
      else {
        this.live.delete(open.constraint.id);
        this.settleFailure(
          open,
          new InvalidRequestError(`${open.constraint.request.param} made the grammar engine fail: ${reason}`, {
            param: open.constraint.request.param,
          }),
        );
      }
    }
    const waiting = new Set(this.queue.map((p) => p.constraint));
    for (const c of this.live.values()) {
      if (retry.some((p) => p.constraint === c) || waiting.has(c)) continue;
      c.bits = null;
      retry.push({ constraint: c, settle: null, tries: 0 });
    }
    this.queue.unshift(...retry);
    if (this.startFailures >= 3) {
      this.state = 'failed';
      for (const open of this.queue.splice(0)) this.settleFailure(open, new ServiceUnavailableError(`The grammar engine is unavailable: ${reason}`));
      this.live.clear();
      return;
    }
    this.state = 'rebuilding';
    this.spawn();
  }

  private remember(hash: string, message: string): void {
    this.slow.set(hash, message);
    if (this.slow.size > REMEMBERED_SLOW) this.slow.delete(this.slow.keys().next().value!);
  }
}

function specHash(request: GrammarRequest): string {
  return createHash('sha256').update(JSON.stringify(request.spec)).digest('hex');
}
