/**
 * The rank module of a parallel `train.ts` run: `runWorkers` starts one Worker per rank on
 * this module, and each runs the same training job as a one-rank run, on its share of the
 * model (see `ParallelEngine`). Rank 0 logs, evaluates and writes the run directory.
 *
 * @module
 */
import type { Communicator } from "../collectives/communicator.ts";
import { main as train, type TrainSummary } from "../train.ts";

export type * from "../collectives/communicator.ts";
export type { TrainSummary };

/** What the launcher hands every rank. */
export interface TrainRankData {
  /** The command line of the run. */
  argv: string[];
  /** Whether rank 0 prints (progress, evaluations, summary). */
  print: boolean;
}

/**
 * Run this rank's part of the training job.
 *
 * @param world the communicator of every rank
 * @param data the command line
 * @returns the run's summary on rank 0, null on the other ranks
 */
export async function main(world: Communicator, data: TrainRankData): Promise<TrainSummary | null> {
  const summary = await train(data.argv, { print: data.print && world.rank === 0, world });
  return world.rank === 0 ? summary : null;
}
