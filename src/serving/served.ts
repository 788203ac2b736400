/**
 * What a serving module answers: a JSON body, or a stream of chunks written through
 * `send` (the HTTP layer frames them as server-sent events, ending OpenAI's with `[DONE]`).
 * `body` null means the client left before the answer was ready: nothing is sent.
 */
export type Served = (
  | { body: unknown }
  | {
      /** Writes the stream; `event` names an event (Anthropic's streams name every one). */
      produce: (send: (chunk: unknown, event?: string) => void) => Promise<void>;
      /**
       * How the stream is framed: `chunks` (Chat Completions and Completions: data lines,
       * `data: [DONE]` at the end), `responses` (named events, errors as an `error`
       * event), `anthropic` (named events, errors in Anthropic's envelope). Default chunks.
       */
      framing?: 'chunks' | 'responses' | 'anthropic';
    }
) & { notes?: ServedNotes };

/** What the HTTP layer tells the client and the log beside the answer. */
export interface ServedNotes {
  /** Tools of types this server cannot run, left out of the prompt (a response header and a log line name them). */
  ignoredTools?: string[];
}
