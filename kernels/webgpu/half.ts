// 16-bit storage on the device: widening into f32, rounding back, fill, copy and write of f16
// and bf16 tensors, on packed u32 words (two elements a word, the even one in the low half).
//
// Every conversion is integer arithmetic on the bits, so it is exact and the same on every
// adapter: widening (f16 through its exponent and mantissa fields, bf16 as bits << 16) and
// rounding to nearest, ties to even, with f16 overflowing to ±Inf and NaN kept quiet. WGSL's
// pack2x16float leaves both the rounding direction and out-of-range values to the
// implementation, and unpack2x16float need not keep Inf and NaN, so neither is used; nor is the
// `shader-f16` feature (llvmpipe does not offer it, and the kernels compute in f32 anyway).
//
// A program that stores 16-bit elements runs one invocation per word of the window, so no two
// invocations share a word; words at the window's ends keep the half that lies outside it.

import type { HalfDType } from "../half.ts";
import { type GpuDevice, GpuTensor, type Program } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

/** WGSL: the bits of one f32 (as u32 bits) rounded to f16 or bf16, and back. */
const HELPERS = `
fn f16_bits(u: u32) -> u32 {
  let a = u & 0x7fffffffu;
  let s = (u >> 16u) & 0x8000u;
  if (a >= 0x38800000u) {
    if (a >= 0x47800000u) { return s | select(0x7c00u, 0x7e00u, a > 0x7f800000u); }
    // Rebias the exponent and round the 13 dropped bits to nearest even (may carry to Inf).
    return s | ((a - 0x37fff001u + ((a >> 13u) & 1u)) >> 13u);
  }
  if (a <= 0x33000000u) { return s; }
  // A subnormal f16: the 24-bit significand shifted right by 14..24 bits, rounded.
  let m = (a & 0x7fffffu) | 0x800000u;
  let sh = 126u - (a >> 23u);
  let q = m >> sh;
  let r = m & ((1u << sh) - 1u);
  let half = 1u << (sh - 1u);
  return s | (q + select(0u, 1u, r > half || (r == half && (q & 1u) == 1u)));
}
fn bf16_bits(u: u32) -> u32 {
  if ((u & 0x7fffffffu) > 0x7f800000u) { return (u >> 16u) | 0x40u; }
  return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}
fn f16_wide(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return s | 0x7f800000u | (m << 13u); }
  if (e != 0u) { return s | ((e + 112u) << 23u) | (m << 13u); }
  if (m == 0u) { return s; }
  let l = firstLeadingBit(m);
  return s | ((l + 103u) << 23u) | ((m << (23u - l)) & 0x7fffffu);
}
fn bf16_wide(h: u32) -> u32 { return h << 16u; }
fn half_at(w: u32, e: u32) -> u32 { return (w >> ((e & 1u) * 16u)) & 0xffffu; }
`;

/**
 * A program writing the 16-bit window bound first, one invocation per word; `bits(k)` is the
 * WGSL expression of the new bits of the window's element k.
 */
function store16(
  key: string,
  bindings: Program["bindings"],
  fields: Program["fields"],
  bits: (k: string) => string,
): Program {
  return elementwise(
    key,
    bindings,
    [["len", "u32"], ...fields],
    `let w = (p.o0 >> 1u) + i;
  let e = 2u * w;
  let end = p.o0 + p.len;
  var lo: u32;
  var hi: u32;
  if (e >= p.o0 && e < end) { lo = ${bits("(e - p.o0)")}; } else { lo = b0[w] & 0xffffu; }
  if (e + 1u >= p.o0 && e + 1u < end) { hi = ${
      bits("(e + 1u - p.o0)")
    }; } else { hi = b0[w] >> 16u; }
  b0[w] = lo | (hi << 16u);`,
    HELPERS,
  );
}

const WIDEN = {
  f16: elementwise(
    "widen_f16",
    ["u32", "u32"],
    [],
    "let e = p.o1 + i; b0[p.o0 + i] = f16_wide(half_at(b1[e >> 1u], e));",
    HELPERS,
  ),
  bf16: elementwise(
    "widen_bf16",
    ["u32", "u32"],
    [],
    "let e = p.o1 + i; b0[p.o0 + i] = bf16_wide(half_at(b1[e >> 1u], e));",
    HELPERS,
  ),
};
const NARROW = {
  f16: store16("narrow_f16", ["u32", "u32"], [], (k) => `f16_bits(b1[p.o1 + ${k}])`),
  bf16: store16("narrow_bf16", ["u32", "u32"], [], (k) => `bf16_bits(b1[p.o1 + ${k}])`),
};
const FILL16 = store16("fill16", ["u32"], [["value", "u32"]], () => "p.value");
const COPY16 = store16(
  "copy16",
  ["u32", "u32"],
  [],
  (k) => `half_at(b1[(p.o1 + ${k}) >> 1u], p.o1 + ${k})`,
);

/** Words covered by the 16-bit window of `t`'s first `n` elements. */
function words(t: GpuTensor, n: number): number {
  return n === 0 ? 0 : ((t.offset + n + 1) >> 1) - (t.offset >> 1);
}

/** `dst[i] = src[i]` widened exactly, for i < n (dst f32, src 16-bit). */
export function widen(dev: GpuDevice, dst: GpuTensor, src: GpuTensor, n: number): void {
  runElementwise(dev, WIDEN[src.dtype as HalfDType], [dst, src], n);
}

/** `dst[i] = src[i]` rounded to dst's 16-bit type, for i < n (src f32). */
export function narrow(dev: GpuDevice, dst: GpuTensor, src: GpuTensor, n: number): void {
  runElementwise(dev, NARROW[dst.dtype as HalfDType], [dst, src], words(dst, n), [n]);
}

/** Set every element of the 16-bit `t` to the raw `bits`. */
export function fill16(dev: GpuDevice, t: GpuTensor, bits: number): void {
  runElementwise(dev, FILL16, [t], words(t, t.length), [t.length, bits]);
}

/** `dst = src` bit for bit between 16-bit tensors of one dtype (not overlapping). */
export function copy16(dev: GpuDevice, dst: GpuTensor, src: GpuTensor): void {
  if ((dst.offset | src.offset | dst.length) % 2 === 0 && dst.buffer !== src.buffer) {
    return dev.copyBuffer(dst, src); // whole words: the queue copies them
  }
  runElementwise(dev, COPY16, [dst, src], words(dst, dst.length), [dst.length]);
}

/** Write raw 16-bit `bits` at element `offset` of `t`. */
export function write16(dev: GpuDevice, t: GpuTensor, bits: Uint16Array, offset: number): void {
  dev.check("write");
  let a = t.offset + offset, b = a + bits.length, from = 0, to = bits.length;
  // A half word at either end is set by fill16 of a one-element window, which keeps the word's
  // other half; the whole words between go to the queue.
  const one = (e: number, v: number) => fill16(dev, new GpuTensor(dev, t.buffer, e, 1, t.dtype), v);
  if (a % 2 === 1 && a < b) one(a++, bits[from++]!);
  if (b % 2 === 1 && a < b) one(--b, bits[--to]!);
  if (a < b) dev.write(t, bits.subarray(from, to), a - t.offset);
}
