/**
 * Communication between tensor-parallel ranks as matched forward/backward pairs (Megatron's
 * `f` and `g`), each stating what it does in both passes. Layers are built only from these.
 *
 * | pair                      | forward                          | backward                        |
 * | ------------------------- | -------------------------------- | ------------------------------- |
 * | copyToRegion              | identity                         | all-reduce                      |
 * | reduceFromRegion          | all-reduce                       | identity                        |
 * | scatterToRegion           | keep this rank's last-dim slice  | all-gather along the last dim   |
 * | gatherFromRegion          | all-gather along the last dim    | keep this rank's slice          |
 * | scatterToSequence         | keep this rank's rows            | all-gather along the rows       |
 * | gatherFromSequence        | all-gather along the rows        | reduce-scatter along the rows   |
 * | reduceScatterToSequence   | reduce-scatter along the rows    | all-gather along the rows       |
 *
 * Rows are the flattened tokens `[B*T]`; with sequence parallelism rank `r` holds rows
 * `[r * N / tp, (r + 1) * N / tp)`. Every op that runs between the pairs there is row-wise
 * (layernorm, residual add, dropout), so splitting the flattened rows is the same as splitting
 * each sequence, and an all-gather restores the serial order.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import { allGatherT, allReduceT, reduceScatterT } from "../optim/mod.ts";

/** A tensor-parallel group: its communicator and whether sequence parallelism is on. */
export interface TensorParallel {
  /** The tensor-parallel group; `null` means one rank (everything is the identity). */
  readonly comm: Communicator | null;
  /** Split layernorm/dropout regions along the rows (sequence parallelism); default false. */
  readonly sequenceParallel?: boolean;
  /** Timeout of each collective in milliseconds. */
  readonly timeoutMs?: number;
}

/**
 * The size of a tensor-parallel group.
 *
 * @param tp the group
 * @returns the number of ranks (1 without a communicator)
 */
export function tpSize(tp: TensorParallel): number {
  return tp.comm?.size ?? 1;
}

/**
 * This rank's index in a tensor-parallel group.
 *
 * @param tp the group
 * @returns the rank (0 without a communicator)
 */
export function tpRank(tp: TensorParallel): number {
  return tp.comm?.rank ?? 0;
}

/** Identity forward, all-reduce backward: the input side of a column-parallel region. */
export const copyToRegion: {
  /** Nothing to do: every rank already holds `x`. */
  forward(be: Backend, tp: TensorParallel, x: Tensor): Promise<void>;
  /** Sum the partial input gradients of every rank, in place. */
  backward(be: Backend, tp: TensorParallel, dx: Tensor): Promise<void>;
} = {
  forward: () => Promise.resolve(),
  backward: (be, tp, dx) => allReduceT(be, tp, dx),
};

/** All-reduce forward, identity backward: the output side of a row-parallel region. */
export const reduceFromRegion: {
  /** Sum the partial outputs of every rank, in place. */
  forward(be: Backend, tp: TensorParallel, y: Tensor): Promise<void>;
  /** Nothing to do: the output gradient is already whole on every rank. */
  backward(be: Backend, tp: TensorParallel, dy: Tensor): Promise<void>;
} = {
  forward: (be, tp, y) => allReduceT(be, tp, y),
  backward: () => Promise.resolve(),
};

function sliceCols(
  be: Backend,
  out: Tensor,
  inp: Tensor,
  rows: number,
  cols: number,
  part: number,
  parts: number,
  toFull: boolean,
): void {
  const c = cols / parts;
  for (let r = 0; r < rows; r++) {
    const full = be.view(toFull ? out : inp, r * cols + part * c, c);
    const local = be.view(toFull ? inp : out, r * c, c);
    if (toFull) be.copy(full, local);
    else be.copy(local, full);
  }
}

async function gatherCols(
  be: Backend,
  tp: TensorParallel,
  out: Tensor,
  inp: Tensor,
  rows: number,
  colsLocal: number,
): Promise<void> {
  const size = tpSize(tp);
  const all = be.alloc(size * rows * colsLocal, inp.dtype);
  await allGatherT(be, tp, all, inp);
  for (let p = 0; p < size; p++) {
    sliceCols(
      be,
      out,
      be.view(all, p * rows * colsLocal, rows * colsLocal),
      rows,
      size * colsLocal,
      p,
      size,
      true,
    );
  }
}

/** Keep this rank's slice of the last dimension forward; all-gather it backward. */
export const scatterToRegion: {
  /** out[rows, cols/tp] = inp[rows, cols] columns of this rank. */
  forward(
    be: Backend,
    tp: TensorParallel,
    out: Tensor,
    inp: Tensor,
    rows: number,
    cols: number,
  ): Promise<void>;
  /** dinp[rows, cols] = the rows of every rank's dout[rows, cols/tp], side by side. */
  backward(
    be: Backend,
    tp: TensorParallel,
    dinp: Tensor,
    dout: Tensor,
    rows: number,
    cols: number,
  ): Promise<void>;
} = {
  forward(be, tp, out, inp, rows, cols) {
    sliceCols(be, out, inp, rows, cols, tpRank(tp), tpSize(tp), false);
    return Promise.resolve();
  },
  backward: (be, tp, dinp, dout, rows, cols) =>
    gatherCols(be, tp, dinp, dout, rows, cols / tpSize(tp)),
};

/** All-gather along the last dimension forward; keep this rank's slice backward. */
export const gatherFromRegion: {
  /** out[rows, cols] = every rank's inp[rows, cols/tp], side by side. */
  forward(
    be: Backend,
    tp: TensorParallel,
    out: Tensor,
    inp: Tensor,
    rows: number,
    cols: number,
  ): Promise<void>;
  /** dinp[rows, cols/tp] = this rank's columns of dout[rows, cols]. */
  backward(
    be: Backend,
    tp: TensorParallel,
    dinp: Tensor,
    dout: Tensor,
    rows: number,
    cols: number,
  ): Promise<void>;
} = {
  forward: (be, tp, out, inp, rows, cols) => gatherCols(be, tp, out, inp, rows, cols / tpSize(tp)),
  backward(be, tp, dinp, dout, rows, cols) {
    sliceCols(be, dinp, dout, rows, cols, tpRank(tp), tpSize(tp), false);
    return Promise.resolve();
  },
};

/** Keep this rank's rows forward; all-gather the rows backward. */
export const scatterToSequence: {
  /** out[n/tp, width] = this rank's rows of inp[n, width]. */
  forward(be: Backend, tp: TensorParallel, out: Tensor, inp: Tensor): Promise<void>;
  /** dinp[n, width] = every rank's dout[n/tp, width], in rank order. */
  backward(be: Backend, tp: TensorParallel, dinp: Tensor, dout: Tensor): Promise<void>;
} = {
  forward(be, tp, out, inp) {
    be.copy(out, be.view(inp, tpRank(tp) * out.length, out.length));
    return Promise.resolve();
  },
  backward: (be, tp, dinp, dout) => allGatherT(be, tp, dinp, dout),
};

/** All-gather the rows forward; reduce-scatter them backward (input of a column region). */
export const gatherFromSequence: {
  /** out[n, width] = every rank's inp[n/tp, width], in rank order. */
  forward(be: Backend, tp: TensorParallel, out: Tensor, inp: Tensor): Promise<void>;
  /** dinp[n/tp, width] = this rank's rows of the sum over ranks of dout[n, width]. */
  backward(be: Backend, tp: TensorParallel, dinp: Tensor, dout: Tensor): Promise<void>;
} = {
  forward: (be, tp, out, inp) => allGatherT(be, tp, out, inp),
  backward: (be, tp, dinp, dout) => reduceScatterT(be, tp, dinp, dout),
};

/** Reduce-scatter the rows forward; all-gather them backward (output of a row region). */
export const reduceScatterToSequence: {
  /** out[n/tp, width] = this rank's rows of the sum over ranks of inp[n, width]. */
  forward(be: Backend, tp: TensorParallel, out: Tensor, inp: Tensor): Promise<void>;
  /** dinp[n, width] = every rank's dout[n/tp, width], in rank order. */
  backward(be: Backend, tp: TensorParallel, dinp: Tensor, dout: Tensor): Promise<void>;
} = {
  forward: (be, tp, out, inp) => reduceScatterT(be, tp, out, inp),
  backward: (be, tp, dinp, dout) => allGatherT(be, tp, dinp, dout),
};
