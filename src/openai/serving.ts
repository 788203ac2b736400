/**
 * What a serving module answers: a JSON body, or a stream of chunks written through
 * `send` (the HTTP layer frames them as server-sent events and ends with `[DONE]`).
 * `body` null means the client left before the answer was ready: nothing is sent.
 */
export type Served = { body: unknown } | { produce: (send: (chunk: unknown) => void) => Promise<void> };
