// float16 / bfloat16 bit conversions for the oracle, round to nearest even, written from the IEEE
// definitions with plain arithmetic (no bit tricks shared with the native code).
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function float32ToFloat16Bits(x: number): number {
  const v = Math.fround(x);
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  // Exact value as m * 2^e with m integer; quantize to the half grid and round half to even.
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const exp = Math.max(e, -14);            // subnormals share the 2^-14 scale
  const step = 2 ** (exp - 10);            // spacing of halves at this exponent
  let q = a / step;                        // exact in float64 (a has 24 bits)
  const fl = Math.floor(q);
  const rem = q - fl;
  q = rem > 0.5 || (rem === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  let value = q * step;
  if (value >= 65520 || value > 65504) return sign | 0x7c00;
  if (value === 0) return sign;
  // Encode value.
  if (value < 2 ** -14) return sign | Math.round(value / 2 ** -24);
  let be = Math.floor(Math.log2(value));
  if (2 ** be > value) be--;
  if (2 ** (be + 1) <= value) be++;
  const mant = Math.round((value / 2 ** be - 1) * 1024);
  return sign | ((be + 15) << 10) | mant;
}

export function float16BitsToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0x1f) return man ? Number.NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** -24;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

export function float32ToBfloat16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if (Number.isNaN(f32[0])) return 0x7fc0;
  const upper = bits >>> 16, lower = bits & 0xffff;
  // Round half to even on the dropped 16 bits; a carry into the exponent is the correct result.
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) return (upper + 1) & 0xffff;
  return upper;
}

export function bfloat16BitsToFloat32(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0];
}

export const toFloat16Array = (src: ArrayLike<number>): Uint16Array => Uint16Array.from(Array.from(src, float32ToFloat16Bits));
export const toBfloat16Array = (src: ArrayLike<number>): Uint16Array => Uint16Array.from(Array.from(src, float32ToBfloat16Bits));
export const fromFloat16Array = (u: Uint16Array): Float32Array => Float32Array.from(u, float16BitsToFloat32);
export const fromBfloat16Array = (u: Uint16Array): Float32Array => Float32Array.from(u, bfloat16BitsToFloat32);
