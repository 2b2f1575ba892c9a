/**
 * Exchanges in log2(n) rounds, for small messages: recursive doubling (all-reduce on a
 * power-of-two group: in round k each rank swaps its whole buffer with rank `r ^ 2^k` and both
 * fold) and the dissemination barrier (in round k each rank tells rank `r + 2^k` and hears from
 * rank `r - 2^k`, for any group size). Written against {@linkcode PeerExchange}.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { reduceInto, reduceTo } from "./reduce.ts";
import { mod } from "./algorithms.ts";
import { bytesOf, type PeerExchange, viewLike } from "./_exchange.ts";

/** All-reduce of a small buffer on a power-of-two group: log2(n) pairwise exchanges. */
export async function recursiveDoubling<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
): Promise<void> {
  for (let k = 1, step = 0; k < x.size; k <<= 1, step++) {
    const partner = x.rank ^ k;
    x.send(ctx, partner, step, bytesOf(buf)); // copied: small
    const payload = await x.take(ctx, partner, x.post(ctx, partner, step));
    const other = viewLike(buf, payload);
    // Both partners compute lower-rank op higher-rank, so they stay bit-identical.
    if (x.rank < partner) reduceInto(buf, other, op, dtype);
    else reduceTo(buf, other, buf, op, dtype);
    x.release(payload);
  }
}

/** Barrier: ceil(log2 n) rounds of empty chunks. */
export async function disseminationBarrier<C, P>(x: PeerExchange<C, P>, ctx: C): Promise<void> {
  const n = x.size, r = x.rank, empty = new Uint8Array(0);
  for (let k = 1, round = 0; k < n; k <<= 1, round++) {
    x.send(ctx, mod(r + k, n), round, empty);
    await x.take(ctx, mod(r - k, n), x.post(ctx, mod(r - k, n), round));
  }
}
