/**
 * The pipeline executor: runs one stage's step list (from `schedules.ts`) over that stage's
 * model chunks, moving activations and gradients with the verbs of `p2p.ts`. Activations sent
 * to the next stage are dropped as soon as the send completes; each chunk keeps only what its
 * own backward needs.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";
import type { DType } from "../collectives/mod.ts";
import { exchange, type P2PTransfer, type PipeContext, type WireBuffer } from "./p2p.ts";
import type { PipelineSchedule } from "./schedules.ts";

/** A Promise or a plain value. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * One model chunk on one stage (a slice of the model's layer list). It saves, per micro-batch,
 * what its backward needs, and forgets it in backward.
 */
export interface PipelineChunk {
  /**
   * Forward of micro-batch `mb`.
   *
   * @param mb micro-batch
   * @param input activations from the previous virtual stage; `null` on the first (which reads
   *   the tokens itself)
   * @returns activations for the next virtual stage; `null` on the last (which computes the loss)
   */
  forward(mb: number, input: WireBuffer | null): MaybePromise<WireBuffer | null>;
  /**
   * Backward of micro-batch `mb`: adds into the chunk's parameter gradients.
   *
   * @param mb micro-batch
   * @param dOutput gradient of this chunk's output; `null` on the last virtual stage
   * @returns gradient of this chunk's input; `null` on the first virtual stage
   */
  backward(mb: number, dOutput: WireBuffer | null): MaybePromise<WireBuffer | null>;
}

/** Options of {@linkcode runPipeline}. */
export interface RunPipelineOptions {
  /** The schedule every stage runs. */
  schedule: PipelineSchedule;
  /** The pipeline group (rank = stage); may be `null` when `schedule.pp` is 1. */
  comm: Communicator | null;
  /** This stage's `schedule.v` chunks, in chunk order. */
  chunks: readonly PipelineChunk[];
  /** Elements of one micro-batch's activations at a stage boundary (e.g. B * T * C). */
  activationSize: number;
  /**
   * What travels between stages: float32 (default), or float16 / bfloat16 in 16 bits (the
   * chunks then exchange Uint16Arrays of their bits).
   */
  wire?: DType;
  /** Timeout of each transfer in milliseconds. */
  timeoutMs?: number;
  /** Record the start and end of every forward and backward in `stats.trace`. */
  trace?: boolean;
  /**
   * Post each exchange's transfers and go on: a receive is awaited just before the compute that
   * consumes it, sends at the end of the step list. It waits for less than the default (every
   * exchange completes before the next step, the blocking model the schedules are proven
   * against), so it cannot deadlock where that does not; but a message longer than what the
   * transport sends without its receiver (shared memory: 128 KiB) then streams only while both
   * sides are between computes, which stalls the pipeline. Default false.
   */
  overlap?: boolean;
}

/** One forward or backward as it ran, in milliseconds since the start of the step list. */
export interface TraceEntry {
  /** Forward or backward. */
  readonly kind: "forward" | "backward";
  /** Micro-batch. */
  readonly mb: number;
  /** Chunk on this stage. */
  readonly chunk: number;
  /** Start time. */
  readonly start: number;
  /** End time. */
  readonly end: number;
}

/** Timings of one run of {@linkcode runPipeline}, in milliseconds. */
export interface PipelineStats {
  /** Wall time of the whole step list. */
  readonly wallMs: number;
  /** Time spent inside chunks' forward and backward. */
  readonly computeMs: number;
  /** The forward passes' part of `computeMs` (the rest is backward). */
  readonly forwardMs: number;
  /** wallMs - computeMs: waiting for peers and moving data. */
  readonly idleMs: number;
  /** Most activation buffers received or produced and not yet released, at any time. */
  readonly peakBuffers: number;
  /** Every compute step with its times, when `trace` was set. */
  readonly trace?: readonly TraceEntry[];
}

/**
 * Run this stage's steps of `schedule`. Every stage of the pipeline group must call it with the
 * same schedule.
 *
 * @param opts schedule, pipeline group, chunks and activation size
 * @returns timings of this stage
 */
export async function runPipeline(opts: RunPipelineOptions): Promise<PipelineStats> {
  const { schedule, comm, chunks, activationSize } = opts;
  const stage = comm?.rank ?? 0;
  if (schedule.pp > 1 && (comm === null || comm.size !== schedule.pp)) {
    throw new RangeError(
      `The schedule has pp=${schedule.pp} stages but the pipeline group has ` +
        `${comm?.size ?? "no"} ranks: pass the pp communicator of the grid`,
    );
  }
  if (chunks.length !== schedule.v) {
    throw new RangeError(
      `The schedule runs v=${schedule.v} chunks per stage but ${chunks.length} were given`,
    );
  }
  if (!Number.isInteger(activationSize) || activationSize < 1) {
    throw new RangeError(`activationSize must be a positive integer, got ${activationSize}`);
  }
  const half = opts.wire === "float16" || opts.wire === "bfloat16";
  const ctx: PipeContext | null = comm === null || schedule.pp === 1
    ? null
    : { comm, v: schedule.v, timeoutMs: opts.timeoutMs, ...(half ? { dtype: opts.wire } : {}) };
  const inputs = new Map<string, WireBuffer>(); // received activations, by mb:chunk
  const grads = new Map<string, WireBuffer>(); // received output gradients
  const outputs = new Map<string, WireBuffer>(); // activations waiting to be sent
  const dInputs = new Map<string, WireBuffer>(); // input gradients waiting to be sent
  const id = (mb: number, chunk: number) => `${mb}:${chunk}`;
  let peak = 0;
  const track = () => {
    peak = Math.max(peak, inputs.size + grads.size + outputs.size + dInputs.size);
  };
  const overlap = opts.overlap ?? false;
  const sends: Promise<void>[] = [];
  const recvF = new Map<string, Promise<void>>(); // receives in flight, awaited before use
  const recvB = new Map<string, Promise<void>>();
  let computeMs = 0, forwardMs = 0;
  const trace: TraceEntry[] | undefined = opts.trace ? [] : undefined;
  const t0 = performance.now();
  for (const step of schedule.stages[stage]!) {
    if (step.kind === "p2p") {
      const transfers: P2PTransfer[] = step.ops.map((o) => {
        const k = id(o.mb, o.chunk);
        let buf: WireBuffer | undefined;
        if (o.op === "send") {
          buf = (o.dir === "forward" ? outputs : dInputs).get(k);
          if (!buf) throw new Error(`Stage ${stage} has nothing to send for ${o.dir} ${k}`);
        } else {
          buf = half ? new Uint16Array(activationSize) : new Float32Array(activationSize);
          (o.dir === "forward" ? inputs : grads).set(k, buf);
        }
        return { op: o.op, dir: o.dir, mb: o.mb, chunk: o.chunk, buf };
      });
      track();
      if (!overlap) {
        await exchange(ctx!, transfers);
        for (const t of transfers) {
          if (t.op === "send") (t.dir === "forward" ? outputs : dInputs).delete(id(t.mb, t.chunk));
        }
        continue;
      }
      for (const t of transfers) {
        const k = id(t.mb, t.chunk);
        const done = exchange(ctx!, [t]);
        done.catch(() => {}); // awaited below; keep an early failure from going unhandled
        if (t.op === "send") {
          const sent = done.then(() => {
            (t.dir === "forward" ? outputs : dInputs).delete(k);
          });
          sent.catch(() => {});
          sends.push(sent);
        } else (t.dir === "forward" ? recvF : recvB).set(k, done);
      }
      continue;
    }
    const k = id(step.mb, step.chunk);
    const chunk = chunks[step.chunk]!;
    const pending = (step.kind === "forward" ? recvF : recvB).get(k);
    if (pending) {
      await pending;
      (step.kind === "forward" ? recvF : recvB).delete(k);
    }
    const c0 = performance.now();
    if (step.kind === "forward") {
      const input = inputs.get(k) ?? null;
      inputs.delete(k);
      const out = await chunk.forward(step.mb, input);
      if (out !== null) {
        if (out.length !== activationSize) {
          throw new RangeError(
            `Chunk ${step.chunk} returned ${out.length} activations, expected ${activationSize}`,
          );
        }
        if (ctx !== null) outputs.set(k, out);
      }
    } else {
      const dOut = grads.get(k) ?? null;
      grads.delete(k);
      const dIn = await chunk.backward(step.mb, dOut);
      if (dIn !== null && ctx !== null) dInputs.set(k, dIn);
    }
    const c1 = performance.now();
    computeMs += c1 - c0;
    if (step.kind === "forward") forwardMs += c1 - c0;
    trace?.push({ kind: step.kind, mb: step.mb, chunk: step.chunk, start: c0 - t0, end: c1 - t0 });
    track();
  }
  await Promise.all(sends);
  const wallMs = performance.now() - t0;
  return { wallMs, computeMs, forwardMs, idleMs: wallMs - computeMs, peakBuffers: peak, trace };
}
