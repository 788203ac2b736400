import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

/**
 * Seals reasoning text into the Responses API's opaque `encrypted_content` and opens it
 * again: stateless clients (Codex with `store: false`) send their reasoning items back on
 * the next request, and the prompt is then what the model actually wrote. AES-256-GCM
 * authenticates every blob, so a tampered or foreign one opens to null and is ignored.
 */
export class ReasoningSeal {
  private readonly key: Buffer;

  /** `secret`: shared by replicas behind one address; without it, a random key for this process. */
  constructor(secret?: string) {
    this.key = secret ? createHash('sha256').update(`qwen3-serve reasoning seal\0${secret}`).digest() : randomBytes(32);
  }

  /** The blob for `text`, bound to the model that wrote it. */
  seal(model: string, text: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(Buffer.from(VERSION));
    const body = Buffer.concat([cipher.update(JSON.stringify({ model, text }), 'utf8'), cipher.final()]);
    return Buffer.concat([Buffer.from(VERSION), iv, cipher.getAuthTag(), body]).toString('base64');
  }

  /** The text sealed in `blob` for `model`, or null for anything this server did not seal so. */
  open(model: string, blob: string): string | null {
    const raw = Buffer.from(blob, 'base64');
    if (raw.length < VERSION.length + 28 || raw.subarray(0, VERSION.length).toString() !== VERSION) return null;
    try {
      const iv = raw.subarray(VERSION.length, VERSION.length + 12);
      const decipher = createDecipheriv('aes-256-gcm', this.key, iv);
      decipher.setAAD(Buffer.from(VERSION));
      decipher.setAuthTag(raw.subarray(VERSION.length + 12, VERSION.length + 28));
      const plain = Buffer.concat([decipher.update(raw.subarray(VERSION.length + 28)), decipher.final()]).toString('utf8');
      const parsed = JSON.parse(plain) as { model?: unknown; text?: unknown };
      return parsed.model === model && typeof parsed.text === 'string' ? parsed.text : null;
    } catch {
      return null;
    }
  }
}

const VERSION = 'q3r1';
