// GELU, tanh form, forward and backward; one invocation per element.

import type { GpuDevice, GpuTensor } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

// tanh through exp(-2|u|), which never overflows.
const HELPERS = `
const GELU_K: f32 = 0.7978845608028654;
fn safe_tanh(u: f32) -> f32 {
  let e = exp(-2.0 * abs(u));
  return sign(u) * (1.0 - e) / (1.0 + e);
}
`;

const FORWARD = elementwise(
  "gelu_forward",
  ["f32", "f32"],
  [],
  `let x = b1[p.o1 + i];
  b0[p.o0 + i] = 0.5 * x * (1.0 + safe_tanh(GELU_K * (x + 0.044715 * x * x * x)));`,
  HELPERS,
);

const BACKWARD = elementwise(
  "gelu_backward",
  ["f32", "f32", "f32"],
  [],
  `let x = b1[p.o1 + i];
  let th = safe_tanh(GELU_K * (x + 0.044715 * x * x * x));
  let du = GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
  let d = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
  b0[p.o0 + i] = b0[p.o0 + i] + d * b2[p.o2 + i];`,
  HELPERS,
);

/** `out = GELU(inp)` over n elements. */
export function geluForward(dev: GpuDevice, out: GpuTensor, inp: GpuTensor, n: number): void {
  runElementwise(dev, FORWARD, [out, inp], n);
}

/** `dinp += GELU'(inp) * dout` over n elements. */
export function geluBackward(
  dev: GpuDevice,
  dinp: GpuTensor,
  inp: GpuTensor,
  dout: GpuTensor,
  n: number,
): void {
  runElementwise(dev, BACKWARD, [dinp, inp, dout], n);
}
