/**
 * 16-bit float storage: IEEE half (`"f16"`) and bfloat16 (`"bf16"`) held as raw bits in
 * `Uint16Array`s. Rounding from float32 or float64 is to nearest, ties to even, in one step
 * (a `Float64Array` is not rounded through float32 first); f16 overflows to ±Inf, bf16 keeps
 * float32's range; NaN stays NaN (quiet), -0 stays -0, subnormals are kept. Widening back is
 * exact.
 *
 * The array loops are what every op on a 16-bit tensor runs: f16 rounds through `Float16Array`
 * and widens through a 65,536-entry table (256 KiB per thread, built on first use); bf16 works
 * on the float32 bits (widening is `bits << 16`).
 *
 * @example Round to bfloat16 and back
 * ```ts
 * import { roundHalf, widenHalf } from "./half.ts";
 * const bits = new Uint16Array(2);
 * roundHalf("bf16", new Float32Array([1 + 2 ** -8, 3.14159]), bits);
 * const back = new Float32Array(2);
 * widenHalf("bf16", bits, back);
 * console.log(back); // Float32Array [1, 3.140625]
 * ```
 *
 * @module
 */

/** A 16-bit float dtype: IEEE 754 binary16 (`"f16"`) or bfloat16 (`"bf16"`). */
export type HalfDType = "f16" | "bf16";

/** Elements per block of the float64 -> bf16 loop. */
const BLOCK = 4096;
const f32Block = new Float32Array(BLOCK);
const i32Block = new Int32Array(f32Block.buffer);
const f64One = new Float64Array(1);
const u16One = new Uint16Array(1);
const f16One = new Float16Array(u16One.buffer);

let f16Table: Float32Array | undefined;
let bf16Table: Float32Array | undefined;

/** Every f16 bit pattern's value as a float32 (built on first use). */
function f16Values(): Float32Array {
  if (f16Table === undefined) {
    const bits = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) bits[i] = i;
    f16Table = new Float32Array(65536);
    f16Table.set(new Float16Array(bits.buffer));
  }
  return f16Table;
}

/** Every bf16 bit pattern's value as a float32 (built on first use). */
function bf16Values(): Float32Array {
  if (bf16Table === undefined) {
    bf16Table = new Float32Array(65536);
    const u = new Int32Array(bf16Table.buffer);
    for (let i = 0; i < 65536; i++) u[i] = i << 16;
  }
  return bf16Table;
}

function checkDType(dtype: HalfDType): void {
  if (dtype !== "f16" && dtype !== "bf16") {
    throw new TypeError(`dtype must be "f16" or "bf16", got ${JSON.stringify(dtype)}`);
  }
}

/**
 * Round `src` to 16-bit bits: `out[offset + i] = bits(src[i])` for every element of `src`.
 *
 * @param dtype the 16-bit type
 * @param src float32 or float64 values
 * @param out the bits (at least `offset + src.length` long)
 * @param offset first element of `out` written (default 0)
 * @throws {RangeError} when `out` is too short
 */
export function roundHalf(
  dtype: HalfDType,
  src: Float32Array | Float64Array,
  out: Uint16Array,
  offset = 0,
): void {
  checkDType(dtype);
  const n = src.length;
  if (!Number.isInteger(offset) || offset < 0 || offset + n > out.length) {
    throw new RangeError(
      `roundHalf: ${n} values at offset ${offset} do not fit ${out.length} elements`,
    );
  }
  if (n === 0) return;
  if (dtype === "f16") {
    // Float16Array rounds each Number to nearest, ties to even, in one step.
    new Float16Array(out.buffer, out.byteOffset + 2 * offset, n).set(src);
  } else if (src instanceof Float32Array) {
    const dst = offset === 0 && out.length === n ? out : out.subarray(offset, offset + n);
    bf16FromF32(new Int32Array(src.buffer, src.byteOffset, n), dst);
  } else {
    for (let i = 0; i < n; i += BLOCK) {
      const c = Math.min(BLOCK, n - i);
      bf16FromF64(src, i, c, out, offset + i);
    }
  }
}

/** out[i] = bf16 bits of the float32 bits x[i], for every i (indexed from 0: it is faster). */
function bf16FromF32(x: Int32Array, out: Uint16Array): void {
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const u = x[i];
    // NaN keeps its sign and top payload bits and becomes quiet; the rest rounds to nearest
    // even on the low 16 bits (a carry may reach the exponent, and past the largest finite
    // value to Inf). The sum is taken modulo 2^32; no finite value wraps.
    out[i] = (u & 0x7fffffff) > 0x7f800000
      ? (u >>> 16) | 0x40
      : ((u + 0x7fff + ((u >>> 16) & 1)) | 0) >>> 16;
  }
}

/** out[o + j] = bf16 bits of src[at + j], j < n <= BLOCK, rounded once from float64. */
function bf16FromF64(src: Float64Array, at: number, n: number, out: Uint16Array, o: number): void {
  f32Block.set(src.subarray(at, at + n));
  for (let j = 0; j < n; j++) {
    const u = i32Block[j];
    if ((u & 0xffff) === 0x8000 && (u & 0x7f800000) !== 0x7f800000) {
      // float32 landed exactly on a bf16 midpoint: the float64 value decides the direction.
      const x = src[at + j], f = f32Block[j];
      if (x !== f) {
        out[o + j] = (u >>> 16) + (Math.abs(x) > Math.abs(f) ? 1 : 0);
        continue;
      }
    }
    out[o + j] = (u & 0x7fffffff) > 0x7f800000
      ? (u >>> 16) | 0x40
      : ((u + 0x7fff + ((u >>> 16) & 1)) | 0) >>> 16;
  }
}

/**
 * Widen 16-bit bits exactly: `out[i] = value(bits[i])` for every element of `bits`.
 *
 * @param dtype the 16-bit type
 * @param bits the bits
 * @param out float32 or float64 values (at least `bits.length` long)
 * @throws {RangeError} when `out` is too short
 */
export function widenHalf(
  dtype: HalfDType,
  bits: Uint16Array,
  out: Float32Array | Float64Array,
): void {
  checkDType(dtype);
  const n = bits.length;
  if (out.length < n) {
    throw new RangeError(`widenHalf: ${n} values do not fit ${out.length} elements`);
  }
  if (dtype === "bf16" && out instanceof Float32Array) {
    const o = new Int32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) o[i] = bits[i] << 16;
    return;
  }
  const v = dtype === "f16" ? f16Values() : bf16Values();
  for (let i = 0; i < n; i++) out[i] = v[bits[i]];
}

/**
 * The 16-bit bits of one number, rounded once to nearest, ties to even.
 *
 * @param dtype the 16-bit type
 * @param x any number
 * @returns the bits, an integer in [0, 65536)
 */
export function halfBits(dtype: HalfDType, x: number): number {
  checkDType(dtype);
  if (dtype === "f16") {
    f16One[0] = x;
    return u16One[0];
  }
  f64One[0] = x;
  bf16FromF64(f64One, 0, 1, u16One, 0);
  return u16One[0];
}

/**
 * The value of 16-bit bits.
 *
 * @param dtype the 16-bit type
 * @param bits an integer in [0, 65536)
 * @returns the value, exactly
 */
export function halfValue(dtype: HalfDType, bits: number): number {
  checkDType(dtype);
  return (dtype === "f16" ? f16Values() : bf16Values())[bits & 0xffff];
}
