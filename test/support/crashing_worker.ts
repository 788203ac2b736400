/**
 * The engine's worker as it is, plus one fault: a request whose id starts with "crash", or
 * whose prompt is CRASH_PROMPT_IDS (test/support/crash_prompt.ts: a client can send it),
 * makes the thread throw an uncaught error between steps, as a bug in the engine would.
 */
import { parentPort } from 'node:worker_threads';
import type { MainMessage } from '../../src/engine/protocol.js';
import { CRASH_PROMPT_IDS } from './crash_prompt.js';

await import('../../src/engine/worker.js');
const isCrashPrompt = (ids: number[]) => ids.length === CRASH_PROMPT_IDS.length && ids.every((id, i) => id === CRASH_PROMPT_IDS[i]);
parentPort!.on('message', (msg: MainMessage) => {
  if (msg.type === 'submit' && (msg.request.requestId.startsWith('crash') || isCrashPrompt(msg.request.promptIds))) {
    setImmediate(() => {
      throw new Error('crash injected by a test');
    });
  }
});
