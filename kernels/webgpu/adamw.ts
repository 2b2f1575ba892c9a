// AdamW, one invocation per element: bias-corrected moments, decoupled weight decay.

import type { AdamWParams } from "../backend.ts";
import type { GpuDevice, GpuTensor } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

const ADAMW = elementwise(
  "adamw",
  ["f32", "f32", "f32", "f32"],
  [["lr", "f32"], ["beta1", "f32"], ["beta2", "f32"], ["eps", "f32"], ["wd", "f32"], [
    "c1",
    "f32",
  ], ["c2", "f32"]],
  `let g = b1[p.o1 + i];
  let m = p.beta1 * b2[p.o2 + i] + (1.0 - p.beta1) * g;
  let v = p.beta2 * b3[p.o3 + i] + (1.0 - p.beta2) * g * g;
  b2[p.o2 + i] = m;
  b3[p.o3 + i] = v;
  let w = b0[p.o0 + i];
  b0[p.o0 + i] = w - p.lr * ((m / p.c1) / (sqrt(v / p.c2) + p.eps) + p.wd * w);`,
);

/** One AdamW step over n elements of `param` with `grad` and the moments `m`, `v`. */
export function adamw(
  dev: GpuDevice,
  param: GpuTensor,
  grad: GpuTensor,
  m: GpuTensor,
  v: GpuTensor,
  n: number,
  p: AdamWParams,
): void {
  const c1 = 1 - p.beta1 ** p.step, c2 = 1 - p.beta2 ** p.step;
  runElementwise(dev, ADAMW, [param, grad, m, v], n, [
    p.lr,
    p.beta1,
    p.beta2,
    p.eps,
    p.weightDecay,
    c1,
    c2,
  ]);
}
