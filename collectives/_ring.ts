/**
 * The ring, for large messages: every rank sends to its right neighbour and receives from its
 * left one, in chunks, so that every link is busy and each byte crosses `2 (n-1)/n` links in an
 * all-reduce. A reduce-scatter leaves rank r owning segment r fully reduced (folded in one fixed
 * order, so every rank ends bit-identical); an all-gather passes the segments on. Each chunk is
 * forwarded as soon as it has been reduced, while the next is still on the wire. Also here: the
 * reduce built on the ring, and the pipelined chain broadcast (the ring without its last link).
 * Written against {@linkcode PeerExchange}; the step arithmetic is {@link ./algorithms.ts}'s.
 *
 * With the work buffer in the process arena ({@link ./arena.ts}), chunks arrive in arena
 * scratch and fold in WebAssembly SIMD.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { reduceInto } from "./reduce.ts";
import { currentArena, type SharedArena } from "./arena.ts";
import { type ArenaFold, arenaFold } from "./_shm_fold.ts";
import {
  chunks,
  mod,
  ringAllGatherStep,
  ringReduceScatterStep,
  type Span,
  splitEven,
} from "./algorithms.ts";
import {
  atLeastOne,
  awaitAll,
  bytesOf,
  chunkElements,
  type PeerExchange,
  postSpan,
  sendSpan,
  sub,
  viewLike,
} from "./_exchange.ts";

/** Tags of the chunks a ring reduce sends to its root (above every ring step's tags). */
const GATHER_TAG = 1 << 30;

/** Tag of chunk `chunk` of ring step `step` (reduce-scatter steps first, then all-gather's). */
function stepTag(step: number, chunk: number): number {
  return (step << 20) | (chunk & 0xfffff);
}

/**
 * Arena scratch for a ring's incoming chunks, kept by a communicator between ops: its cached
 * block, or (while an overlapping op holds it) a block of the op's own.
 */
export class RingScratch {
  #block: Uint8Array | undefined;
  #busy = false;

  /** At least `bytes` of scratch in `arena`. */
  take(arena: SharedArena, bytes: number): Uint8Array {
    if (this.#busy) return arena.alloc(Uint8Array, bytes);
    this.#busy = true;
    const s = this.#block;
    if (s !== undefined && s.length >= bytes && arena.owns(s)) return s;
    if (s !== undefined && arena.owns(s)) arena.free(s);
    this.#block = arena.alloc(Uint8Array, Math.max(bytes, 1 << 20));
    return this.#block;
  }

  /** Give back what {@linkcode RingScratch.take} returned. */
  give(arena: SharedArena, s: Uint8Array): void {
    if (s === this.#block) this.#busy = false;
    else arena.free(s);
  }
}

/** All-reduce: ring reduce-scatter of `buf`'s even segments, then ring all-gather. */
export function ringAllReduce<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
  scratch: RingScratch,
): Promise<void> {
  return ring(x, ctx, buf, splitEven(buf.length, x.size), op, dtype, true, scratch);
}

/** Reduce-scatter: rank r's `output` gets segment r (of `output.length`) of the reduction. */
export async function ringReduceScatter<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  input: CollectiveBuffer,
  output: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
  scratch: RingScratch,
): Promise<void> {
  const m = output.length;
  const segs = Array.from({ length: x.size }, (_, i) => ({ offset: i * m, length: m }));
  const work = input.slice();
  await ring(x, ctx, work, segs, op, dtype, false, scratch);
  output.set(sub(work, segs[x.rank]!) as Float32Array);
}

/** Reduce to `root`: ring reduce-scatter on a copy, then every rank sends its segment to it. */
export async function ringReduce<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  root: number,
  op: ReduceOp,
  dtype: DType,
  scratch: RingScratch,
): Promise<void> {
  const n = x.size, r = x.rank;
  const segs = splitEven(buf.length, n);
  const work = buf.slice();
  await ring(x, ctx, work, segs, op, dtype, false, scratch);
  if (r !== root) {
    sendSpan(x, ctx, root, work, segs[r]!, GATHER_TAG);
    return;
  }
  const posted: [number, P[]][] = [];
  for (let j = 0; j < n; j++) {
    if (j !== r) posted.push([j, postSpan(x, ctx, j, buf, segs[j]!, GATHER_TAG)]);
  }
  buf.set(sub(work, segs[r]!) as Float32Array, segs[r]!.offset);
  for (const [j, ps] of posted) await awaitAll(x, ctx, j, ps);
}

/**
 * Ring reduce-scatter over `segs` of `work` (rank r ends owning segment r fully reduced),
 * optionally followed by the ring all-gather of the reduced segments back into `work`.
 */
async function ring<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  work: CollectiveBuffer,
  segs: Span[],
  op: ReduceOp,
  dtype: DType,
  allGather: boolean,
  cache: RingScratch,
): Promise<void> {
  const n = x.size, r = x.rank;
  const ce = chunkElements(x, work);
  const segChunks = segs.map((s) => chunks(s, ce));
  // With `work` in the process arena, chunks arrive in arena scratch and fold in SIMD.
  const arena = currentArena();
  const fold = arenaFold(arena, dtype, op, work);
  let scratch: Uint8Array | undefined;
  if (fold !== undefined) {
    let need = 0;
    for (let s = 0; s < n - 1; s++) {
      for (const c of segChunks[ringReduceScatterStep(r, n, s).recv]!) {
        need += c.length * work.BYTES_PER_ELEMENT;
      }
    }
    scratch = cache.take(arena!, need);
  }
  try {
    await ringSteps(x, ctx, work, segChunks, op, dtype, allGather, fold, scratch);
  } finally {
    if (scratch !== undefined) cache.give(arena!, scratch);
  }
}

async function ringSteps<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  work: CollectiveBuffer,
  segChunks: Span[][],
  op: ReduceOp,
  dtype: DType,
  allGather: boolean,
  fold: ArenaFold | undefined,
  scratch: Uint8Array | undefined,
): Promise<void> {
  const n = x.size, r = x.rank;
  const right = mod(r + 1, n), left = mod(r - 1, n);
  const rs: P[] = [];
  const into: Uint8Array[] = [];
  let at = 0;
  for (let s = 0; s < n - 1; s++) {
    const cs = segChunks[ringReduceScatterStep(r, n, s).recv]!;
    cs.forEach((c, ci) => {
      let dest: Uint8Array | undefined;
      if (scratch !== undefined) {
        const len = c.length * work.BYTES_PER_ELEMENT;
        dest = scratch.subarray(at, at += len);
        into.push(dest);
      }
      rs.push(x.post(ctx, left, stepTag(s, ci), dest));
    });
  }
  const ag: P[] = [];
  if (allGather) {
    for (let s = 0; s < n - 1; s++) {
      const cs = segChunks[ringAllGatherStep(r, n, s).recv]!;
      cs.forEach((c, ci) => ag.push(x.post(ctx, left, stepTag(n - 1 + s, ci), bytesOf(work, c))));
    }
  }
  segChunks[ringReduceScatterStep(r, n, 0).send]!.forEach((c, ci) =>
    x.send(ctx, right, stepTag(0, ci), bytesOf(work, c))
  );
  let k = 0;
  for (let s = 0; s < n - 1; s++) {
    const cs = segChunks[ringReduceScatterStep(r, n, s).recv]!;
    for (let ci = 0; ci < cs.length; ci++) {
      const c = cs[ci]!;
      const w = sub(work, c);
      const payload = await x.take(ctx, left, rs[k]!);
      if (fold !== undefined) fold.to(w, w, viewLike(work, into[k]!), op, dtype);
      else {
        reduceInto(w, viewLike(work, payload), op, dtype);
        x.release(payload);
      }
      k++;
      if (s < n - 2) x.send(ctx, right, stepTag(s + 1, ci), bytesOf(work, c));
      else if (allGather) x.send(ctx, right, stepTag(n - 1, ci), bytesOf(work, c));
    }
  }
  if (!allGather) return;
  await ringGatherRest(x, ctx, work, segChunks, ag, right, left);
}

/** The receive side of a ring all-gather whose step-0 sends are already queued. */
async function ringGatherRest<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  work: CollectiveBuffer,
  segChunks: Span[][],
  posted: P[],
  right: number,
  left: number,
): Promise<void> {
  const n = x.size, r = x.rank;
  let k = 0;
  for (let s = 0; s < n - 1; s++) {
    const cs = segChunks[ringAllGatherStep(r, n, s).recv]!;
    for (let ci = 0; ci < cs.length; ci++) {
      await x.take(ctx, left, posted[k++]!);
      if (s < n - 2) x.send(ctx, right, stepTag(n + s, ci), bytesOf(work, cs[ci]!));
    }
  }
}

/** All-gather of `out`'s segments; segment `rank` is already in place. */
export async function ringAllGather<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  out: CollectiveBuffer,
  segs: Span[],
): Promise<void> {
  const n = x.size, r = x.rank;
  const right = mod(r + 1, n), left = mod(r - 1, n);
  const ce = chunkElements(x, out);
  const segChunks = segs.map((s) => chunks(s, ce));
  const ag: P[] = [];
  for (let s = 0; s < n - 1; s++) {
    segChunks[ringAllGatherStep(r, n, s).recv]!.forEach((c, ci) =>
      ag.push(x.post(ctx, left, stepTag(n - 1 + s, ci), bytesOf(out, c)))
    );
  }
  segChunks[r]!.forEach((c, ci) => x.send(ctx, right, stepTag(n - 1, ci), bytesOf(out, c)));
  await ringGatherRest(x, ctx, out, segChunks, ag, right, left);
}

/**
 * Broadcast along the chain root -> root+1 -> ...: each chunk is forwarded as soon as it
 * lands.
 */
export async function chainBroadcast<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  buf: CollectiveBuffer,
  root: number,
): Promise<void> {
  const n = x.size, r = x.rank, all = { offset: 0, length: buf.length };
  const pos = mod(r - root, n), next = mod(r + 1, n), prev = mod(r - 1, n);
  if (pos === 0) {
    sendSpan(x, ctx, next, buf, all);
    return;
  }
  const cs = atLeastOne(all, chunkElements(x, buf));
  const ps = postSpan(x, ctx, prev, buf, all);
  for (let ci = 0; ci < cs.length; ci++) {
    await x.take(ctx, prev, ps[ci]!);
    if (pos < n - 1) x.send(ctx, next, ci, bytesOf(buf, cs[ci]!));
  }
}
