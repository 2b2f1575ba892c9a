/**
 * Point-to-point verbs between pipeline stages, named for what they do, over the pipeline
 * group's `send`/`recv`. Stage `s` of `pp` holds chunks `0..v-1`; chunk `c` is virtual stage
 * `c * pp + s`. Activations go to the next virtual stage (stage `s + 1`, wrapping to chunk
 * `c + 1` of stage 0), gradients to the previous one. Each transfer's tag names its direction,
 * micro-batch and sending virtual stage, so that several can be in flight between two stages.
 *
 * @module
 */

import type { Communicator, DType } from "../collectives/mod.ts";
import type { Direction, P2POp } from "./schedules.ts";

/**
 * Activations or gradients at a stage boundary: float32, or the raw bits of float16 /
 * bfloat16 values (the pipeline's `dtype` says which), which travel in 16 bits.
 */
export type WireBuffer = Float32Array | Uint16Array;

/** A stage's view of its pipeline group. */
export interface PipeContext {
  /** What a Uint16Array buffer holds (`"float16"` or `"bfloat16"`); default none. */
  readonly dtype?: DType;
  /** The pipeline group; rank = this stage. */
  readonly comm: Communicator;
  /** Model chunks per stage. */
  readonly v: number;
  /** Timeout of every transfer in milliseconds (the communicator's default when omitted). */
  readonly timeoutMs?: number;
}

/** A transfer to post: what the schedule says, plus the buffer to send from or receive into. */
export interface P2PTransfer {
  /** Send or receive. */
  readonly op: "send" | "recv";
  /** Activations or gradients. */
  readonly dir: Direction;
  /** Micro-batch. */
  readonly mb: number;
  /** This stage's chunk that produces (send) or consumes (recv) the data. */
  readonly chunk: number;
  /** The data. */
  readonly buf: WireBuffer;
}

/**
 * The tag of a transfer: direction, micro-batch and the virtual stage that sends it.
 *
 * @param ctx the pipeline context
 * @param op the transfer, seen from this stage
 * @returns a non-negative integer tag
 */
export function p2pTag(ctx: PipeContext, op: Pick<P2POp, "op" | "dir" | "mb" | "chunk">): number {
  const pp = ctx.comm.size;
  const k = op.chunk * pp + ctx.comm.rank;
  const sender = op.op === "send" ? k : op.dir === "forward" ? k - 1 : k + 1;
  return ((op.mb * pp * ctx.v + sender) * 2 + (op.dir === "backward" ? 1 : 0)) % 0x40000000;
}

function peerOf(ctx: PipeContext, t: Pick<P2PTransfer, "op" | "dir">): number {
  const { rank, size } = ctx.comm;
  const toNext = (t.op === "send") === (t.dir === "forward");
  return (rank + (toNext ? 1 : size - 1)) % size;
}

/**
 * Post every transfer at once and wait for all of them: the general form of the verbs below.
 *
 * @param ctx the pipeline context
 * @param transfers sends and receives to post together
 * @returns once every transfer completed
 */
export async function exchange(
  ctx: PipeContext,
  transfers: readonly P2PTransfer[],
): Promise<void> {
  const opts: { timeoutMs?: number; dtype?: DType } = {};
  if (ctx.timeoutMs !== undefined) opts.timeoutMs = ctx.timeoutMs;
  await Promise.all(transfers.map((t) => {
    const peer = peerOf(ctx, t);
    const tag = p2pTag(ctx, t);
    const o = t.buf instanceof Uint16Array ? { ...opts, dtype: ctx.dtype } : opts;
    return t.op === "send"
      ? ctx.comm.send(t.buf, peer, tag, o)
      : ctx.comm.recv(t.buf, peer, tag, o);
  }));
}

/**
 * Send activations of (mb, chunk) to the next virtual stage.
 *
 * @param ctx the pipeline context
 * @param buf the activations
 * @param mb micro-batch
 * @param chunk this stage's chunk that produced them
 * @returns once sent
 */
export function sendForward(
  ctx: PipeContext,
  buf: WireBuffer,
  mb: number,
  chunk = 0,
): Promise<void> {
  return exchange(ctx, [{ op: "send", dir: "forward", mb, chunk, buf }]);
}

/**
 * Receive the activations that (mb, chunk) consumes from the previous virtual stage.
 *
 * @param ctx the pipeline context
 * @param buf where to put them
 * @param mb micro-batch
 * @param chunk this stage's chunk that consumes them
 * @returns once received
 */
export function recvForward(
  ctx: PipeContext,
  buf: WireBuffer,
  mb: number,
  chunk = 0,
): Promise<void> {
  return exchange(ctx, [{ op: "recv", dir: "forward", mb, chunk, buf }]);
}

/**
 * Send the gradient of (mb, chunk)'s input to the previous virtual stage.
 *
 * @param ctx the pipeline context
 * @param buf the gradient
 * @param mb micro-batch
 * @param chunk this stage's chunk that produced it
 * @returns once sent
 */
export function sendBackward(
  ctx: PipeContext,
  buf: WireBuffer,
  mb: number,
  chunk = 0,
): Promise<void> {
  return exchange(ctx, [{ op: "send", dir: "backward", mb, chunk, buf }]);
}

/**
 * Receive the gradient of (mb, chunk)'s output from the next virtual stage.
 *
 * @param ctx the pipeline context
 * @param buf where to put it
 * @param mb micro-batch
 * @param chunk this stage's chunk that consumes it
 * @returns once received
 */
export function recvBackward(
  ctx: PipeContext,
  buf: WireBuffer,
  mb: number,
  chunk = 0,
): Promise<void> {
  return exchange(ctx, [{ op: "recv", dir: "backward", mb, chunk, buf }]);
}

/**
 * Send activations forward and receive a gradient from the next stage, both posted at once
 * (1F1B's steady state after a forward).
 *
 * @param ctx the pipeline context
 * @param out activations of (outMb, outChunk) to send
 * @param outMb their micro-batch
 * @param grad buffer for the gradient of (gradMb, gradChunk)
 * @param gradMb its micro-batch
 * @param outChunk chunk of the activations; default 0
 * @param gradChunk chunk of the gradient; default 0
 * @returns once both completed
 */
export function sendForwardRecvBackward(
  ctx: PipeContext,
  out: WireBuffer,
  outMb: number,
  grad: WireBuffer,
  gradMb: number,
  outChunk = 0,
  gradChunk = 0,
): Promise<void> {
  return exchange(ctx, [
    { op: "send", dir: "forward", mb: outMb, chunk: outChunk, buf: out },
    { op: "recv", dir: "backward", mb: gradMb, chunk: gradChunk, buf: grad },
  ]);
}

/**
 * Send a gradient backward and receive activations from the previous stage, both posted at
 * once (1F1B's steady state after a backward).
 *
 * @param ctx the pipeline context
 * @param grad gradient of (gradMb, gradChunk)'s input to send
 * @param gradMb its micro-batch
 * @param input buffer for the activations (inMb, inChunk) consumes
 * @param inMb their micro-batch
 * @param gradChunk chunk of the gradient; default 0
 * @param inChunk chunk of the activations; default 0
 * @returns once both completed
 */
export function sendBackwardRecvForward(
  ctx: PipeContext,
  grad: WireBuffer,
  gradMb: number,
  input: WireBuffer,
  inMb: number,
  gradChunk = 0,
  inChunk = 0,
): Promise<void> {
  return exchange(ctx, [
    { op: "send", dir: "backward", mb: gradMb, chunk: gradChunk, buf: grad },
    { op: "recv", dir: "forward", mb: inMb, chunk: inChunk, buf: input },
  ]);
}
