/**
 * The direct exchange: one round in which every rank sends its part straight to the ranks that
 * need it, for small messages (a few round trips cost more than sending some bytes twice) and
 * all-to-all. Reductions fold the parts in rank order, 0, 1, ..., n-1, so every rank ends
 * bit-identical. Written against {@linkcode PeerExchange}.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { reduceInto, reduceTo } from "./reduce.ts";
import { mod, type Span } from "./algorithms.ts";
import {
  awaitAll,
  bytesOf,
  type PeerExchange,
  postSpan,
  sendSpan,
  sub,
  viewLike,
} from "./_exchange.ts";

/**
 * `out = parts[0] op parts[1] op ... op parts[n-1]`, folded in that order (at least two parts).
 * In place when `out` is `parts[0]` or `parts[1]` (an operand of the first step, element by
 * element), else through a copy, so `out` may also be any later part.
 */
export function foldInRankOrder(
  parts: CollectiveBuffer[],
  out: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
): void {
  const acc = out === parts[0] || out === parts[1] ? out : parts[0]!.slice();
  reduceTo(acc, parts[0]!, parts[1]!, op, dtype);
  for (let j = 2; j < parts.length; j++) reduceInto(acc, parts[j]!, op, dtype);
  if (acc !== out) out.set(acc as Float32Array);
}

/** Post a receive of one chunk from every other rank. */
function postEach<C, P>(x: PeerExchange<C, P>, ctx: C): Map<number, P> {
  const posted = new Map<number, P>();
  for (let j = 0; j < x.size; j++) if (j !== x.rank) posted.set(j, x.post(ctx, j, 0));
  return posted;
}

/** All-reduce: everyone sends its buffer to everyone; every rank folds in rank order. */
export async function directAllReduce<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
): Promise<void> {
  const n = x.size;
  for (let j = 0; j < n; j++) if (j !== x.rank) x.send(ctx, j, 0, bytesOf(buf));
  const posted = postEach(x, ctx);
  const parts: CollectiveBuffer[] = [];
  const payloads: Uint8Array[] = [];
  for (let j = 0; j < n; j++) {
    if (j === x.rank) parts.push(buf);
    else {
      const payload = await x.take(ctx, j, posted.get(j)!);
      payloads.push(payload);
      parts.push(viewLike(buf, payload));
    }
  }
  foldInRankOrder(parts, buf, op, dtype);
  for (const p of payloads) x.release(p);
}

/** Reduce to `root`: everyone sends its buffer to the root, which folds in rank order. */
export async function directReduce<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  root: number,
  op: ReduceOp,
  dtype: DType,
): Promise<void> {
  const n = x.size, r = x.rank;
  if (r !== root) {
    sendSpan(x, ctx, root, buf, { offset: 0, length: buf.length });
    return;
  }
  const posted = postEach(x, ctx);
  const parts: CollectiveBuffer[] = [];
  for (let j = 0; j < n; j++) {
    parts.push(j === r ? buf : viewLike(buf, await x.take(ctx, j, posted.get(j)!)));
  }
  foldInRankOrder(parts, buf, op, dtype);
}

/**
 * Reduce-scatter: every rank sends segment `j` of its input to rank `j`, and folds the
 * segments it receives, with its own, in rank order into `output`.
 */
export async function directReduceScatter<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  input: CollectiveBuffer,
  output: CollectiveBuffer,
  segs: Span[],
  op: ReduceOp,
  dtype: DType,
): Promise<void> {
  const n = x.size, r = x.rank;
  for (let j = 0; j < n; j++) if (j !== r) sendSpan(x, ctx, j, input, segs[j]!);
  const posted = postEach(x, ctx);
  const parts: CollectiveBuffer[] = [];
  for (let j = 0; j < n; j++) {
    parts.push(
      j === r ? sub(input, segs[r]!) : viewLike(input, await x.take(ctx, j, posted.get(j)!)),
    );
  }
  foldInRankOrder(parts, output, op, dtype);
}

/** All-gather: every rank sends its segment (already in place in `output`) to every other. */
export async function directAllGather<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  output: CollectiveBuffer,
  segs: Span[],
): Promise<void> {
  const n = x.size, r = x.rank;
  for (let j = 0; j < n; j++) if (j !== r) sendSpan(x, ctx, j, output, segs[r]!);
  const posted: [number, P[]][] = [];
  for (let j = 0; j < n; j++) {
    if (j !== r) posted.push([j, postSpan(x, ctx, j, output, segs[j]!)]);
  }
  for (const [j, ps] of posted) await awaitAll(x, ctx, j, ps);
}

/** Broadcast: the root sends its buffer to every other rank. */
export async function directBroadcast<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  root: number,
): Promise<void> {
  const all = { offset: 0, length: buf.length };
  if (x.rank === root) {
    for (let j = 0; j < x.size; j++) if (j !== root) sendSpan(x, ctx, j, buf, all);
  } else await awaitAll(x, ctx, root, postSpan(x, ctx, root, buf, all));
}

/**
 * All-to-all: segment `j` of `input` goes to rank `j` (to rank r+1 first, then r+2, ...), and
 * segment `i` of `output` comes from rank `i`.
 */
export async function directAllToAll<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  input: CollectiveBuffer,
  output: CollectiveBuffer,
): Promise<void> {
  const n = x.size, r = x.rank, m = input.length / n;
  const seg = (i: number) => ({ offset: i * m, length: m });
  const posted: [number, P[]][] = [];
  for (let j = 0; j < n; j++) {
    if (j !== r) posted.push([j, postSpan(x, ctx, j, output, seg(j))]);
  }
  for (let k = 1; k < n; k++) {
    const j = mod(r + k, n);
    sendSpan(x, ctx, j, input, seg(j));
  }
  output.set(sub(input, seg(r)) as Float32Array, r * m);
  for (const [j, ps] of posted) await awaitAll(x, ctx, j, ps);
}
