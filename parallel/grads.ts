/**
 * The gradient work between backward and the optimizer that model parallelism needs, read
 * from what each layer declared on its parameters (nothing parses names):
 *
 * - a `partial` parameter's gradient (a replicated parameter each rank applied to its own rows,
 *   as under sequence parallelism) is summed over the tensor-parallel group;
 * - a `tie`d parameter's copies (the embedding and a tied head on another stage) are summed
 *   over that group, so both take the same step;
 * - the global norm counts every parameter once: a `split` one on every tensor rank (each holds
 *   a different piece), a replicated one on tensor rank 0 only, a `mirror` nowhere.
 *
 * Every function works on ranges of the flat gradient buffer that the caller owns (all of it
 * without ZeRO; the rank's shard with it), so that data parallelism can reduce first.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import type { FlatLayout } from "../optim/mod.ts";
import { allReduceT } from "../optim/mod.ts";
import { type TensorParallel, tpRank } from "./mappings.ts";

/** A half-open range `[start, end)` of the flat buffer. */
export type Range = readonly [number, number];

/** The groups the gradient work runs over. */
export interface GradGroups {
  /** The tensor-parallel group (with the sequence-parallel flag). */
  readonly tp: TensorParallel;
  /** The group of the stages holding tied copies (`null` on a middle stage). */
  readonly embedding: Communicator | null;
  /** Timeout of each collective in milliseconds. */
  readonly timeoutMs?: number;
}

function overlap(s: { offset: number; size: number }, ranges: readonly Range[]): Range[] {
  const out: Range[] = [];
  for (const [a, b] of ranges) {
    const lo = Math.max(a, s.offset), hi = Math.min(b, s.offset + s.size);
    if (lo < hi) out.push([lo, hi]);
  }
  return out;
}

/**
 * Sum the partial gradients over the tensor group and the tied copies over their group, on the
 * parts of `ranges` each parameter covers. Every rank of both groups calls it with ranges that
 * cover the same elements of each parameter.
 *
 * @param be the backend
 * @param g the groups
 * @param layout this rank's flat layout
 * @param grads the flat gradient buffer
 * @param ranges the ranges this rank owns; default the whole buffer
 * @returns once summed
 */
export async function syncModelParallelGrads(
  be: Backend,
  g: GradGroups,
  layout: FlatLayout,
  grads: Tensor,
  ranges: readonly Range[] = [[0, layout.size]],
): Promise<void> {
  for (const s of layout.slots) {
    const sum = s.partial ? g.tp.comm : s.tie ? g.embedding : null;
    if (sum === null || sum === undefined || sum.size === 1) continue;
    for (const [a, b] of overlap(s, ranges)) {
      await allReduceT(be, { comm: sum, timeoutMs: g.timeoutMs }, be.view(grads, a, b - a));
    }
  }
}

/**
 * The sum of squares of the gradients this rank counts toward the global norm (see the module
 * doc), accumulated into `out[0]` on the backend; sum it over the ranks that together hold
 * each counted element once.
 *
 * @param be the backend
 * @param tp the tensor-parallel group
 * @param layout this rank's flat layout
 * @param grads the flat gradient buffer
 * @param out a one-element tensor, set to the sum
 * @param ranges the ranges this rank owns; default the whole buffer
 */
export function countedSumSquares(
  be: Backend,
  tp: TensorParallel,
  layout: FlatLayout,
  grads: Tensor,
  out: Tensor,
  ranges: readonly Range[] = [[0, layout.size]],
): void {
  const lead = tpRank(tp) === 0;
  be.fill(out, 0);
  for (const s of layout.slots) {
    if (s.mirror || (s.split === undefined && !lead)) continue;
    for (const [a, b] of overlap(s, ranges)) {
      be.sumSquares(out, be.view(grads, a, b - a), b - a, true);
    }
  }
}
