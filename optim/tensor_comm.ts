/**
 * Collectives on backend tensors: a host-memory tensor goes to the communicator in place (a
 * Float32Array, or a Uint16Array of float16 / bfloat16 bits, which then travel in 16 bits);
 * anything else (a GPU tensor, float64 storage) is copied out and back. A group of one rank
 * (or none) makes each of them the identity.
 *
 * @module
 */

import type { CollectiveBuffer, Communicator, DType } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";

/** The group and options every collective on tensors needs. */
export interface Group {
  /** The group; `null` means one rank. */
  readonly comm: Communicator | null;
  /** Timeout of each collective in milliseconds. */
  readonly timeoutMs?: number;
}

/**
 * A tensor's data as a collective buffer.
 *
 * @param be the backend
 * @param t the tensor
 * @returns the buffer, its collective dtype (for 16-bit data), and whether it is the live
 *   storage (else a copy that must be written back)
 */
export async function wire(
  be: Backend,
  t: Tensor,
): Promise<[CollectiveBuffer, DType | undefined, boolean]> {
  const v = be.hostView(t) as unknown;
  if (v instanceof Float32Array) return [v, undefined, true];
  if (v instanceof Uint16Array) {
    return [v, t.dtype === "bf16" ? "bfloat16" : "float16", true];
  }
  const r = await be.read(t);
  return [
    r instanceof Float32Array ? r : Float32Array.from(r as ArrayLike<number>),
    undefined,
    false,
  ];
}

function opts(g: Group, dtype: DType | undefined) {
  const o: { timeoutMs?: number; dtype?: DType } = {};
  if (g.timeoutMs !== undefined) o.timeoutMs = g.timeoutMs;
  if (dtype !== undefined) o.dtype = dtype;
  return o;
}

function back(be: Backend, t: Tensor, a: CollectiveBuffer, live: boolean): void {
  if (!live) be.write(t, a as Float32Array);
}

/**
 * Reduce `t` in place across the group.
 *
 * @param be the backend
 * @param g the group
 * @param t the tensor
 * @param op the reduction; default sum
 */
export async function allReduceT(
  be: Backend,
  g: Group,
  t: Tensor,
  op: "sum" | "max" = "sum",
): Promise<void> {
  if (g.comm === null || g.comm.size === 1) return;
  const [a, dtype, live] = await wire(be, t);
  await g.comm.allReduce(a, op, opts(g, dtype));
  back(be, t, a, live);
}

/**
 * `out[size * n]` = the concatenation of every rank's `inp[n]`.
 *
 * @param be the backend
 * @param g the group
 * @param out the gathered tensor
 * @param inp this rank's part
 */
export async function allGatherT(be: Backend, g: Group, out: Tensor, inp: Tensor): Promise<void> {
  if (g.comm === null || g.comm.size === 1) return be.copy(out, inp);
  const [a, dtype] = await wire(be, inp);
  const [b, , live] = await wire(be, out);
  await g.comm.allGather(a, b, opts(g, dtype));
  back(be, out, b, live);
}

/**
 * `out[n]` = chunk `rank` of the sum over ranks of `inp[size * n]`.
 *
 * @param be the backend
 * @param g the group
 * @param out this rank's chunk of the sum
 * @param inp this rank's whole contribution
 */
export async function reduceScatterT(
  be: Backend,
  g: Group,
  out: Tensor,
  inp: Tensor,
): Promise<void> {
  if (g.comm === null || g.comm.size === 1) return be.copy(out, inp);
  const [a, dtype] = await wire(be, inp);
  const [b, , live] = await wire(be, out);
  await g.comm.reduceScatter(a, b, "sum", opts(g, dtype));
  back(be, out, b, live);
}
