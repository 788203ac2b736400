/**
 * The engine's worker as it is, plus one fault: a request whose id starts with "crash"
 * makes the thread throw an uncaught error between steps, as a bug in the engine would.
 */
import { parentPort } from 'node:worker_threads';
import type { MainMessage } from '../../src/engine/protocol.js';

await import('../../src/engine/worker.js');
parentPort!.on('message', (msg: MainMessage) => {
  if (msg.type === 'submit' && msg.request.requestId.startsWith('crash')) {
    setImmediate(() => {
      throw new Error('crash injected by a test');
    });
  }
});
