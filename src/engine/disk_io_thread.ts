/**
 * The disk tier's I/O thread: it writes and reads block files, and checks what it reads,
 * with synchronous calls on a thread of its own. The engine's thread is inside a model
 * run for most of each step, so I/O it drove itself (node:fs/promises) would advance one
 * call per step; here a whole write (file, then rename) or read (and its checksums) runs
 * at once, and the engine only takes the answers between steps. Buffers are transferred
 * both ways, never copied (see disk_block_store.ts, which talks to it in `DiskCall` /
 * `DiskReply` messages).
 */
import { closeSync, fstatSync, openSync, readSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { openBlock } from './disk_block_file.js';

/** Engine → I/O thread. */
export type DiskCall =
  | { op: 'write'; id: number; tmp: string; path: string; file: Uint8Array }
  | { op: 'read'; id: number; path: string; file: Uint8Array; fingerprint: Uint8Array; key: Uint8Array; payloadBytes: number };

/**
 * I/O thread → engine, with the call's buffer back. A write: `error` is the failure's
 * code, or null. A read: `size` the file's length (-1 unreadable, `error` then its code),
 * `check` the block's positions or why it cannot be served.
 */
export type DiskReply =
  | { op: 'write'; id: number; file: Uint8Array; error: string | null }
  | { op: 'read'; id: number; file: Uint8Array; size: number; error: string | null; check: { tokens: number } | string };

const port = parentPort!;
const code = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;

function write(c: Extract<DiskCall, { op: 'write' }>): DiskReply {
  try {
    writeFileSync(c.tmp, c.file);
    renameSync(c.tmp, c.path);
    return { op: 'write', id: c.id, file: c.file, error: null };
  } catch (err) {
    try {
      unlinkSync(c.tmp);
    } catch {
      // Never created, or already gone.
    }
    return { op: 'write', id: c.id, file: c.file, error: code(err) };
  }
}

function read(c: Extract<DiskCall, { op: 'read' }>): DiskReply {
  let fd = -1;
  try {
    fd = openSync(c.path, 'r');
    const size = fstatSync(fd).size;
    if (size !== c.file.byteLength)
      return { op: 'read', id: c.id, file: c.file, size, error: null, check: `${size} bytes, not ${c.file.byteLength}` };
    let at = 0;
    while (at < size) {
      const n = readSync(fd, c.file, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    const opened = openBlock(c.file.subarray(0, at), c);
    return { op: 'read', id: c.id, file: c.file, size, error: null, check: typeof opened === 'string' ? opened : { tokens: opened.tokens } };
  } catch (err) {
    return { op: 'read', id: c.id, file: c.file, size: -1, error: code(err), check: 'unreadable' };
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

port.on('message', (c: DiskCall) => {
  const reply = c.op === 'write' ? write(c) : read(c);
  port.postMessage(reply, [reply.file.buffer as ArrayBuffer]);
});
