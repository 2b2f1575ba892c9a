/**
 * Rank side of `bench/zero.ts`: one data-parallel rank of a GPT trained on random tokens with
 * ZeRO at a given stage, precision and `overlap_comm`, on the CPU backend with one BLAS thread.
 * After the warm-up steps it times each step (the ranks line up on a barrier first, outside the
 * timing) and keeps what `engine.zero.commStats()` says of it; then it reports the bytes it
 * holds.
 *
 * Two ways in:
 * - as a Worker rank: `main(comm, spec)` (for `runWorkers` / `startWorkers` over shared memory);
 * - as a process: `deno run -A bench/_zero_rank.ts '<json {rank, size, port, spec}>'` joins a
 *   TCP world on 127.0.0.1 with `connectTcp` (rank 0 is given port 0, picks a free port and
 *   prints it on a line marked {@linkcode PORT_MARK}, so no port is guessed), runs `main`, prints
 *   its result on a line marked {@linkcode RESULT_MARK} and exits. It exits on its own when its parent closes its stdin (the
 *   parent died) or after `spec.timeoutMs`.
 *
 * With `spec.solo` the rank builds a one-rank engine (dp 1, no communication) and uses the
 * world only to line up with its peers before each step: the baseline.
 *
 * @module
 */
import { type Communicator, connectTcp, soloCommunicator } from "../collectives/mod.ts";
import { replicaShare, WindowSampler } from "../data/mod.ts";
import { initialize } from "../engine/mod.ts";
import { createCpuBackend, Rng } from "../kernels/mod.ts";

/** What every rank of one measurement runs. */
export interface ZeroRankSpec {
  /** The GPT. */
  model: { vocab: number; ctx: number; dim: number; layers: number; heads: number };
  /** Sequences per rank per step (one micro-batch). */
  micro: number;
  /** Untimed steps first. */
  warmup: number;
  /** Timed steps. */
  steps: number;
  /** ZeRO stage. */
  stage: 0 | 1 | 2 | 3;
  /** Precision of compute, gradients and the wire. */
  precision: "fp32" | "bf16";
  /** `zero_optimization.overlap_comm`. */
  overlap: boolean;
  /** `zero_optimization.reduce_bucket_size` (elements). */
  bucket: number;
  /** Seed of the model and of the random tokens. */
  seed: number;
  /** A one-rank engine per rank (no communication): the baseline. */
  solo: boolean;
  /** Timeout of every collective, and (as a process) of the whole rank, in milliseconds. */
  timeoutMs: number;
}

/** What one rank measured. */
export interface ZeroRankResult {
  /** The rank. */
  rank: number;
  /** Wall time of each timed step, ms. */
  stepMs: number[];
  /** `commStats().reduceMs` of each timed step. */
  reduceMs: number[];
  /** `commStats().waitMs` of each timed step. */
  waitMs: number[];
  /** `commStats().reductions` of each timed step. */
  reductions: number[];
  /** `commStats().wireBytes` of each timed step. */
  wireBytes: number[];
  /** Bytes held: `engine.zero.memory()` and the activations (`engine.model.pool.bytes`). */
  bytes: {
    params: number;
    grads: number;
    optimizer: number;
    transient_peak: number;
    activations: number;
  };
  /** Loss of the first and of the last step (a sanity check that it trains). */
  loss: [number, number];
  /** Parameters of the model. */
  params: number;
}

/** Marks the result line a rank process prints on stdout. */
export const RESULT_MARK = "\u0001zero-bench-result ";
/** Marks the line on which rank 0's process tells the port it listens on (it picks a free one). */
export const PORT_MARK = "\u0001zero-bench-port ";

/**
 * Run one rank of a measurement.
 *
 * @param comm the world (size 2 for the data-parallel rows; any size with `spec.solo`)
 * @param spec what to run
 * @returns what this rank measured
 */
export async function main(comm: Communicator, spec: ZeroRankSpec): Promise<ZeroRankResult> {
  const dp = spec.solo ? 1 : comm.size;
  const backend = createCpuBackend({ threads: 1 });
  try {
    const engine = await initialize({
      model: spec.model,
      train_micro_batch_size_per_gpu: spec.micro,
      train_batch_size: spec.micro * dp,
      data_parallel_size: dp,
      gradient_clipping: 1,
      optimizer: { type: "AdamW", params: { lr: 1e-3 } },
      zero_optimization: {
        stage: spec.stage,
        reduce_bucket_size: spec.bucket,
        overlap_comm: spec.overlap,
      },
      ...(spec.precision === "bf16" ? { bf16: { enabled: true } } : {}),
      seed: spec.seed,
    }, {
      world: spec.solo ? soloCommunicator() : comm,
      backend,
      timeoutMs: spec.timeoutMs,
    });
    const rng = new Rng(spec.seed + 1);
    const { vocab, ctx } = spec.model;
    const stream = Int32Array.from({ length: 1 << 16 }, () => rng.int(vocab));
    // Every rank draws the same global batch (the engine hands each replica its rows).
    const src = new WindowSampler(stream, spec.micro * dp, ctx, spec.seed + 2);
    const out: ZeroRankResult = {
      rank: comm.rank,
      stepMs: [],
      reduceMs: [],
      waitMs: [],
      reductions: [],
      wireBytes: [],
      bytes: { params: 0, grads: 0, optimizer: 0, transient_peak: 0, activations: 0 },
      loss: [NaN, NaN],
      params: engine.model.numParams,
    };
    for (let i = 0; i < spec.warmup + spec.steps; i++) {
      const batch = src.next();
      await comm.barrier({ timeoutMs: spec.timeoutMs });
      const t0 = performance.now();
      const r = await engine.trainBatch(
        replicaShare([batch], engine.groups.coords.dp, engine.layout.dp),
      );
      const ms = performance.now() - t0;
      if (i === 0) out.loss[0] = r.loss;
      out.loss[1] = r.loss;
      if (i < spec.warmup) continue;
      const s = engine.zero.commStats();
      out.stepMs.push(ms);
      out.reduceMs.push(s.reduceMs);
      out.waitMs.push(s.waitMs);
      out.reductions.push(s.reductions);
      out.wireBytes.push(s.wireBytes);
    }
    const m = engine.zero.memory();
    out.bytes = {
      params: m.params,
      grads: m.grads,
      optimizer: m.optimizer,
      transient_peak: m.transientPeak,
      activations: engine.model.pool.bytes,
    };
    return out;
  } finally {
    backend.dispose();
  }
}

/** A rank process: join the TCP world, run `main`, print the marked result line, exit. */
async function processRank(arg: string): Promise<never> {
  const { rank, size, port, spec } = JSON.parse(arg) as {
    rank: number;
    size: number;
    port: number;
    spec: ZeroRankSpec;
  };
  // Never outlive the parent: it holds our stdin open until it is done with us.
  (async () => {
    const buf = new Uint8Array(64);
    try {
      while ((await Deno.stdin.read(buf)) !== null) { /* nothing is sent */ }
    } catch { /* closed */ }
    console.error(`zero bench rank ${rank}: the parent went away, exiting`);
    Deno.exit(3);
  })();
  const watchdog = setTimeout(() => {
    console.error(`zero bench rank ${rank}: no result after ${spec.timeoutMs} ms, exiting`);
    Deno.exit(4);
  }, spec.timeoutMs);
  let code = 0;
  try {
    const comm = await connectTcp({
      rank,
      size,
      masterAddr: "127.0.0.1",
      masterPort: port,
      opTimeoutMs: spec.timeoutMs,
      timeoutMs: spec.timeoutMs,
      onListen: (p) => console.log(PORT_MARK + p),
    });
    try {
      const result = await main(comm, spec);
      console.log(RESULT_MARK + JSON.stringify({ ok: true, value: result }));
    } finally {
      await comm.close();
    }
  } catch (e) {
    console.log(RESULT_MARK + JSON.stringify({ ok: false, error: (e as Error).message }));
    code = 1;
  }
  clearTimeout(watchdog);
  Deno.exit(code);
}

if (import.meta.main) await processRank(Deno.args[0] ?? "{}");
