import type { TokenVocabulary } from './token_vocabulary.js';

/**
 * Turns a stream of token ids into text byte-exactly: token bytes go through a streaming
 * UTF-8 decoder, so a character split across tokens is held until it is whole and never
 * comes out as U+FFFD. Special tokens are dropped when `skipSpecialTokens`.
 */
export class IncrementalDetokenizer {
  private readonly decoder = new TextDecoder('utf-8', { fatal: false });

  constructor(
    private readonly tokenizer: TokenVocabulary,
    private readonly skipSpecialTokens: boolean,
  ) {}

  /** Text completed by this token (may be empty while a character is incomplete). */
  push(token: number): string {
    if (this.skipSpecialTokens && this.tokenizer.specialIds.has(token)) return '';
    const bytes = this.tokenizer.tokenBytes(token);
    if (!bytes) return '';
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Whatever is left at the end (an incomplete character becomes U+FFFD, as in HF's decode). */
  flush(): string {
    return this.decoder.decode();
  }
}

/**
 * Stops generation at the first occurrence of any stop string. Text that could still be
 * the start of a stop string is held back, so a stop string is never emitted, even in
 * part.
 */
export class StopStringMatcher {
  private pending = '';
  private readonly maxLen: number;

  constructor(private readonly stops: string[]) {
    this.maxLen = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /** Feeds new text; returns what may be emitted and the stop string hit, if any. */
  push(text: string): { emit: string; stopped: boolean; matched?: string } {
    if (this.stops.length === 0) return { emit: text, stopped: false };
    this.pending += text;
    let first = -1;
    let matched = '';
    for (const s of this.stops) {
      if (s.length === 0) continue;
      const at = this.pending.indexOf(s);
      if (at >= 0 && (first < 0 || at < first)) {
        first = at;
        matched = s;
      }
    }
    if (first >= 0) {
      const emit = this.pending.slice(0, first);
      this.pending = '';
      return { emit, stopped: true, matched };
    }
    // Hold back the longest suffix that is a prefix of some stop string.
    let hold = 0;
    for (let k = Math.min(this.maxLen - 1, this.pending.length); k > 0; k--) {
      const tail = this.pending.slice(this.pending.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) {
        hold = k;
        break;
      }
    }
    const emit = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { emit, stopped: false };
  }

  /** Releases held text when generation ends for another reason. */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }
}
