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
 * Both work on the pieces of the gradients a rank holds (all of them without sharding; its
 * shard under ZeRO), so that data parallelism can reduce first.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSlot } from "../optim/mod.ts";
import { allReduceT } from "../optim/mod.ts";
import { type TensorParallel, tpRank } from "./mappings.ts";

/** A piece of a parameter's gradient that this rank holds: the parameter and a view of it. */
export interface GradPiece {
  /** The parameter (what its layer declared). */
  readonly slot: ParamSlot;
  /** The piece of its gradient. */
  readonly grad: Tensor;
}

/** The groups the gradient work runs over. */
export interface GradGroups {
  /** The tensor-parallel group (with the sequence-parallel flag). */
  readonly tp: TensorParallel;
  /** The group of the stages holding tied copies (`null` on a middle stage). */
  readonly embedding: Communicator | null;
  /** Timeout of each collective in milliseconds. */
  readonly timeoutMs?: number;
}

/**
 * Sum the partial gradients over the tensor group and the tied copies over their group. Every
 * rank of both groups calls it with pieces that cover the same elements of each parameter.
 *
 * @param be the backend
 * @param g the groups
 * @param pieces the gradient pieces this rank holds
 * @returns once summed
 */
export async function syncModelParallelGrads(
  be: Backend,
  g: GradGroups,
  pieces: readonly GradPiece[],
): Promise<void> {
  for (const { slot, grad } of pieces) {
    const sum = slot.partial ? g.tp.comm : slot.tie ? g.embedding : null;
    if (sum === null || sum === undefined || sum.size === 1) continue;
    await allReduceT(be, { comm: sum, timeoutMs: g.timeoutMs }, grad);
  }
}

/**
 * The sum of squares of the gradients this rank counts toward the global norm (see the module
 * doc), into `out[0]` on the backend; sum it over the ranks that together hold each counted
 * element once.
 *
 * @param be the backend
 * @param tp the tensor-parallel group
 * @param pieces the gradient pieces this rank owns
 * @param out a one-element tensor, set to the sum
 */
export function countedSumSquares(
  be: Backend,
  tp: TensorParallel,
  pieces: readonly GradPiece[],
  out: Tensor,
): void {
  const lead = tpRank(tp) === 0;
  be.fill(out, 0);
  for (const { slot, grad } of pieces) {
    if (slot.mirror || (slot.split === undefined && !lead)) continue;
    be.sumSquares(out, grad, grad.length, true);
  }
}
