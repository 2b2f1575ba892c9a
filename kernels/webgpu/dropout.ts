// Dropout whose mask is a pure function of position: one invocation per element, the hash of
// its global index against the threshold. The hash is kernels/dropout.ts's dropoutHash, bit for
// bit (MurmurHash3 x86 32-bit of one 4-byte block; u32 arithmetic wraps as Math.imul does).

import { dropoutThreshold } from "../dropout.ts";
import type { GpuDevice, GpuTensor } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

/** WGSL `dropout_hash(key, g)`, the twin of `dropoutHash`. */
export const DROPOUT_HASH = `
fn dropout_hash(key: u32, g: u32) -> u32 {
  var k = g * 0xcc9e2d51u;
  k = ((k << 15u) | (k >> 17u)) * 0x1b873593u;
  var h = key ^ k;
  h = (h << 13u) | (h >> 19u);
  h = (h * 5u + 0xe6546b64u) ^ 4u;
  h = (h ^ (h >> 16u)) * 0x85ebca6bu;
  h = (h ^ (h >> 13u)) * 0xc2b2ae35u;
  return h ^ (h >> 16u);
}
`;

const DROPOUT = elementwise(
  "dropout",
  ["f32", "f32"],
  [
    ["cols", "u32"],
    ["rowOffset", "u32"],
    ["colOffset", "u32"],
    ["fullCols", "u32"],
    ["key", "u32"],
    ["thr", "u32"],
    ["scale", "f32"],
  ],
  `let g = (p.rowOffset + i / p.cols) * p.fullCols + p.colOffset + i % p.cols;
  let x = b1[p.o1 + i];
  b0[p.o0 + i] = select(0.0, x * p.scale, dropout_hash(p.key, g) >= p.thr);`,
  DROPOUT_HASH,
);

/** `out = keep ? inp / (1 - p) : 0` over a rows x cols block (out may alias inp). */
export function dropout(
  dev: GpuDevice,
  out: GpuTensor,
  inp: GpuTensor,
  rows: number,
  cols: number,
  p: number,
  key: number,
  rowOffset: number,
  colOffset: number,
  fullCols: number,
): void {
  runElementwise(dev, DROPOUT, [out, inp], rows * cols, [
    cols,
    rowOffset,
    colOffset,
    fullCols,
    key,
    dropoutThreshold(p),
    1 / (1 - p),
  ]);
}
