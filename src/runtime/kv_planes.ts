import { ioName, type Manifest } from '../export/manifest.js';
import type { KvArray, KvElementType } from './kv_array.js';
import ort from './ort.js';

/**
 * One cached tensor per layer: keys, values, or (int8 caches) their per-token scales.
 * `width` elements per token and head; `transposed` stores [rows, heads, width, capacity]
 * instead of [rows, heads, capacity, width]. Width-1 planes are fed as [rows, heads, capacity].
 */
export interface Plane {
  readonly past: string[];
  readonly fresh: string[];
  readonly type: KvElementType;
  readonly width: number;
  readonly transposed: boolean;
  data: KvArray[];
}

/** The cached planes of an export: keys and values, and for int8 caches their scales. */
export function kvPlanes(manifest: Manifest): Plane[] {
  const c = manifest.config;
  const io = manifest.io;
  const names = (t: string) => Array.from({ length: c.numLayers }, (_, l) => ioName(t, l));
  const plane = (past: string, fresh: string, type: KvElementType, width: number, transposed: boolean): Plane => ({
    past: names(past),
    fresh: names(fresh),
    type,
    width,
    transposed,
    data: [],
  });
  const planes = [
    plane(io.pastKey, io.newKey, manifest.kvDtype, c.headDim, manifest.keyLayout === 'bhdt'),
    plane(io.pastValue, io.newValue, manifest.kvDtype, c.headDim, false),
  ];
  if (manifest.kvDtype === 'int8') {
    if (!io.pastKeyScale || !io.pastValueScale || !io.newKeyScale || !io.newValueScale) {
      throw new Error('an int8 KV export must name its scale tensors (re-export the model)');
    }
    planes.push(plane(io.pastKeyScale, io.newKeyScale, 'float32', 1, false), plane(io.pastValueScale, io.newValueScale, 'float32', 1, false));
  }
  return planes;
}

/** How a plane's slots are grouped: `perRow` runs of `capacity` slots, each slot `unit` elements. */
export interface PlaneRuns {
  readonly perRow: number;
  readonly unit: number;
}

/**
 * A plane is a sequence of runs, each `capacity` slots of `unit` elements: per (row,
 * head) for [rows, heads, capacity, width], per (row, head, d) for the transposed order.
 */
export function planeRuns(p: Plane, kvHeads: number): PlaneRuns {
  return p.transposed ? { perRow: kvHeads * p.width, unit: 1 } : { perRow: kvHeads, unit: p.width };
}

/** Layer `l` of plane `p` over rows [firstRow, firstRow + rows), a view fed to a step without a copy. */
export function planeTensor(p: Plane, l: number, kvHeads: number, capacity: number, rows: number, firstRow: number): ort.Tensor {
  const size = kvHeads * capacity * p.width;
  const view = p.data[l].subarray(firstRow * size, (firstRow + rows) * size);
  const dims = p.width === 1 ? [rows, kvHeads, capacity] : p.transposed ? [rows, kvHeads, p.width, capacity] : [rows, kvHeads, capacity, p.width];
  return new ort.Tensor(p.type, view, dims);
}
