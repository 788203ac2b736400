/**
 * Conversions between the float formats checkpoints and graphs use. Half floats travel as
 * Uint16Array bit patterns; the conversions themselves are Float16Array's (Node 24), which
 * rounds to nearest even as numpy and torch do.
 */

const f16 = new Float16Array(1);
const u16 = new Uint16Array(f16.buffer);
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half → float, for one value. */
export function halfToFloat(h: number): number {
  u16[0] = h;
  return f16[0];
}

/** float → IEEE half with round-to-nearest-even; a double is first rounded to float32, as a float32 tensor holds it. */
export function floatToHalf(value: number): number {
  f16[0] = Math.fround(value);
  return u16[0];
}

export function floatsToHalf(src: Float32Array): Uint16Array {
  return new Uint16Array(new Float16Array(src).buffer);
}

export function halfsToFloat(src: Uint16Array): Float32Array {
  return new Float32Array(new Float16Array(src.buffer, src.byteOffset, src.length));
}

/** float → bfloat16 with round-to-nearest-even. */
export function floatToBf16(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff; // keep NaN a NaN
  const rounding = 0x7fff + ((x >>> 16) & 1);
  return ((x + rounding) >>> 16) & 0xffff;
}

export type SourceDtype = 'F32' | 'F16' | 'BF16';

export const SOURCE_DTYPE_BYTES: Record<SourceDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Decodes little-endian safetensors bytes of a float dtype into float32. */
export function decodeToFloat32(bytes: Uint8Array, dtype: SourceDtype): Float32Array {
  const n = bytes.byteLength / SOURCE_DTYPE_BYTES[dtype];
  // Copy into an aligned buffer first: a slice of a file read may start at any offset.
  const aligned = new Uint8Array(bytes.byteLength);
  aligned.set(bytes);
  if (dtype === 'F32') return new Float32Array(aligned.buffer, 0, n);
  const halves = new Uint16Array(aligned.buffer, 0, n);
  if (dtype === 'F16') return halfsToFloat(halves);
  const out = new Float32Array(n);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) outBits[i] = halves[i] << 16;
  return out;
}
