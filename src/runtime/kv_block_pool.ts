import { BYTES, type KvArray, type KvElementType, kvArray } from './kv_array.js';

/**
 * The shape of one block of cached KV as a runner lays it out: per layer and plane
 * (keys, values, int8 scales), `elements` values of `type`. Only the runner that wrote a
 * block reads it back, so the order inside is the runner's own.
 */
export interface KvBlockLayout {
  layers: number;
  planes: Array<{ type: KvElementType; elements: number }>;
}

/** A block to load: its pool slot, and how many positions it holds (at most the pool's block). */
export interface KvBlockRef {
  slot: number;
  tokens: number;
}

export function bytesPerBlock(layout: KvBlockLayout): number {
  return layout.layers * layout.planes.reduce((n, p) => n + p.elements * BYTES[p.type], 0);
}

/**
 * Fixed-size slots of KV blocks kept after their sequence is gone (the prefix cache's
 * memory). Each plane and layer is one buffer reserved once at the pool's full size:
 * untouched pages cost nothing, the resident size never exceeds the bound, and no block
 * allocates or frees memory of its own (which the garbage collector would see as churn).
 */
export class KvBlockPool {
  private readonly data: KvArray[][];

  constructor(
    readonly layout: KvBlockLayout,
    /** Number of block slots. */
    readonly slots: number,
  ) {
    this.data = layout.planes.map((p) => Array.from({ length: layout.layers }, () => kvArray(p.type, p.elements * slots)));
  }

  /** Slot `slot`'s elements for plane `plane` of layer `layer`. */
  view(plane: number, layer: number, slot: number): KvArray {
    if (slot < 0 || slot >= this.slots) throw new Error(`block slot ${slot} is outside the pool's ${this.slots}`);
    const n = this.layout.planes[plane].elements;
    return this.data[plane][layer].subarray(slot * n, (slot + 1) * n);
  }

  /**
   * Copies slot `slot` into `into` as bytes, plane by plane and layer by layer (the disk
   * tier's block files, src/engine/disk_block_store.ts); `into` holds `bytesPerBlock`.
   */
  readSlot(slot: number, into: Uint8Array): void {
    this.eachPart(slot, (part, at) => into.set(part, at));
  }

  /** Fills slot `slot` from bytes laid out as `readSlot` writes them. */
  writeSlot(slot: number, from: Uint8Array): void {
    this.eachPart(slot, (part, at) => part.set(from.subarray(at, at + part.byteLength)));
  }

  private eachPart(slot: number, use: (part: Uint8Array, at: number) => void): void {
    let at = 0;
    for (let plane = 0; plane < this.layout.planes.length; plane++) {
      for (let layer = 0; layer < this.layout.layers; layer++) {
        const v = this.view(plane, layer, slot);
        const part = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
        use(part, at);
        at += part.byteLength;
      }
    }
  }

  /** Writes every page now (see KvCache.prefault): publishing a block then never waits for fresh pages. Returns the bytes. */
  prefault(): number {
    let bytes = 0;
    for (const plane of this.data) {
      for (const buf of plane) {
        buf.fill(0);
        bytes += buf.byteLength;
      }
    }
    return bytes;
  }

  get bytesPerBlock(): number {
    return bytesPerBlock(this.layout);
  }
}
