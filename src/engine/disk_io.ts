import { Worker } from 'node:worker_threads';
import type { DiskCall, DiskReply } from './disk_io_thread.js';

/** A call as the store makes it: the I/O thread's message without its id. */
type Call = DiskCall extends infer C ? (C extends DiskCall ? Omit<C, 'id'> : never) : never;

/**
 * The disk tier's client of its I/O thread (disk_io_thread.ts): calls with their buffers
 * transferred, answers matched back by id. The thread starts at the first call and keeps
 * the process alive only while calls are under way; one that dies fails its calls (with
 * new buffers) and the next call starts another.
 */
export class DiskIo {
  private thread: Worker | null = null;
  private nextId = 0;
  private readonly calls = new Map<number, { call: Call; resolve: (r: DiskReply) => void }>();

  call<C extends Call>(c: C): Promise<Extract<DiskReply, { op: C['op'] }>> {
    const thread = (this.thread ??= this.start());
    const id = this.nextId++;
    // Calls under way keep the process alive; an idle thread does not.
    if (this.calls.size === 0) thread.ref();
    return new Promise((resolve) => {
      this.calls.set(id, { call: c, resolve: resolve as (r: DiskReply) => void });
      thread.postMessage({ ...c, id }, [c.file.buffer as ArrayBuffer]);
    });
  }

  private start(): Worker {
    const thread = new Worker(new URL('./disk_io_thread.js', import.meta.url));
    thread.unref();
    thread.on('message', (r: DiskReply) => {
      const pending = this.calls.get(r.id);
      this.calls.delete(r.id);
      if (this.calls.size === 0) thread.unref();
      pending?.resolve(r);
    });
    thread.on('error', () => {
      if (this.thread === thread) this.thread = null;
      for (const [id, { call, resolve }] of this.calls) {
        const file = new Uint8Array(call.file.byteLength);
        resolve(
          call.op === 'write' ? { op: 'write', id, file, error: 'EIO' } : { op: 'read', id, file, size: -1, error: 'EIO', check: 'unreadable' },
        );
      }
      this.calls.clear();
    });
    return thread;
  }

  /** Ends the thread (the calls under way are awaited first by the store). */
  async stop(): Promise<void> {
    const thread = this.thread;
    this.thread = null;
    await thread?.terminate();
  }
}
