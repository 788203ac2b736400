import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { paramName } from '../serving/chat_request.js';

/** One API key's own limits (absent: none beyond the server's). */
export interface KeyLimits {
  /** Its requests running in the batch at once; more wait in the queue. */
  maxConcurrent: number | null;
  /** Its requests waiting for a batch slot; beyond it, 429. */
  maxQueued: number | null;
  /** Prompt and generated tokens in the last 60 s; once reached, 429 until enough of them are older. */
  tokensPerMinute: number | null;
}

/** An API key as the server keeps it: a name and the key's SHA-256 (the key itself is not kept). */
export interface ApiKey {
  name: string;
  digest: Buffer;
  limits: KeyLimits;
}

/** The name `--api-key` goes by in logs and metrics. */
export const DEFAULT_KEY_NAME = 'default';

const positive = z.number().int().min(1).max(1_000_000_000).nullable().optional();
const entrySchema = z
  .object({
    // Names go into logs and metrics labels: plain tokens only.
    name: z.string().regex(/^[\w.@-]{1,64}$/, 'use 1 to 64 letters, digits, and _ . @ -'),
    // A header carries printable ASCII and loses surrounding spaces: any other key could never be sent.
    key: z
      .string()
      .min(8, 'use at least 8 characters')
      .max(4096)
      .regex(/^[\x21-\x7e]+$/, 'use printable ASCII characters without spaces (a key is sent in an HTTP header)')
      .optional(),
    sha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'expected the key’s SHA-256 as 64 hex digits')
      .optional(),
    limits: z
      .object({ max_concurrent: positive, max_queued: z.number().int().min(0).max(1_000_000).nullable().optional(), tokens_per_minute: positive })
      .strict()
      .optional(),
  })
  .strict()
  .refine((e) => (e.key === undefined) !== (e.sha256 === undefined), { message: 'give the key or its sha256, one of them' });
// An empty list is allowed: emptying the file is how every key is revoked at once (requests are then refused).
const keyList = z.array(entrySchema);
const objectFile = z.object({ keys: keyList }).strict();

export function keyDigest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** Parses a keys file's text (JSON: `{"keys": [...]}` or the array alone); a problem is a ConfigError naming the entry and field. */
export function parseKeysFile(text: string, source: string): ApiKey[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${source}: not valid JSON: ${(err as Error).message}`);
  }
  // Parsed as the form it has (the bare array or the object), so a problem names its entry and field.
  const r = Array.isArray(raw) ? keyList.safeParse(raw) : objectFile.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = Array.isArray(raw) ? paramName(['keys', ...issue.path]) : paramName(issue.path);
    throw new ConfigError(`${source}: ${where || 'file'}: ${issue.message}`);
  }
  const entries = Array.isArray(r.data) ? r.data : r.data.keys;
  const names = new Set<string>();
  const digests = new Set<string>();
  return entries.map((e, i) => {
    if (names.has(e.name)) throw new ConfigError(`${source}: keys[${i}].name: '${e.name}' is named twice`);
    names.add(e.name);
    const digest = e.key !== undefined ? keyDigest(e.key) : Buffer.from(e.sha256!, 'hex');
    if (digests.has(digest.toString('hex'))) throw new ConfigError(`${source}: keys[${i}]: the same key is given twice`);
    digests.add(digest.toString('hex'));
    const l = e.limits ?? {};
    return {
      name: e.name,
      digest,
      limits: { maxConcurrent: l.max_concurrent ?? null, maxQueued: l.max_queued ?? null, tokensPerMinute: l.tokens_per_minute ?? null },
    };
  });
}

export interface KeyringLogger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * The API keys the server accepts: `--api-key` (named `default`) and the entries of
 * `--api-keys-file`, which is read again whenever it changes (checked every 250 ms), so
 * keys are added, revoked and rotated without a restart; a request already running keeps
 * going. A file that no longer parses leaves the last good keys in force (and is logged).
 */
export class Keyring {
  private keys: ApiKey[];
  private readonly fixed: ApiKey[];
  private readonly onChange = () => this.reload();

  constructor(
    apiKey: string | null,
    private readonly file: string | null,
    private readonly log: KeyringLogger,
  ) {
    this.fixed = apiKey
      ? [{ name: DEFAULT_KEY_NAME, digest: keyDigest(apiKey), limits: { maxConcurrent: null, maxQueued: null, tokensPerMinute: null } }]
      : [];
    this.keys = [...this.fixed, ...(file ? this.readFile() : [])];
    if (file) watchFile(file, { interval: 250, persistent: false }, this.onChange);
  }

  /** Any key is required. */
  get enabled(): boolean {
    return this.fixed.length > 0 || this.file !== null;
  }

  get size(): number {
    return this.keys.length;
  }

  private readFile(): ApiKey[] {
    let text: string;
    try {
      text = readFileSync(this.file!, 'utf8');
    } catch (err) {
      throw new ConfigError(`--api-keys-file ${this.file}: ${(err as Error).message}`);
    }
    const keys = parseKeysFile(text, `--api-keys-file ${this.file}`);
    if (keys.some((k) => this.fixed.some((f) => f.name === k.name)))
      throw new ConfigError(`--api-keys-file ${this.file}: the name '${DEFAULT_KEY_NAME}' is --api-key's`);
    return keys;
  }

  /** Reads the file again; keeps the keys in force when it does not parse. */
  reload(): void {
    try {
      const keys = [...this.fixed, ...this.readFile()];
      const before = new Set(this.keys.map((k) => k.name));
      const after = new Set(keys.map((k) => k.name));
      this.keys = keys;
      this.log.info(
        { keys: keys.length, added: [...after].filter((n) => !before.has(n)), removed: [...before].filter((n) => !after.has(n)) },
        'API keys file reloaded',
      );
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'API keys file not reloaded; the keys in force stay');
    }
  }

  /**
   * The key `token` is, or null. Compares SHA-256 digests in constant time, with every
   * key (a match does not end the loop), so timing tells nothing of the keys.
   */
  match(token: string): ApiKey | null {
    const digest = keyDigest(token);
    let found: ApiKey | null = null;
    for (const k of this.keys) if (timingSafeEqual(digest, k.digest) && found === null) found = k;
    return found;
  }

  close(): void {
    if (this.file) unwatchFile(this.file, this.onChange);
  }
}
