/** A prompt, as token ids, that kills the engine worker of test/support/crashing_worker.ts. */
export const CRASH_PROMPT_IDS: readonly number[] = [9, 9, 9, 9, 9, 9, 9];

/** The module an engine boots to have that fault (Engine.start's workerFile, startServer's engineWorker). */
export const CRASHING_WORKER = new URL('./crashing_worker.js', import.meta.url);
