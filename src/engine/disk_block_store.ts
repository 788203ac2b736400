import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { KvBlockPool } from '../runtime/kv_block_pool.js';
import { HEADER_BYTES, sealBlock } from './disk_block_file.js';
import { DiskIo } from './disk_io.js';

export interface DiskStoreOptions {
  dir: string;
  /** Bytes the block files may take (--prefix-cache-disk); the least recently used go first. */
  capacityBytes: number;
  /** 32 bytes naming what computes the blocks (export_fingerprint.ts). */
  fingerprint: Uint8Array;
  /** Bytes of one block's keys and values (the pool's bytesPerBlock). */
  payloadBytes: number;
  /** Something the operator should know: the tier degraded, files ignored or deleted. */
  warn: (message: string) => void;
  /** A read finished: the step loop, if asleep, looks again. */
  wake?: () => void;
  /** Bytes of blocks waiting to be written (at least 4 blocks); beyond it, writes are dropped. */
  writeQueueBytes?: number;
  /** Blocks read at once. */
  readAhead?: number;
}

const WRITE_QUEUE_BYTES = 64 * 2 ** 20;

export interface DiskTierStats {
  dir: string;
  blocks: number;
  bytes: number;
  capacityBytes: number;
  /** Prompt tokens of requests served from blocks read from disk (counted as cached, too). */
  hitTokens: number;
  /** Blocks read, checked and handed to the memory cache, and the seconds those reads took. */
  loads: number;
  loadSeconds: number;
  writes: number;
  /** Writes given up because the writer was behind (its buffers all busy). */
  writesDropped: number;
  /** Block files found torn, truncated or edited: skipped and deleted. */
  corrupt: number;
  /** Writes are off (a full or read-only disk): the tier serves only what it holds. */
  degraded: boolean;
}

/** A block read and checked: its payload, for the pool, until `release`. */
export interface LoadedBlock {
  readonly key: string;
  readonly tokens: number;
  readonly payload: Uint8Array;
}

type Read = { state: 'reading'; wanted: boolean } | { state: 'ready'; block: LoadedBlock; file: Uint8Array } | { state: 'failed' };

const NAME = /^([0-9a-f]{16})-([0-9a-f]{64})\.kvb(\.tmp-.*)?$/;

/**
 * The prefix cache's tier below memory: block files in one directory, named by the
 * fingerprint of what computed them and a key derived from the memory cache's own block
 * hash (so whatever isolates blocks in memory, isolates them here). Reads and writes run
 * on an I/O thread (disk_io_thread.ts), off the step loop: a write copies the block into a
 * buffer of a bounded queue at once and is dropped when the queue is full; a read fills
 * one of a few other buffers and is handed over, checked, when done. A file is written whole under a temporary name
 * and renamed, and checked against its checksums when read: a torn, truncated or edited
 * one is deleted, never served. Bounded by bytes, the least recently used going first;
 * a full or read-only disk turns writes off with one warning.
 */
export class DiskBlockStore {
  /** Block files of this fingerprint by key, least recently used first (a Map keeps insertion order). */
  private readonly index = new Map<string, number>();
  private bytes = 0;
  private inFlightBytes = 0;
  private readonly writing = new Set<string>();
  private readonly writeBuffers: Uint8Array[] = [];
  private writeBuffersMade = 0;
  private readonly readBuffers: Uint8Array[] = [];
  private readBuffersMade = 0;
  private readonly reads = new Map<string, Read>();
  private readonly pending = new Set<Promise<void>>();
  private readonly prefix: string;
  private readonly fingerprintHex: string;
  private writable = true;
  private tmpCount = 0;
  private readonly io = new DiskIo();
  private readonly counts = { loads: 0, loadSeconds: 0, writes: 0, writesDropped: 0, corrupt: 0 };

  /** Write buffers, and read buffers, there may be. */
  private readonly writeLimit: number;
  private readonly readLimit: number;

  private constructor(private readonly o: DiskStoreOptions) {
    this.fingerprintHex = Buffer.from(o.fingerprint).toString('hex');
    this.prefix = this.fingerprintHex.slice(0, 16);
    this.writeLimit = Math.max(4, Math.floor((o.writeQueueBytes ?? WRITE_QUEUE_BYTES) / (HEADER_BYTES + o.payloadBytes)));
    this.readLimit = o.readAhead ?? 8;
  }

  /**
   * Opens `dir` (creating it), indexes the blocks of this fingerprint it holds, deletes
   * their torn writes and files of the wrong length, and reports once what else is there.
   * A directory that cannot be written leaves the tier serving what it holds.
   */
  static open(o: DiskStoreOptions): DiskBlockStore {
    const store = new DiskBlockStore(o);
    store.index0();
    return store;
  }

  private index0(): void {
    const { dir } = this.o;
    try {
      mkdirSync(dir, { recursive: true });
    } catch (err) {
      this.degrade(err);
    }
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch (err) {
      this.degrade(err);
    }
    const found: Array<{ key: string; bytes: number; mtime: number }> = [];
    let foreign = 0;
    let torn = 0;
    for (const name of names) {
      const m = NAME.exec(name);
      if (!m || m[1] !== this.prefix) {
        if (!name.startsWith('.probe-')) foreign++;
        continue;
      }
      const path = join(dir, name);
      if (m[3]) {
        // A write a crash interrupted: never renamed, never served.
        torn += this.remove(path) ? 1 : 0;
        continue;
      }
      const st = statSync(path, { throwIfNoEntry: false });
      if (!st?.isFile()) continue;
      if (st.size !== HEADER_BYTES + this.o.payloadBytes) {
        this.counts.corrupt++;
        this.remove(path);
        continue;
      }
      found.push({ key: m[2], bytes: st.size, mtime: st.mtimeMs });
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) this.add(f.key, f.bytes);
    this.evictOver(0);
    if (foreign > 0) {
      this.o.warn(
        `prefix cache disk tier: ${foreign} file${foreign === 1 ? '' : 's'} in ${dir} ${foreign === 1 ? 'is' : 'are'} not blocks of this model export, dtype, KV layout and chunk grid: ignored`,
      );
    }
    if (this.counts.corrupt > 0) this.o.warn(`prefix cache disk tier: deleted ${this.counts.corrupt} block file(s) of the wrong length in ${dir}`);
    if (torn > 0) this.o.warn(`prefix cache disk tier: deleted ${torn} unfinished write(s) in ${dir} (a crash)`);
    if (this.writable) this.probe();
  }

  /** Writes and deletes a small file, so a read-only directory is known at start rather than at the first block. */
  private probe(): void {
    const path = join(this.o.dir, `.probe-${process.pid}`);
    try {
      writeFileSync(path, 'probe');
      unlinkSync(path);
    } catch (err) {
      this.degrade(err);
    }
  }

  private remove(path: string): boolean {
    try {
      unlinkSync(path);
      return true;
    } catch {
      return false;
    }
  }

  /** The disk key of the block the memory cache names `memoryKey`: the fingerprint and that key, hashed. */
  keyOf(memoryKey: string): string {
    return createHash('sha256').update(this.o.fingerprint).update(memoryKey).digest('hex');
  }

  has(key: string): boolean {
    return this.index.has(key);
  }

  /** Whether block `key` can be taken, now or once read. */
  available(key: string): boolean {
    const r = this.reads.get(key);
    return r ? r.state !== 'failed' : this.index.has(key);
  }

  private path(key: string): string {
    return join(this.o.dir, `${this.prefix}-${key}.kvb`);
  }

  private add(key: string, bytes: number): void {
    this.index.set(key, bytes);
    this.bytes += bytes;
  }

  private drop(key: string): void {
    const bytes = this.index.get(key);
    if (bytes === undefined) return;
    this.index.delete(key);
    this.bytes -= bytes;
  }

  /** Deletes the least recently used files until `extra` more bytes fit the bound. */
  private evictOver(extra: number): void {
    for (const key of this.index.keys()) {
      if (this.bytes + this.inFlightBytes + extra <= this.o.capacityBytes) return;
      this.drop(key);
      this.track(unlink(this.path(key)).catch(() => {}));
    }
  }

  private track(p: Promise<void>): void {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  /** Writes are off from now on, for `err` (an error, or its code as the I/O thread gives it). */
  private degrade(err: unknown): void {
    if (!this.writable) return;
    this.writable = false;
    const e = err as NodeJS.ErrnoException;
    const why = typeof err === 'string' ? err : (e.code ?? e.message);
    this.o.warn(
      `prefix cache disk tier: cannot write to ${this.o.dir} (${why}); writes are off until a restart, and prompts are cached in memory and served from the blocks the directory holds`,
    );
  }

  /**
   * Writes the block in pool slot `slot` as `key`, off the step loop: its bytes are
   * copied now (the slot may be reused at once), written later. Dropped, and counted,
   * when every write buffer is busy; nothing when the file exists or writes are off.
   */
  write(key: string, tokens: number, pool: KvBlockPool, slot: number): void {
    if (!this.writable || this.index.has(key) || this.writing.has(key)) return;
    const size = HEADER_BYTES + this.o.payloadBytes;
    if (size > this.o.capacityBytes) return;
    const file = this.writeBuffers.pop() ?? (this.writeBuffersMade < this.writeLimit ? (this.writeBuffersMade++, new Uint8Array(size)) : null);
    if (!file) {
      this.counts.writesDropped++;
      return;
    }
    pool.readSlot(slot, file.subarray(HEADER_BYTES));
    sealBlock(file, { tokens, fingerprint: this.o.fingerprint, key: Buffer.from(key, 'hex') });
    this.evictOver(size);
    this.writing.add(key);
    this.inFlightBytes += size;
    this.track(this.writeFile(key, file));
  }

  private async writeFile(key: string, file: Uint8Array): Promise<void> {
    const path = this.path(key);
    const size = file.byteLength;
    const reply = await this.io.call({ op: 'write', tmp: `${path}.tmp-${process.pid}-${this.tmpCount++}`, path, file });
    this.writing.delete(key);
    this.writeBuffers.push(reply.file);
    this.inFlightBytes -= size;
    if (reply.error === 'ENOENT') {
      // A temporary file another server on the directory deleted at its start loses this write alone.
      this.counts.writesDropped++;
    } else if (reply.error !== null) {
      this.degrade(reply.error);
    } else {
      this.counts.writes++;
      this.add(key, size);
      this.evictOver(0);
    }
  }

  /**
   * Keys `keys`, in order, are the ones wanted next: reads start for them while buffers
   * are free, and blocks read for any other key are let go.
   */
  want(keys: readonly string[]): void {
    const wanted = new Set(keys);
    for (const [key, r] of this.reads) {
      if (wanted.has(key)) continue;
      if (r.state === 'ready') this.readBuffers.push(r.file);
      if (r.state === 'reading') r.wanted = false;
      else this.reads.delete(key);
    }
    for (const key of keys) {
      const r = this.reads.get(key);
      if (r?.state === 'reading') r.wanted = true;
      if (r || !this.index.has(key)) continue;
      const file =
        this.readBuffers.pop() ??
        (this.readBuffersMade < this.readLimit ? (this.readBuffersMade++, new Uint8Array(HEADER_BYTES + this.o.payloadBytes)) : null);
      if (!file) return;
      const read: Read = { state: 'reading', wanted: true };
      this.reads.set(key, read);
      this.track(this.readFile(key, file, read));
    }
  }

  /** Block `key` once read: the block, 'pending' while its read runs (or waits for a buffer), 'missing' when it cannot be served. */
  take(key: string): LoadedBlock | 'pending' | 'missing' {
    const r = this.reads.get(key);
    if (!r) return this.index.has(key) ? 'pending' : 'missing';
    if (r.state === 'reading') return 'pending';
    if (r.state === 'failed') {
      this.reads.delete(key);
      return 'missing';
    }
    this.reads.delete(key);
    return r.block;
  }

  /** The pool has copied a taken block: its buffer reads the next one. */
  release(block: LoadedBlock): void {
    this.readBuffers.push((block as LoadedBlock & { file: Uint8Array }).file);
  }

  private async readFile(key: string, file: Uint8Array, read: Read & { state: 'reading' }): Promise<void> {
    const started = performance.now();
    const keyBytes = Buffer.from(key, 'hex');
    const path = this.path(key);
    const reply = await this.io.call({ op: 'read', path, file, fingerprint: this.o.fingerprint, key: keyBytes, payloadBytes: this.o.payloadBytes });
    const check = reply.check;
    if (typeof check === 'string') {
      this.drop(key);
      if (reply.size >= 0) {
        this.counts.corrupt++;
        this.o.warn(`prefix cache disk tier: block ${key.slice(0, 12)}… failed its check (${check}): deleted, computed instead`);
        this.track(unlink(path).catch(() => {}));
      } else if (reply.error !== 'ENOENT') {
        // Gone is ordinary (another server on the directory evicted it); anything else the operator should see.
        this.o.warn(`prefix cache disk tier: cannot read block ${key.slice(0, 12)}… (${reply.error}): computed instead`);
      }
      this.finishRead(key, read, { state: 'failed' }, reply.file);
      return;
    }
    this.counts.loads++;
    this.counts.loadSeconds += (performance.now() - started) / 1000;
    // Now the most recently used, in the index and by the file's time for the next start's index.
    const bytes = this.index.get(key);
    if (bytes !== undefined) {
      this.index.delete(key);
      this.index.set(key, bytes);
      const now = new Date();
      this.track(utimes(path, now, now).catch(() => {}));
    }
    const block = { key, tokens: check.tokens, payload: reply.file.subarray(HEADER_BYTES), file: reply.file };
    this.finishRead(key, read, { state: 'ready', block, file: reply.file }, reply.file);
  }

  private finishRead(key: string, read: Read & { state: 'reading' }, done: Read, file: Uint8Array): void {
    if (!read.wanted) {
      this.reads.delete(key);
      this.readBuffers.push(file);
      return;
    }
    this.reads.set(key, done);
    if (done.state === 'failed') this.readBuffers.push(file);
    this.o.wake?.();
  }

  /** Waits for every write, read and deletion under way; `stop` then ends the I/O thread (the engine's shutdown). */
  async close(stop = true): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
    if (stop) await this.io.stop();
  }

  /** Its counters, with `hitTokens` as the KV cache manager counts them. */
  stats(hitTokens: number): DiskTierStats {
    const { dir, capacityBytes } = this.o;
    return { dir, blocks: this.index.size, bytes: this.bytes, capacityBytes, hitTokens, ...this.counts, degraded: !this.writable };
  }
}
