// Embedding lookup and its scatter-add; the backward gives each channel to one invocation, which
// walks the tokens in order, so no two invocations write the same element and no atomics are
// needed.

import type { GpuDevice, GpuTensor } from "./device.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

const FORWARD = elementwise(
  "embedding_forward",
  ["f32", "i32", "f32"],
  [["C", "u32"], ["rows", "i32"], ["start", "i32"]],
  `let n = i / p.C;
  let c = i % p.C;
  let r = b1[p.o1 + n] - p.start;
  var v = 0.0;
  if (r >= 0 && r < p.rows) { v = b2[p.o2 + u32(r) * p.C + c]; }
  b0[p.o0 + i] = v;`,
);

const BACKWARD = elementwise(
  "embedding_backward",
  ["f32", "f32", "i32"],
  [["N", "u32"], ["rows", "i32"], ["start", "i32"]],
  `for (var n = 0u; n < p.N; n++) {
    let r = b2[p.o2 + n] - p.start;
    if (r >= 0 && r < p.rows) {
      let d = p.o0 + u32(r) * p.n + i;
      b0[d] = b0[d] + b1[p.o1 + n * p.n + i];
    }
  }`,
);

/** `out[N,C] = table[idx[n] - vocabStart]`, zeros for rows outside the table's shard. */
export function embeddingForward(
  dev: GpuDevice,
  out: GpuTensor,
  idx: GpuTensor,
  table: GpuTensor,
  N: number,
  C: number,
  vocabStart: number,
): void {
  const rows = C === 0 ? 0 : Math.floor(table.length / C);
  runElementwise(dev, FORWARD, [out, idx, table], N * C, [C, rows, vocabStart]);
}

/** `dtable[idx[n] - vocabStart] += dout[n]` for rows inside the shard. */
export function embeddingBackward(
  dev: GpuDevice,
  dtable: GpuTensor,
  dout: GpuTensor,
  idx: GpuTensor,
  N: number,
  C: number,
  vocabStart: number,
): void {
  const rows = C === 0 ? 0 : Math.floor(dtable.length / C);
  runElementwise(dev, BACKWARD, [dtable, dout, idx], C, [N, rows, vocabStart]);
}
