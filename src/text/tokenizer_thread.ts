/**
 * The tokenizer thread: encodes and decodes long texts for the HTTP thread (see
 * offthread_tokenizer.ts), so a large prompt never blocks other requests or /health.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { QwenTokenizer } from './tokenizer.js';

export type TokenizerJob = { id: number; type: 'encode'; text: string } | { id: number; type: 'decode'; ids: number[]; skipSpecialTokens: boolean };
export type TokenizerResult = { id: number; ids?: number[]; text?: string; error?: string };

const port = parentPort!;
const tokenizer = QwenTokenizer.fromDir(workerData as string);

port.on('message', (job: TokenizerJob) => {
  let result: TokenizerResult;
  try {
    result =
      job.type === 'encode'
        ? { id: job.id, ids: tokenizer.encode(job.text) }
        : { id: job.id, text: tokenizer.decode(job.ids, job.skipSpecialTokens) };
  } catch (err) {
    result = { id: job.id, error: (err as Error).message };
  }
  port.postMessage(result);
});
// Loading the tokenizer takes a while: jobs are timed from here on.
port.postMessage({ id: -1 } satisfies TokenizerResult);
