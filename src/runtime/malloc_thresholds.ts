import { Worker } from 'node:worker_threads';

/**
 * Just under glibc's cap for its dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX,
 * 32 MiB on 64-bit); a freed block larger than the cap does not move the threshold.
 */
export const PRIMING_BYTES = 31 * 2 ** 20;

let primed: Promise<void> | null = null;

/**
 * Raises glibc's malloc thresholds for the rest of the process, once.
 *
 * onnxruntime-node hands every output back in a freshly allocated ArrayBuffer: 4.8 MB of
 * logits per decode step at batch 8. glibc serves blocks below its mmap threshold from the
 * heap, and gives the heap's free top back to the OS once it exceeds the trim threshold;
 * both start low and follow the largest block freed so far (mallopt(3), "dynamic mmap
 * threshold"), so they settle near one logits buffer. When the collector frees two such
 * buffers together they are trimmed, and the next step page-faults its memory back, in
 * about half of all processes (which depended on collection timing; docs/performance.md).
 *
 * Freeing one block just under the cap moves the thresholds to 31 MiB (mmap) and 62 MiB
 * (trim) for good. The block is freed by a throwaway worker, whose isolate releases its
 * buffers when it exits; in a live isolate the release waits for a garbage collection.
 * Thresholds set by the user (GLIBC_TUNABLES, MALLOC_*_) switch the dynamic rule off, and
 * other C libraries do not have it: then this costs one short-lived thread and changes nothing.
 */
export function raiseMallocThresholds(): Promise<void> {
  if (process.platform !== 'linux') return Promise.resolve();
  primed ??= new Promise<void>((resolve) => {
    const worker = new Worker(`new ArrayBuffer(${PRIMING_BYTES});`, { eval: true });
    // Best effort: a failure here only leaves the defaults in place.
    worker.once('exit', () => resolve());
    worker.once('error', () => resolve());
  });
  return primed;
}
