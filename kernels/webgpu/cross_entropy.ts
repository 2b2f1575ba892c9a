// Softmax cross-entropy over the vocabulary. Forward: one workgroup per row (max, then the sum
// of exp(x - max)), so the softmax never overflows; on the direct path one invocation walks each
// row instead. Backward: one invocation per logit.

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

const WG = 256;

const FORWARD: Program = {
  key: "crossEntropy_forward",
  // losses, probs, logits, targets
  bindings: ["f32", "f32", "f32", "i32"],
  fields: [["N", "u32"], ["V", "u32"]],
  body: `${treeReduce(WG)}${treeReduce(WG, "reduce_max", "max(a, b)")}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  let row = ${FLAT_GROUP};
  if (row >= p.N) { return; }
  let x0 = p.o2 + row * p.V;
  var m = -3.4028235e38;
  for (var j = lid; j < p.V; j += ${WG}u) { m = max(m, b2[x0 + j]); }
  let mx = reduce_max(lid, m);
  var s = 0.0;
  for (var j = lid; j < p.V; j += ${WG}u) { s += exp(b2[x0 + j] - mx); }
  let z = reduce_sum(lid, s);
  let y0 = p.o1 + row * p.V;
  for (var j = lid; j < p.V; j += ${WG}u) { b1[y0 + j] = exp(b2[x0 + j] - mx) / z; }
  if (lid == 0u) {
    let t = b3[p.o3 + row];
    var loss = 0.0;
    if (t >= i32(p.V)) {
      loss = bitcast<f32>(0x7fc00000u); // a target past the vocabulary: NaN, never silent
    } else if (t >= 0) {
      loss = log(z) - (b2[x0 + u32(t)] - mx);
    }
    b0[p.o0 + row] = loss;
  }
}
`,
};

// One invocation per row, no workgroup memory (software adapters).
const FORWARD_DIRECT = elementwise(
  "crossEntropy_forward_direct",
  ["f32", "f32", "f32", "i32"],
  [["V", "u32"]],
  `let x0 = p.o2 + i * p.V;
  var mx = -3.4028235e38;
  for (var j = 0u; j < p.V; j++) { mx = max(mx, b2[x0 + j]); }
  var z = 0.0;
  for (var j = 0u; j < p.V; j++) { z += exp(b2[x0 + j] - mx); }
  let y0 = p.o1 + i * p.V;
  for (var j = 0u; j < p.V; j++) { b1[y0 + j] = exp(b2[x0 + j] - mx) / z; }
  let t = b3[p.o3 + i];
  var loss = 0.0;
  if (t >= i32(p.V)) {
    loss = bitcast<f32>(0x7fc00000u); // a target past the vocabulary: NaN, never silent
  } else if (t >= 0) {
    loss = log(z) - (b2[x0 + u32(t)] - mx);
  }
  b0[p.o0 + i] = loss;`,
);

const BACKWARD = elementwise(
  "crossEntropy_backward",
  ["f32", "f32", "i32"],
  [["V", "u32"], ["dloss", "f32"]],
  `let t = b2[p.o2 + i / p.V];
  if (t < 0 || t >= i32(p.V)) { return; }
  var d = b1[p.o1 + i];
  if (u32(t) == i % p.V) { d -= 1.0; }
  b0[p.o0 + i] = b0[p.o0 + i] + d * p.dloss;`,
);

/** losses[N] and probs[N,V] from logits[N,V] and targets[N] (negative targets give 0). */
export function crossEntropyForward(
  dev: GpuDevice,
  losses: GpuTensor,
  probs: GpuTensor,
  logits: GpuTensor,
  targets: GpuTensor,
  N: number,
  V: number,
): void {
  if (N === 0) return;
  const tensors = [losses, probs, logits, targets];
  if (dev.direct) runElementwise(dev, FORWARD_DIRECT, tensors, N, [V]);
  else dev.run(FORWARD, tensors, [N, V], grid(N));
}

/** dlogits += (probs - onehot(targets)) * dloss, skipping rows with a negative target. */
export function crossEntropyBackward(
  dev: GpuDevice,
  dlogits: GpuTensor,
  probs: GpuTensor,
  targets: GpuTensor,
  dloss: number,
  N: number,
  V: number,
): void {
  runElementwise(dev, BACKWARD, [dlogits, probs, targets], N * V, [V, dloss]);
}
