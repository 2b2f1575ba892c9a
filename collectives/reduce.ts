/**
 * Element-wise reductions shared by every transport, and the float16 / bfloat16 conversions
 * they need.
 *
 * Float16 and bfloat16 values travel as raw bits in a `Uint16Array`. They are decoded exactly to
 * float32, combined in (at least) float32 precision, and rounded back once to the nearest even
 * half-precision value. `"avg"` reduces as `"sum"`; the caller divides once at the end with
 * {@linkcode finishAvg}.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// Deno 2.9 ships Float16Array (ties-to-even stores); the arithmetic below is the fallback and the
// reference the tests compare it with.
type F16Ctor = new (n: number) => { [i: number]: number; buffer: ArrayBuffer };
const F16 = (globalThis as { Float16Array?: F16Ctor }).Float16Array;
const h16 = F16 === undefined ? undefined : new F16(1);
const hu16 = h16 === undefined ? undefined : new Uint16Array(h16.buffer);

/**
 * Round a number to the nearest float16 and return its 16 bits (round to nearest, ties to even).
 * Values beyond the float16 range become infinity; NaN becomes the quiet NaN `0x7e00`.
 *
 * @example Round-trip
 * ```ts
 * import { f16BitsToF32, f32ToF16Bits } from "./reduce.ts";
 * console.assert(f32ToF16Bits(1) === 0x3c00);
 * console.assert(f16BitsToF32(f32ToF16Bits(0.5)) === 0.5);
 * ```
 *
 * @param x the value (any number; it is rounded once, straight to float16)
 * @returns the float16 bit pattern, 0 <= bits < 65536
 */
export function f32ToF16Bits(x: number): number {
  if (h16 !== undefined) {
    h16[0] = x;
    const h = hu16![0]!;
    return (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0 ? 0x7e00 : h;
  }
  return f32ToF16BitsSlow(x);
}

/**
 * Arithmetic float16 rounding, independent of `Float16Array`: the reference for
 * {@linkcode f32ToF16Bits}.
 *
 * @param x the value
 * @returns the float16 bit pattern
 */
export function f32ToF16BitsSlow(x: number): number {
  if (x !== x) return 0x7e00;
  const sign = x < 0 || (x === 0 && 1 / x < 0) ? 0x8000 : 0;
  let a = Math.abs(x);
  if (a === 0) return sign;
  // 65520 is the midpoint between the largest float16 (65504) and 2^16: it rounds to infinity.
  if (a >= 65520) return sign | 0x7c00;
  if (a < 6.103515625e-5) {
    // Subnormal: units of 2^-24.
    return sign | roundHalfEven(a * 16777216);
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  a = a / 2 ** e; // 1 <= a < 2, exact
  let m = roundHalfEven((a - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Decode float16 bits to their exact value.
 *
 * @param h the float16 bit pattern
 * @returns the value it encodes (Infinity, -Infinity and NaN included)
 */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 5.960464477539063e-8; // m * 2^-24
  if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * Round a number to float32, then to the nearest bfloat16, and return its 16 bits (ties to even).
 * NaN becomes the quiet NaN `0x7fc0`; overflow becomes infinity.
 *
 * @example
 * ```ts
 * import { bf16BitsToF32, f32ToBf16Bits } from "./reduce.ts";
 * console.assert(f32ToBf16Bits(1) === 0x3f80);
 * console.assert(bf16BitsToF32(f32ToBf16Bits(-2)) === -2);
 * ```
 *
 * @param x the value
 * @returns the bfloat16 bit pattern, 0 <= bits < 65536
 */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) {
    return 0x7fc0;
  }
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Decode bfloat16 bits to their exact value.
 *
 * @param h the bfloat16 bit pattern
 * @returns the value it encodes
 */
export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

// Float16 decoding is hot in reductions: one table of all 65536 values, built on first use.
let f16Table: Float32Array | undefined;
function f16Decoder(): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

function checkPair(a: CollectiveBuffer, b: CollectiveBuffer, what: string): void {
  if (a.length !== b.length) {
    throw new RangeError(
      `${what}: buffers differ in length (${a.length} vs ${b.length}); pass subarrays of equal length`,
    );
  }
}

/**
 * Reduce `src` into `acc` element-wise: `acc[i] = acc[i] op src[i]`. `"avg"` adds (finish with
 * {@linkcode finishAvg}). Int32 sums wrap around like C's `int32_t`. `max`/`min` propagate NaN.
 * Pass subarrays to reduce a range.
 *
 * @example Sum two float32 buffers
 * ```ts
 * import { reduceInto } from "./reduce.ts";
 * const acc = new Float32Array([1, 2]);
 * reduceInto(acc, new Float32Array([10, 20]), "sum", "float32");
 * console.assert(acc[1] === 22);
 * ```
 *
 * @param acc accumulator, updated in place
 * @param src values combined into `acc`, same length
 * @param op the reduction
 * @param dtype element type of both buffers
 */
export function reduceInto(
  acc: CollectiveBuffer,
  src: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
): void {
  reduceTo(acc, acc, src, op, dtype);
}

/**
 * Three-address form of {@linkcode reduceInto}: `dst[i] = a[i] op b[i]`. `dst` may be the same
 * array as `a` or `b` (element-wise aliasing only), which lets a reduction run in a fixed order
 * without a staging copy.
 *
 * @param dst output
 * @param a left operand
 * @param b right operand
 * @param op the reduction (`"avg"` adds)
 * @param dtype element type of all three buffers
 */
export function reduceTo(
  dst: CollectiveBuffer,
  a: CollectiveBuffer,
  b: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
): void {
  checkPair(dst, a, "reduceTo");
  checkPair(dst, b, "reduceTo");
  const n = dst.length;
  if (dtype === "float32" || dtype === "int32") {
    const d = dst as Float32Array, x = a as Float32Array, y = b as Float32Array;
    if (dtype === "int32") {
      const di = dst as Int32Array, xi = a as Int32Array, yi = b as Int32Array;
      if (op === "sum" || op === "avg") {
        for (let i = 0; i < n; i++) di[i] = (xi[i]! + yi[i]!) | 0;
      } else if (op === "max") { for (let i = 0; i < n; i++) di[i] = Math.max(xi[i]!, yi[i]!); }
      else if (op === "min") { for (let i = 0; i < n; i++) di[i] = Math.min(xi[i]!, yi[i]!); }
      else badOp(op);
      return;
    }
    if (op === "sum" || op === "avg") { for (let i = 0; i < n; i++) d[i] = x[i]! + y[i]!; }
    else if (op === "max") { for (let i = 0; i < n; i++) d[i] = Math.max(x[i]!, y[i]!); }
    else if (op === "min") { for (let i = 0; i < n; i++) d[i] = Math.min(x[i]!, y[i]!); }
    else badOp(op);
    return;
  }
  const d = dst as Uint16Array, x = a as Uint16Array, y = b as Uint16Array;
  if (dtype === "float16") {
    const t = f16Decoder();
    if (op === "sum" || op === "avg") {
      for (let i = 0; i < n; i++) d[i] = f32ToF16Bits(t[x[i]!]! + t[y[i]!]!);
    } else if (op === "max") {
      for (let i = 0; i < n; i++) d[i] = f32ToF16Bits(Math.max(t[x[i]!]!, t[y[i]!]!));
    } else if (op === "min") {
      for (let i = 0; i < n; i++) d[i] = f32ToF16Bits(Math.min(t[x[i]!]!, t[y[i]!]!));
    } else badOp(op);
    return;
  }
  if (dtype === "bfloat16") {
    if (op === "sum" || op === "avg") {
      for (let i = 0; i < n; i++) {
        d[i] = f32ToBf16Bits(bf16BitsToF32(x[i]!) + bf16BitsToF32(y[i]!));
      }
    } else if (op === "max") {
      for (let i = 0; i < n; i++) {
        d[i] = f32ToBf16Bits(Math.max(bf16BitsToF32(x[i]!), bf16BitsToF32(y[i]!)));
      }
    } else if (op === "min") {
      for (let i = 0; i < n; i++) {
        d[i] = f32ToBf16Bits(Math.min(bf16BitsToF32(x[i]!), bf16BitsToF32(y[i]!)));
      }
    } else badOp(op);
    return;
  }
  throw new TypeError(
    `Unknown dtype "${dtype}": use "float32", "int32", "float16" or "bfloat16"`,
  );
}

function badOp(op: unknown): never {
  throw new TypeError(`Unknown reduce op "${op}": use "sum", "max", "min" or "avg"`);
}

/**
 * Finish an `"avg"` reduction: divide every element by `size`. Int32 uses truncating division
 * (toward zero, like C: -7 / 2 = -3); float16/bfloat16 divide in float32 and round to nearest
 * even.
 *
 * @param buf the summed values, updated in place
 * @param size the number of ranks that contributed
 * @param dtype element type of `buf`
 */
export function finishAvg(buf: CollectiveBuffer, size: number, dtype: DType): void {
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`finishAvg: size must be a positive integer, got ${size}`);
  }
  if (size === 1) return;
  const n = buf.length;
  if (dtype === "float32") {
    const b = buf as Float32Array;
    for (let i = 0; i < n; i++) b[i] = b[i]! / size;
  } else if (dtype === "int32") {
    const b = buf as Int32Array;
    for (let i = 0; i < n; i++) b[i] = Math.trunc(b[i]! / size);
  } else if (dtype === "float16") {
    const b = buf as Uint16Array;
    const t = f16Decoder();
    for (let i = 0; i < n; i++) b[i] = f32ToF16Bits(t[b[i]!]! / size);
  } else if (dtype === "bfloat16") {
    const b = buf as Uint16Array;
    for (let i = 0; i < n; i++) b[i] = f32ToBf16Bits(bf16BitsToF32(b[i]!) / size);
  } else {
    throw new TypeError(
      `Unknown dtype "${dtype}": use "float32", "int32", "float16" or "bfloat16"`,
    );
  }
}
