// Collectives on backend tensors: a host-memory tensor whose live array is a Float32Array goes
// to the communicator in place; anything else (a GPU tensor, float64 storage) is copied out and
// back.

import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";

/** The group and options every tensor-parallel collective needs. */
export interface Group {
  readonly comm: Communicator | null;
  readonly timeoutMs?: number;
}

function opts(g: Group): { timeoutMs: number } | undefined {
  return g.timeoutMs === undefined ? undefined : { timeoutMs: g.timeoutMs };
}

async function hostF32(be: Backend, t: Tensor): Promise<[Float32Array, boolean]> {
  const v = be.hostView(t);
  if (v instanceof Float32Array) return [v, true];
  const r = v ?? await be.read(t);
  return [r instanceof Float32Array ? r : Float32Array.from(r as ArrayLike<number>), false];
}

export async function allReduceT(be: Backend, g: Group, t: Tensor, op: "sum" | "max" = "sum") {
  if (g.comm === null || g.comm.size === 1) return;
  const [a, live] = await hostF32(be, t);
  await g.comm.allReduce(a, op, opts(g));
  if (!live) be.write(t, a);
}

/** out[size * n] = concatenation of every rank's inp[n]. */
export async function allGatherT(be: Backend, g: Group, out: Tensor, inp: Tensor) {
  if (g.comm === null || g.comm.size === 1) return be.copy(out, inp);
  const [a] = await hostF32(be, inp);
  const [b, live] = await hostF32(be, out);
  await g.comm.allGather(a, b, opts(g));
  if (!live) be.write(out, b);
}

/** out[n] = chunk `rank` of the sum over ranks of inp[size * n]. */
export async function reduceScatterT(be: Backend, g: Group, out: Tensor, inp: Tensor) {
  if (g.comm === null || g.comm.size === 1) return be.copy(out, inp);
  const [a] = await hostF32(be, inp);
  const [b, live] = await hostF32(be, out);
  await g.comm.reduceScatter(a, b, "sum", opts(g));
  if (!live) be.write(out, b);
}
