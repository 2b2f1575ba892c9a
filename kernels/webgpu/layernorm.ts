// LayerNorm forward and backward. One workgroup per row reduces mean and variance (forward) or
// the two gradient means (backward); on the direct path one invocation walks each row instead.
// The weight and bias gradients take one invocation per channel walking down the rows, so no two
// invocations write the same element.

import {
  BUILTINS,
  FLAT_GROUP,
  type GpuDevice,
  type GpuTensor,
  grid,
  type Program,
} from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";
import { treeReduce } from "./reduce.ts";

const WG = 128;

const FORWARD: Program = {
  key: "layernorm_forward",
  // out, mean, rstd, inp, w, b
  bindings: ["f32", "f32", "f32", "f32", "f32", "f32"],
  fields: [["N", "u32"], ["C", "u32"], ["eps", "f32"]],
  body: `${treeReduce(WG)}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  let row = ${FLAT_GROUP};
  if (row >= p.N) { return; }
  let x0 = p.o3 + row * p.C;
  var s = 0.0;
  for (var c = lid; c < p.C; c += ${WG}u) { s += b3[x0 + c]; }
  let mean = reduce_sum(lid, s) / f32(p.C);
  var v = 0.0;
  for (var c = lid; c < p.C; c += ${WG}u) {
    let d = b3[x0 + c] - mean;
    v += d * d;
  }
  let r = 1.0 / sqrt(reduce_sum(lid, v) / f32(p.C) + p.eps);
  let y0 = p.o0 + row * p.C;
  for (var c = lid; c < p.C; c += ${WG}u) {
    b0[y0 + c] = (b3[x0 + c] - mean) * r * b4[p.o4 + c] + b5[p.o5 + c];
  }
  if (lid == 0u) {
    b1[p.o1 + row] = mean;
    b2[p.o2 + row] = r;
  }
}
`,
};

const BACKWARD_INPUT: Program = {
  key: "layernorm_backward_input",
  // dinp, dout, inp, w, mean, rstd
  bindings: ["f32", "f32", "f32", "f32", "f32", "f32"],
  fields: [["N", "u32"], ["C", "u32"]],
  body: `${treeReduce(WG)}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  let row = ${FLAT_GROUP};
  if (row >= p.N) { return; }
  let x0 = p.o2 + row * p.C;
  let g0 = p.o1 + row * p.C;
  let mu = b4[p.o4 + row];
  let r = b5[p.o5 + row];
  var sg = 0.0;
  var sgx = 0.0;
  for (var c = lid; c < p.C; c += ${WG}u) {
    let xhat = (b2[x0 + c] - mu) * r;
    let g = b1[g0 + c] * b3[p.o3 + c];
    sg += g;
    sgx += g * xhat;
  }
  let gMean = reduce_sum(lid, sg) / f32(p.C);
  let gxMean = reduce_sum(lid, sgx) / f32(p.C);
  let d0 = p.o0 + row * p.C;
  for (var c = lid; c < p.C; c += ${WG}u) {
    let xhat = (b2[x0 + c] - mu) * r;
    let g = b1[g0 + c] * b3[p.o3 + c];
    b0[d0 + c] = b0[d0 + c] + r * (g - gMean - xhat * gxMean);
  }
}
`,
};

// dw, db, dout, inp, mean, rstd; one invocation per channel.
const BACKWARD_PARAMS = elementwise(
  "layernorm_backward_params",
  ["f32", "f32", "f32", "f32", "f32", "f32"],
  [["N", "u32"]],
  `var sw = 0.0;
  var sb = 0.0;
  for (var row = 0u; row < p.N; row++) {
    let g = b2[p.o2 + row * p.n + i];
    let xhat = (b3[p.o3 + row * p.n + i] - b4[p.o4 + row]) * b5[p.o5 + row];
    sw += g * xhat;
    sb += g;
  }
  b0[p.o0 + i] = b0[p.o0 + i] + sw;
  b1[p.o1 + i] = b1[p.o1 + i] + sb;`,
);

// One invocation per row, no workgroup memory (software adapters).
const FORWARD_DIRECT = elementwise(
  "layernorm_forward_direct",
  ["f32", "f32", "f32", "f32", "f32", "f32"],
  [["C", "u32"], ["eps", "f32"]],
  `let x0 = p.o3 + i * p.C;
  var s = 0.0;
  for (var c = 0u; c < p.C; c++) { s += b3[x0 + c]; }
  let mean = s / f32(p.C);
  var v = 0.0;
  for (var c = 0u; c < p.C; c++) {
    let d = b3[x0 + c] - mean;
    v += d * d;
  }
  let r = 1.0 / sqrt(v / f32(p.C) + p.eps);
  let y0 = p.o0 + i * p.C;
  for (var c = 0u; c < p.C; c++) {
    b0[y0 + c] = (b3[x0 + c] - mean) * r * b4[p.o4 + c] + b5[p.o5 + c];
  }
  b1[p.o1 + i] = mean;
  b2[p.o2 + i] = r;`,
);

const BACKWARD_INPUT_DIRECT = elementwise(
  "layernorm_backward_input_direct",
  ["f32", "f32", "f32", "f32", "f32", "f32"],
  [["C", "u32"]],
  `let x0 = p.o2 + i * p.C;
  let g0 = p.o1 + i * p.C;
  let mu = b4[p.o4 + i];
  let r = b5[p.o5 + i];
  var sg = 0.0;
  var sgx = 0.0;
  for (var c = 0u; c < p.C; c++) {
    let g = b1[g0 + c] * b3[p.o3 + c];
    sg += g;
    sgx += g * (b2[x0 + c] - mu) * r;
  }
  let gMean = sg / f32(p.C);
  let gxMean = sgx / f32(p.C);
  let d0 = p.o0 + i * p.C;
  for (var c = 0u; c < p.C; c++) {
    let xhat = (b2[x0 + c] - mu) * r;
    let g = b1[g0 + c] * b3[p.o3 + c];
    b0[d0 + c] = b0[d0 + c] + r * (g - gMean - xhat * gxMean);
  }`,
);

/** LayerNorm forward over N rows of C; saves mean[N] and rstd[N]. */
export function layernormForward(
  dev: GpuDevice,
  out: GpuTensor,
  mean: GpuTensor,
  rstd: GpuTensor,
  inp: GpuTensor,
  w: GpuTensor,
  b: GpuTensor,
  N: number,
  C: number,
  eps: number,
): void {
  if (N === 0) return;
  const tensors = [out, mean, rstd, inp, w, b];
  if (dev.direct) runElementwise(dev, FORWARD_DIRECT, tensors, N, [C, eps]);
  else dev.run(FORWARD, tensors, [N, C, eps], grid(N));
}

/** LayerNorm backward: dinp, dw, db += the gradients. */
export function layernormBackward(
  dev: GpuDevice,
  dinp: GpuTensor,
  dw: GpuTensor,
  db: GpuTensor,
  dout: GpuTensor,
  inp: GpuTensor,
  w: GpuTensor,
  mean: GpuTensor,
  rstd: GpuTensor,
  N: number,
  C: number,
): void {
  if (N === 0 || C === 0) return;
  const tensors = [dinp, dout, inp, w, mean, rstd];
  if (dev.direct) runElementwise(dev, BACKWARD_INPUT_DIRECT, tensors, N, [C]);
  else dev.run(BACKWARD_INPUT, tensors, [N, C], grid(N));
  runElementwise(dev, BACKWARD_PARAMS, [dw, db, dout, inp, mean, rstd], C, [N]);
}
