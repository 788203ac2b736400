/**
 * Where a prompt's prefill chunks end. A chunk is at most `size` tokens and never spans a
 * message start (a `marker`, the chat template's `<|im_start|>`) unless the token after
 * the marker is one of `joined` (`assistant`): it ends where the next message begins. The
 * boundaries follow from the tokens alone, so every run of a prompt (cache on or off,
 * alone or in a batch) computes the same chunks. A conversation's history or a shared
 * system prompt then ends on a boundary: the prefix cache, whose blocks are these chunks,
 * holds it whole, whatever its length, and the next turn computes only what is new.
 *
 * An assistant message stays in the chunk of the message before it because a turn's new
 * tokens are a user message and the assistant's opening together: cut between them, every
 * turn would take one more model run for a handful of tokens, which costs more at a long
 * context than the tokens it saves (docs/performance.md).
 */
export class ChunkGrid {
  constructor(
    readonly size: number,
    private readonly markers: ReadonlySet<number> = new Set(),
    private readonly joined: ReadonlySet<number> = new Set(),
  ) {}

  /** What decides where chunks end, as text: two grids with the same signature cut every prompt alike. */
  get signature(): string {
    return `size=${this.size};markers=${[...this.markers].sort((a, b) => a - b)};joined=${[...this.joined].sort((a, b) => a - b)}`;
  }

  /** The end of the chunk that starts at `start`, at most `tokens.length`. */
  end(tokens: readonly number[], start: number): number {
    const limit = Math.min(tokens.length, start + this.size);
    if (this.markers.size === 0) return limit;
    // A marker that is the last token is not a boundary yet: what follows decides, and
    // a chunk cut short by the end is not whole anyway.
    for (let p = start + 1; p < limit; p++) {
      if (this.markers.has(tokens[p]) && p + 1 < tokens.length && !this.joined.has(tokens[p + 1])) return p;
    }
    return limit;
  }

  /**
   * Whether the chunk [start, end) of `tokens` (from `end`) is whole: one every longer
   * sequence with these tokens has too. It is unless it stops at the tokens' end short of
   * `size`; `boundaryAtEnd` says a message start that ends a chunk is known to follow there.
   */
  whole(tokens: readonly number[], start: number, end: number, boundaryAtEnd = false): boolean {
    return end - start === this.size || end < tokens.length || boundaryAtEnd;
  }
}

/** The chat template's message start: prefill chunks end before it... */
const MESSAGE_START = '<|im_start|>';
/** ...unless it opens an assistant message, which joins the new tokens before it. */
const ASSISTANT = 'assistant';

/** The engine's grid for `tokenizer`'s chat template: chunks of at most `size` tokens, cut where a message but an assistant's starts. */
export function messageGrid(tokenizer: { tokenId(token: string): number | undefined }, size: number): ChunkGrid {
  const messageStart = tokenizer.tokenId(MESSAGE_START);
  const assistant = tokenizer.tokenId(ASSISTANT);
  return new ChunkGrid(size, new Set(messageStart === undefined ? [] : [messageStart]), new Set(assistant === undefined ? [] : [assistant]));
}
