/**
 * The grammar thread: it owns xgrammar, compiles grammars and keeps each constrained
 * request's matcher, so a slow compile never holds up the engine's step loop, and a
 * compile that overruns its bound is ended by terminating this thread (see
 * grammar_service.ts, which talks to it in `GrammarCall` / `GrammarReply` messages).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { AppError } from '../errors.js';
import { GrammarCompiler, type GrammarRequest, type JsonWhitespace, type TokenConstraint } from '../runtime/grammar.js';

export interface GrammarThreadOptions {
  vocabulary: string[];
  stopTokenIds: number[];
  whitespace: JsonWhitespace;
}

/** Engine → grammar thread. */
export type GrammarCall =
  /** Compiles (or reuses) the grammar, makes a matcher, takes `replay`, answers its mask. */
  | { type: 'open'; id: number; request: GrammarRequest; stopTokenIds: number[]; replay: number[] }
  /** Takes a sampled token and answers the next mask (position `position`). */
  | { type: 'accept'; id: number; token: number; position: number }
  | { type: 'close'; id: number };

/** Grammar thread → engine. */
export type GrammarReply =
  | { type: 'ready' }
  | { type: 'mask'; id: number; position: number; bits: Int32Array }
  | { type: 'refused'; id: number; message: string; param: string | null }
  /** The compiling instance faulted: this thread must be replaced (its matchers replayed). */
  | { type: 'broken'; message: string };

const port = parentPort!;
const options = workerData as GrammarThreadOptions;
const matchers = new Map<number, TokenConstraint>();

function post(reply: GrammarReply): void {
  if (reply.type === 'mask') port.postMessage(reply, [reply.bits.buffer as ArrayBuffer]);
  else port.postMessage(reply);
}

async function maskOf(id: number, position: number, constraint: TokenConstraint): Promise<void> {
  post({ type: 'mask', id, position, bits: (await constraint.nextBitmask()).slice() });
}

async function handle(compiler: GrammarCompiler, call: GrammarCall): Promise<void> {
  switch (call.type) {
    case 'open': {
      let constraint: TokenConstraint;
      try {
        constraint = await compiler.constraint(call.request, call.stopTokenIds);
      } catch (err) {
        if (!(err instanceof AppError)) throw err;
        post({ type: 'refused', id: call.id, message: err.message, param: err.param });
        return;
      }
      matchers.set(call.id, constraint);
      for (const token of call.replay) {
        if (!constraint.accept(token)) throw new Error(`replaying matcher ${call.id}: token ${token} refused`);
      }
      await maskOf(call.id, call.replay.length, constraint);
      return;
    }
    case 'accept': {
      const constraint = matchers.get(call.id);
      if (!constraint) return;
      if (!constraint.accept(call.token)) throw new Error(`matcher ${call.id}: token ${call.token} refused`);
      // A terminated matcher allows nothing more; the engine ends the request on its own.
      if (!constraint.terminated) await maskOf(call.id, call.position, constraint);
      return;
    }
    case 'close':
      matchers.get(call.id)?.dispose();
      matchers.delete(call.id);
      return;
  }
}

async function main(): Promise<void> {
  const compiler = await GrammarCompiler.create(options.vocabulary, options.stopTokenIds, options.whitespace);
  // Calls run one at a time, in order: a matcher's accepts must follow its open.
  let chain = Promise.resolve();
  port.on('message', (call: GrammarCall) => {
    chain = chain.then(async () => {
      if (compiler.broken) return;
      try {
        await handle(compiler, call);
      } catch (err) {
        compiler.broken = (err as Error).message;
      }
      if (compiler.broken) post({ type: 'broken', message: compiler.broken });
    });
  });
  post({ type: 'ready' });
}

main().catch((err: unknown) => {
  post({ type: 'broken', message: `the grammar engine could not start: ${(err as Error).message}` });
});
