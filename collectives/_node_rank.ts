/**
 * Rank module that `launch` (launch.ts) runs on every Worker of a node of a multi-node job: it
 * joins the TCP world with its global rank, wraps its node's shared-memory communicator and the
 * TCP one into a hierarchical communicator, and runs the user's rank module with it.
 *
 * @module
 */
import type { Communicator } from "./communicator.ts";
import { createHierarchical } from "./hierarchical.ts";
import type { RankMain } from "./launch.ts";
import { connectTcp } from "./tcp.ts";

/** What `launch` hands every Worker of a node. */
export interface NodeRankData {
  module: string;
  data: unknown;
  nnodes: number;
  nodeRank: number;
  nprocPerNode: number;
  masterAddr: string;
  masterPort: number;
  timeoutMs?: number;
  /** The job secret; default `LOOM_SECRET` from the environment (see `connectTcp`). */
  secret?: string;
}

/**
 * Build the hierarchical communicator and run the user's `main` with it.
 *
 * @param local this node's shared-memory communicator
 * @param d where the node sits and what to run
 * @returns what the user's `main` returned
 */
export async function main(local: Communicator, d: NodeRankData): Promise<unknown> {
  const tcp = await connectTcp({
    rank: d.nodeRank * d.nprocPerNode + local.rank,
    size: d.nnodes * d.nprocPerNode,
    masterAddr: d.masterAddr,
    masterPort: d.masterPort,
    opTimeoutMs: d.timeoutMs,
    secret: d.secret,
  });
  const comm = await createHierarchical(local, tcp);
  try {
    const mod = await import(d.module);
    if (typeof mod.main !== "function") {
      throw new TypeError(
        `${d.module} exports no main function: add \`export async function main(comm, data)\``,
      );
    }
    return await (mod.main as RankMain<unknown>)(comm, d.data);
  } finally {
    await comm.close();
  }
}
