// Rank side of the p2p verb test: two stages trade activations and gradients with each verb.

import type { Communicator } from "../../collectives/mod.ts";
import {
  type PipeContext,
  recvBackward,
  recvForward,
  sendBackward,
  sendBackwardRecvForward,
  sendForward,
  sendForwardRecvBackward,
} from "../../parallel/mod.ts";

const fill = (x: number) => new Float32Array(4).fill(x);

export async function main(comm: Communicator): Promise<number[]> {
  const ctx: PipeContext = { comm, v: 1, timeoutMs: 10_000 };
  const got: number[] = [];
  const buf = new Float32Array(4);
  if (comm.rank === 0) {
    await sendForward(ctx, fill(10), 0); // activations of micro-batch 0
    await sendForwardRecvBackward(ctx, fill(11), 1, buf, 0); // send mb 1, get dX of mb 0
    got.push(buf[0]!);
    await recvBackward(ctx, buf, 1);
    got.push(buf[0]!);
  } else {
    await recvForward(ctx, buf, 0);
    got.push(buf[0]!);
    const next = new Float32Array(4);
    await sendBackwardRecvForward(ctx, fill(-buf[0]!), 0, next, 1); // dX of mb 0, get mb 1
    got.push(next[0]!);
    await sendBackward(ctx, fill(-next[0]!), 1);
  }
  return got;
}
