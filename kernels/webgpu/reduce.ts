// Reductions: column sums (sumRows) and the sum of squares that gradient clipping needs.

import { BUILTINS, FLAT_GROUP, type GpuDevice, type GpuTensor, type Program } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

/** WGSL tree sum over a workgroup of `wg` invocations through `red`; call in uniform flow. */
export function treeReduce(wg: number, name = "reduce_sum", op = "a + b"): string {
  return `
var<workgroup> red_${name}: array<f32, ${wg}>;
fn ${name}(lid: u32, v: f32) -> f32 {
  red_${name}[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let a = red_${name}[lid];
      let b = red_${name}[lid + s];
      red_${name}[lid] = ${op};
    }
    workgroupBarrier();
  }
  let r = red_${name}[0];
  workgroupBarrier();
  return r;
}
`;
}

// One invocation per column, walking down the rows in order.
const SUM_ROWS = elementwise(
  "sumRows",
  ["f32", "f32"],
  [["M", "u32"], ["acc", "u32"]],
  `var s = 0.0;
  for (var r = 0u; r < p.M; r++) { s += b1[p.o1 + r * p.n + i]; }
  if (p.acc != 0u) { s += b0[p.o0 + i]; }
  b0[p.o0 + i] = s;`,
);

const WG = 256;
const PARTIALS = 256; // workgroups of the first pass

const SQ_PARTIAL: Program = {
  key: "sumSquares_partial",
  bindings: ["f32", "f32"],
  fields: [["n", "u32"]],
  body: `${treeReduce(WG)}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  let g = ${FLAT_GROUP};
  var s = 0.0;
  for (var i = g * ${WG}u + lid; i < p.n; i += nwg.x * ${WG}u) {
    let x = b1[p.o1 + i];
    s += x * x;
  }
  let t = reduce_sum(lid, s);
  if (lid == 0u) { b0[p.o0 + g] = t; }
}
`,
};

const SQ_FINAL: Program = {
  key: "sumSquares_final",
  bindings: ["f32", "f32"],
  fields: [["n", "u32"], ["acc", "u32"]],
  body: `${treeReduce(WG)}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  var s = 0.0;
  for (var i = lid; i < p.n; i += ${WG}u) { s += b1[p.o1 + i]; }
  let t = reduce_sum(lid, s);
  if (lid == 0u) {
    if (p.acc != 0u) { b0[p.o0] = b0[p.o0] + t; } else { b0[p.o0] = t; }
  }
}
`,
};

// Direct path: invocation g sums the squares of its contiguous chunk, then one invocation adds
// the partial sums.
const SQ_PARTIAL_DIRECT = elementwise(
  "sumSquares_partial_direct",
  ["f32", "f32"],
  [["chunk", "u32"], ["total", "u32"]],
  `let end = min((i + 1u) * p.chunk, p.total);
  var s = 0.0;
  for (var j = i * p.chunk; j < end; j++) {
    let x = b1[p.o1 + j];
    s += x * x;
  }
  b0[p.o0 + i] = s;`,
);

const SQ_FINAL_DIRECT = elementwise(
  "sumSquares_final_direct",
  ["f32", "f32"],
  [["parts", "u32"], ["acc", "u32"]],
  `var s = 0.0;
  for (var j = 0u; j < p.parts; j++) { s += b1[p.o1 + j]; }
  if (p.acc != 0u) { s += b0[p.o0]; }
  b0[p.o0] = s;`,
);

/** `out[N] (+)= sum over rows of inp[M,N]`. */
export function sumRows(
  dev: GpuDevice,
  out: GpuTensor,
  inp: GpuTensor,
  M: number,
  N: number,
  accumulate: boolean,
): void {
  runElementwise(dev, SUM_ROWS, [out, inp], N, [M, accumulate ? 1 : 0]);
}

/** `out[0] (+)= sum of x[n]^2`, in two passes (per-workgroup partials, then one workgroup). */
export function sumSquares(
  dev: GpuDevice,
  out: GpuTensor,
  x: GpuTensor,
  n: number,
  accumulate: boolean,
): void {
  if (dev.direct) {
    const parts = Math.min(PARTIALS * 4, Math.ceil(n / 256));
    const chunk = parts === 0 ? 0 : Math.ceil(n / parts);
    const partial = dev.scratch("sumSquares", PARTIALS * 4);
    runElementwise(dev, SQ_PARTIAL_DIRECT, [partial, x], parts, [chunk, n]);
    runElementwise(dev, SQ_FINAL_DIRECT, [out, partial], 1, [parts, accumulate ? 1 : 0]);
    return;
  }
  const groups = Math.max(1, Math.min(PARTIALS, Math.ceil(n / (WG * 4))));
  const partial = dev.scratch("sumSquares", PARTIALS);
  if (n > 0) dev.run(SQ_PARTIAL, [partial, x], [n], [groups]);
  dev.run(SQ_FINAL, [out, partial], [n > 0 ? groups : 0, accumulate ? 1 : 0], [1]);
}
