// Element-wise kernels: fill, copy, add, axpy, scale, addRows, one invocation per element.

import {
  BUILTINS,
  FLAT_GROUP,
  type GpuDevice,
  type GpuTensor,
  grid,
  type Program,
} from "./device.ts";

/** Workgroup size of the element-wise kernels. */
export const WG = 256;

/** A program applying `stmt` to element `i < p.n`, with the given bindings and fields. */
export function elementwise(
  key: string,
  bindings: Program["bindings"],
  fields: Program["fields"],
  stmt: string,
  helpers = "",
): Program {
  return {
    key,
    bindings,
    fields: [["n", "u32"], ...fields],
    body: `${helpers}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  let i = ${FLAT_GROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  ${stmt}
}
`,
  };
}

/** Dispatch an element-wise program over `n` elements. */
export function runElementwise(
  dev: GpuDevice,
  prog: Program,
  tensors: readonly GpuTensor[],
  n: number,
  values: readonly number[] = [],
): void {
  if (n === 0) return;
  dev.run(prog, tensors, [n, ...values], grid(Math.ceil(n / WG)));
}

const FILL = {
  f32: elementwise("fill_f32", ["f32"], [["value", "f32"]], "b0[p.o0 + i] = p.value;"),
  i32: elementwise("fill_i32", ["i32"], [["value", "i32"]], "b0[p.o0 + i] = p.value;"),
};
const COPY = {
  f32: elementwise("copy_f32", ["f32", "f32"], [], "b0[p.o0 + i] = b1[p.o1 + i];"),
  i32: elementwise("copy_i32", ["i32", "i32"], [], "b0[p.o0 + i] = b1[p.o1 + i];"),
};
const ADD = elementwise(
  "add",
  ["f32", "f32", "f32"],
  [],
  "b0[p.o0 + i] = b1[p.o1 + i] + b2[p.o2 + i];",
);
const AXPY = elementwise(
  "axpy",
  ["f32", "f32"],
  [["alpha", "f32"]],
  "b0[p.o0 + i] = b0[p.o0 + i] + p.alpha * b1[p.o1 + i];",
);
const SCALE = elementwise(
  "scale",
  ["f32"],
  [["alpha", "f32"]],
  "b0[p.o0 + i] = b0[p.o0 + i] * p.alpha;",
);
const ADD_ROWS = elementwise(
  "addRows",
  ["f32", "f32"],
  [["N", "u32"]],
  "b0[p.o0 + i] = b0[p.o0 + i] + b1[p.o1 + i % p.N];",
);

/** Set every element of the f32 or i32 `t` to `value`. */
export function fill(dev: GpuDevice, t: GpuTensor, value: number): void {
  runElementwise(dev, FILL[t.dtype as "f32" | "i32"], [t], t.length, [value]);
}

/** `dst = src` element by element, f32 or i32 (the two must not overlap). */
export function copy(dev: GpuDevice, dst: GpuTensor, src: GpuTensor): void {
  runElementwise(dev, COPY[dst.dtype as "f32" | "i32"], [dst, src], dst.length);
}

/** `out = a + b` over n elements. */
export function add(dev: GpuDevice, out: GpuTensor, a: GpuTensor, b: GpuTensor, n: number): void {
  runElementwise(dev, ADD, [out, a, b], n);
}

/** `y += alpha * x` over n elements. */
export function axpy(dev: GpuDevice, y: GpuTensor, x: GpuTensor, alpha: number, n: number): void {
  runElementwise(dev, AXPY, [y, x], n, [alpha]);
}

/** `x *= alpha` over n elements. */
export function scale(dev: GpuDevice, x: GpuTensor, alpha: number, n: number): void {
  runElementwise(dev, SCALE, [x], n, [alpha]);
}

/** `out[M,N] += row[N]` for every row. */
export function addRows(
  dev: GpuDevice,
  out: GpuTensor,
  row: GpuTensor,
  M: number,
  N: number,
): void {
  runElementwise(dev, ADD_ROWS, [out, row], M * N, [N]);
}
