import type { Manifest } from '../export/manifest.js';

// The typed arrays that hold cached keys and values, shared by the runners, the KV cache and the block pool.

export type KvArray = Float32Array | Uint16Array | Int8Array;

/** Element types of cached tensors: the KV cache's own, and float32 for int8 scales. */
export type KvElementType = Manifest['kvDtype'];

export const BYTES: Record<KvElementType, number> = { float32: 4, float16: 2, int8: 1 };

export function kvArray(dtype: KvElementType, length: number): KvArray {
  if (dtype === 'int8') return new Int8Array(length);
  return dtype === 'float16' ? new Uint16Array(length) : new Float32Array(length);
}

/**
 * Copies `runs` runs of `length` elements from `src` (runs `srcStride` apart, from
 * `srcAt`) to `dst` (`dstStride` apart, from `dstAt`). Short runs are copied element by
 * element: a subarray per run would cost more than the copy.
 */
export function copyRuns(
  src: KvArray,
  srcAt: number,
  srcStride: number,
  dst: KvArray,
  dstAt: number,
  dstStride: number,
  runs: number,
  length: number,
): void {
  if (length >= 64) {
    for (let j = 0; j < runs; j++) {
      const a = srcAt + j * srcStride;
      dst.set(src.subarray(a, a + length), dstAt + j * dstStride);
    }
    return;
  }
  for (let j = 0; j < runs; j++) {
    const a = srcAt + j * srcStride;
    const b = dstAt + j * dstStride;
    for (let i = 0; i < length; i++) dst[b + i] = src[a + i];
  }
}
