/**
 * The rank module of a run over several ranks: `runTraining` starts one Worker per rank on this
 * module, and each runs the same job on its share of the model. Rank 0 logs, evaluates into
 * the log and writes the run directory.
 *
 * @module
 */
import type { Communicator } from "../collectives/communicator.ts";
import { type RunOptions, runTraining, type TrainSummary } from "./run.ts";

export type * from "../collectives/communicator.ts";
export type { RunOptions, TrainSummary };

/**
 * Run this rank's part of the training job.
 *
 * @param world the communicator of every rank
 * @param run the run, as the launching process resolved it
 * @returns the run's summary on rank 0, null on the other ranks
 */
export async function main(world: Communicator, run: RunOptions): Promise<TrainSummary | null> {
  return await runTraining({ ...run, print: (run.print ?? true) && world.rank === 0 }, world);
}
