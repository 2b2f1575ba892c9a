// Op cases of 16-bit storage that state their expected values themselves (each also runs on the
// reference backend and the arrays it returns are compared across backends): rounding edge cases
// of write, read, fill and copy, every bit pattern through the device's conversions, odd
// offsets and lengths (half words on WebGPU), and a matmul accumulating into bf16.

import assert from "node:assert/strict";
import {
  type Backend,
  halfValue,
  type HostArray,
  Rng,
  roundHalf,
  type Tensor,
  widenHalf,
} from "../../kernels/mod.ts";
import { type OpCase, read, sameValue } from "./_case_util.ts";

/** got[at + i] and want[i] are the same value (NaN equal to NaN) for every i. */
function same(label: string, got: HostArray, want: Float32Array, at: number): void {
  for (let i = 0; i < want.length; i++) {
    const g = got[at + i], w = want[i];
    if (!Object.is(g, w) && !(g !== g && w !== w)) assert.fail(`${label}[${i}] = ${g}, want ${w}`);
  }
}

function expectValues(label: string, got: HostArray, want: readonly number[]): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < want.length; i++) {
    if (!sameValue(got[i], want[i])) assert.fail(`${label}[${i}] = ${got[i]}, want ${want[i]}`);
  }
}

const U = 2 ** -24; // the smallest f16 subnormal
// [input, its f16, its bf16]
const EDGES: [number, number, number][] = [
  [1 + 2 ** -11, 1, 1], // f16 tie: to even
  [1 + 3 * 2 ** -11, 1 + 2 ** -9, 1], // f16 tie: to even (up)
  [1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -10, 1], // just past the f16 tie
  [1 + 2 ** -8, 1 + 2 ** -8, 1], // bf16 tie: to even
  [1 + 3 * 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -6], // bf16 tie: to even (up)
  [1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -8, 1 + 2 ** -7], // just past the bf16 tie
  [65504, 65504, 65536],
  [65519, 65504, 65536],
  [65520, Infinity, 65536], // f16 overflows
  [-65520, -Infinity, -65536],
  [3.4028234663852886e38, Infinity, Infinity], // float32's largest: bf16 overflows too
  [3.3895313892515355e38, Infinity, 3.3895313892515355e38], // bf16's largest
  [U, U, U],
  [2 ** -25, 0, 2 ** -25], // f16 tie between 0 and the smallest subnormal: 0
  [3 * 2 ** -26, U, 3 * 2 ** -26],
  [3 * 2 ** -25, 2 * U, 3 * 2 ** -25], // f16 tie between 1 and 2 subnormal units: 2
  [5 * 2 ** -25, 2 * U, 5 * 2 ** -25], // f16 tie between 2 and 3 units: 2
  [2 ** -14 - 2 ** -25, 2 ** -14, 2 ** -14], // f16 tie at the top of the subnormals: to 2^-14
  [2 ** -130, 0, 2 ** -130], // float32 subnormal, exact in bf16
  [2 ** -140, 0, 0],
  [1.5 * 2 ** -133, 0, 2 ** -132], // bf16 subnormal tie: to even
  [NaN, NaN, NaN],
  [-0, -0, -0],
  [-Infinity, -Infinity, -Infinity],
  [-3.14159, -3.140625, -3.140625],
];

const xs = new Float32Array(EDGES.map((e) => e[0]));

async function edgeCase(be: Backend): Promise<Record<string, HostArray>> {
  const n = xs.length;
  const wide = be.alloc(n);
  be.write(wide, xs);
  const out: Record<string, Tensor> = {};
  for (const d of ["f16", "bf16"] as const) {
    const direct = be.alloc(n, d), copied = be.alloc(n, d), back = be.alloc(n);
    be.write(direct, xs); // rounded by write
    be.copy(copied, wide); // rounded by copy (on WebGPU: on the device)
    be.copy(back, copied); // widened by copy
    Object.assign(out, { [`${d} write`]: direct, [`${d} copy`]: copied, [`${d} back`]: back });
  }
  const got = await read(be, out);
  for (const [k, v] of Object.entries(got)) {
    expectValues(k, v, EDGES.map((e) => e[k.startsWith("f16") ? 1 : 2]));
  }
  return {};
}

async function conversionCase(be: Backend): Promise<Record<string, HostArray>> {
  // Float64Array writes round once; raw bits go in as they are; fill rounds.
  const f16 = be.alloc(4, "f16"), bf16 = be.alloc(4, "bf16");
  be.write(f16, new Float64Array([1 + 2 ** -11 + 2 ** -40, 0.1]));
  be.write(bf16, new Float64Array([1 + 2 ** -8 + 2 ** -40, 1e300]));
  be.write(f16, new Uint16Array([0x7c01, 0x8001]), 2); // a signalling NaN, -2^-24
  be.write(bf16, new Uint16Array([0xff81, 0x0001]), 2);
  const filled16 = be.alloc(3, "f16"), filledB = be.alloc(3, "bf16");
  be.fill(filled16, 65520);
  be.fill(filledB, 1 + 2 ** -8 + 2 ** -30);
  // Between the 16-bit types: one rounding of the exact value.
  const a16 = be.alloc(6, "f16"), toB = be.alloc(6, "bf16"), aB = be.alloc(6, "bf16");
  const toF = be.alloc(6, "f16");
  be.write(a16, new Float32Array([1 + 2 ** -10, 49152, 65504, -0, 2 ** -20, NaN]));
  be.copy(toB, a16);
  be.write(aB, new Float32Array([2 ** 20, 1 + 2 ** -7, 2 ** -20, -0, NaN, -(2 ** -30)]));
  be.copy(toF, aB);
  const got = await read(be, { f16, bf16, filled16, filledB, toB, toF });
  expectValues("f16", got.f16, [1 + 2 ** -10, halfValue("f16", 0x2e66), NaN, -U]);
  expectValues("bf16", got.bf16, [1 + 2 ** -7, Infinity, NaN, 2 ** -133]);
  expectValues("filled16", got.filled16, [Infinity, Infinity, Infinity]);
  expectValues("filledB", got.filledB, [1 + 2 ** -7, 1 + 2 ** -7, 1 + 2 ** -7]);
  expectValues("toB", got.toB, [1, 49152, 65536, -0, 2 ** -20, NaN]);
  expectValues("toF", got.toF, [Infinity, 1 + 2 ** -7, 2 ** -20, -0, NaN, -0]);
  return {};
}

// Two elements share a word on WebGPU: writes, fills, copies and op results at odd offsets and
// odd lengths must leave the neighbouring halves alone.
async function halfWordCase(be: Backend): Promise<Record<string, HostArray>> {
  const out: Record<string, Tensor> = {};
  for (const d of ["f16", "bf16"] as const) {
    const t = be.alloc(9, d);
    be.fill(t, 7);
    be.write(t, new Float32Array([1, 2, 3]), 1); // odd start, odd length
    be.fill(be.view(t, 5, 1), -1);
    be.write(t, new Float32Array([4, 5]), 6); // even start, even length
    const u = be.alloc(9, d);
    be.fill(u, 9);
    be.copy(be.view(u, 1, 5), be.view(t, 2, 5)); // odd -> even offsets
    be.copy(be.view(u, 6, 2), be.view(t, 0, 2)); // whole words
    const s = be.alloc(9, d);
    be.fill(s, 8);
    be.scale(be.view(s, 3, 3), 0.5, 3); // an op's result in an odd window
    be.add(be.view(s, 0, 1), be.view(t, 1, 1), be.view(t, 2, 1), 1);
    Object.assign(out, { [`${d} t`]: t, [`${d} u`]: u, [`${d} s`]: s });
  }
  const got = await read(be, out);
  for (const d of ["f16", "bf16"]) {
    expectValues(`${d} t`, got[`${d} t`]!, [7, 1, 2, 3, 7, -1, 4, 5, 7]);
    expectValues(`${d} u`, got[`${d} u`]!, [9, 2, 3, 7, -1, 4, 7, 1, 9]);
    expectValues(`${d} s`, got[`${d} s`]!, [3, 8, 8, 4, 4, 4, 8, 8, 8]);
  }
  return got;
}

// Every bit pattern through the backend's own conversions (copy between dtypes: the device's
// shaders on WebGPU), against kernels/half.ts (checked in half_test.ts).
async function patternCase(be: Backend): Promise<Record<string, HostArray>> {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const rng = new Rng(21), n = 1 << 16;
  const u = Uint32Array.from({ length: n }, () => rng.nextUint32());
  for (let i = 0; i < 2048; i++) u[i] = 0x3f800000 + (i << 3); // around ties near 1
  for (let i = 0; i < 2048; i++) u[2048 + i] = 0x33000000 + i * 2011; // f16 subnormals
  const x = new Float32Array(u.buffer), xt = be.alloc(n);
  be.write(xt, x);
  const out: Record<string, Tensor> = {};
  for (const d of ["f16", "bf16"] as const) {
    const bits = be.alloc(65536, d), wide = be.alloc(65536), r = be.alloc(n + 1, d);
    be.write(bits, all);
    be.copy(wide, bits);
    be.fill(r, 0);
    be.copy(be.view(r, 1, n), xt); // rounding into an odd window
    Object.assign(out, { [`${d} wide`]: wide, [`${d} round`]: r });
  }
  const got = await read(be, out);
  for (const d of ["f16", "bf16"] as const) {
    const want = new Float32Array(65536);
    widenHalf(d, all, want);
    same(`${d}: bits widened`, got[`${d} wide`]!, want, 0);
    const bits = new Uint16Array(n), rounded = new Float32Array(n), r = got[`${d} round`]!;
    roundHalf(d, x, bits);
    widenHalf(d, bits, rounded);
    assert.equal(r[0], 0, `${d}: the element before the window`);
    same(`${d}: float32 rounded`, r, rounded, 1);
  }
  return {};
}

// out (bf16) += a @ b, every sum exact in f32; the stores round once: 256 + 1.5 -> 258 (a
// rounding per term would give 256), 256 + 1 -> 256 (a tie, to even).
async function bf16AccumulateCase(be: Backend): Promise<Record<string, HostArray>> {
  const a = be.alloc(4), b = be.alloc(6), out = be.alloc(6, "bf16");
  be.write(a, new Float32Array([1, 0.5, 1, 1]));
  be.write(b, new Float32Array([1, 0, 0.5, 1, 1, 0.25]));
  be.write(out, new Float32Array([256, 256, 256, 256, 256, 258]));
  be.matmul(out, a, b, null, 2, 3, 2, { accumulate: true });
  const got = await read(be, { out });
  expectValues("out", got.out, [258, 256, 256, 258, 256, 258]);
  return got;
}

/** The 16-bit storage cases. */
export const storageCases: readonly OpCase[] = [
  {
    name:
      "write() and copy() round f16 and bf16 to nearest even: ties, subnormals, overflow, NaN, -0",
    storage16: false,
    run: edgeCase,
  },
  {
    name:
      "Float64Array writes round once, Uint16Array writes are raw bits, fill() and f16 <-> bf16 copies round",
    storage16: false,
    run: conversionCase,
  },
  {
    name: "16-bit writes, fills, copies and op results at odd offsets leave their neighbours alone",
    storage16: false,
    run: halfWordCase,
  },
  {
    name:
      "every f16 and bf16 bit pattern widens exactly and 65,536 float32 patterns round as roundHalf()",
    storage16: false,
    run: patternCase,
  },
  {
    name: "matmul() accumulating into a bf16 tensor rounds once per element",
    storage16: false,
    run: bf16AccumulateCase,
  },
];
