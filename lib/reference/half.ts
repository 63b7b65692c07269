// float16 / bfloat16 conversions for the oracle, written from the IEEE 754 definitions with plain
// float64 arithmetic (no bit tricks shared with the native code).
//
// Encoding: the JS number is first rounded to float32 (Math.fround), then rounded to the 16-bit
// format to nearest, ties to even; values past the largest finite become ±Infinity, tiny values
// become subnormals or ±0 (sign kept), NaN becomes the quiet NaN 0x7e00 (float16) / 0x7fc0 (bfloat16).

interface Format {
  mantissaBits: number; // stored fraction bits
  minExponent: number;  // exponent of the smallest normal number
  infinityBits: number; // bit pattern of +Infinity (all exponent bits set)
  nanBits: number;      // the quiet NaN produced for any NaN input
}

const FLOAT16: Format = { mantissaBits: 10, minExponent: -14, infinityBits: 0x7c00, nanBits: 0x7e00 };
const BFLOAT16: Format = { mantissaBits: 7, minExponent: -126, infinityBits: 0x7f80, nanBits: 0x7fc0 };
const SIGN = 0x8000;

/** e such that 2^e <= a < 2^(e+1), for a finite a > 0 (exact; log2 only gives the first guess). */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

/** Round a non-negative number to an integer, ties to even. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const r = x - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function encode(x: number, fmt: Format): number {
  const v = Math.fround(x);
  if (Number.isNaN(v)) return fmt.nanBits;
  const sign = v < 0 || Object.is(v, -0) ? SIGN : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | fmt.infinityBits;
  if (a === 0) return sign;
  // Numbers of the target format with exponent E are multiples of 2^(E - mantissaBits); subnormals
  // share the smallest normal exponent. Dividing by that power of two is exact in float64.
  const E = Math.max(exponentOf(a), fmt.minExponent);
  const m = roundHalfEven(a / 2 ** (E - fmt.mantissaBits)); // in [0, 2^(mantissaBits + 1)]
  // Normal: bits = (E + bias) << mb | (m - 2^mb) = (E - minExponent) << mb + m, since bias = 1 - minExponent.
  // Subnormal (E = minExponent, m < 2^mb): bits = m. m = 2^(mb+1) carries into the exponent, and
  // a subnormal rounding up to 2^mb becomes the smallest normal, both by the same addition.
  const bits = (E - fmt.minExponent) * 2 ** fmt.mantissaBits + m;
  if (bits >= fmt.infinityBits) return sign | fmt.infinityBits;
  return sign | bits;
}

function decode(bits: number, fmt: Format): number {
  const mb = fmt.mantissaBits;
  const sign = bits & SIGN ? -1 : 1;
  const expField = (bits & 0x7fff) >> mb;
  const maxField = fmt.infinityBits >> mb;
  const man = bits & ((1 << mb) - 1);
  if (expField === maxField) return man !== 0 ? Number.NaN : sign * Infinity;
  if (expField === 0) return sign * man * 2 ** (fmt.minExponent - mb);
  return sign * (2 ** mb + man) * 2 ** (expField - 1 + fmt.minExponent - mb);
}

export function float32ToFloat16Bits(x: number): number { return encode(x, FLOAT16); }
export function float16BitsToFloat32(h: number): number { return decode(h & 0xffff, FLOAT16); }
export function float32ToBfloat16Bits(x: number): number { return encode(x, BFLOAT16); }
export function bfloat16BitsToFloat32(b: number): number { return decode(b & 0xffff, BFLOAT16); }

export function toFloat16Array(src: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32ToFloat16Bits(src[i]);
  return out;
}

export function toBfloat16Array(src: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32ToBfloat16Bits(src[i]);
  return out;
}

export function fromFloat16Array(u: Uint16Array): Float32Array {
  const out = new Float32Array(u.length);
  for (let i = 0; i < u.length; i++) out[i] = float16BitsToFloat32(u[i]);
  return out;
}

export function fromBfloat16Array(u: Uint16Array): Float32Array {
  const out = new Float32Array(u.length);
  for (let i = 0; i < u.length; i++) out[i] = bfloat16BitsToFloat32(u[i]);
  return out;
}
