/**
 * The training loop of a run: build the engine on every rank (starting the ranks as Workers of
 * this process when the layout has more than one), resume from a checkpoint, train with
 * evaluation and save cadence, print progress, write `metrics.jsonl` and `summary.json`, and
 * checkpoint at the end. `train.ts` turns flags into {@linkcode RunOptions}; a library user can
 * call {@linkcode runTraining} directly.
 *
 * @module
 */
import { CollectiveError, type Communicator } from "../collectives/communicator.ts";
import { broadcastJson } from "../collectives/json.ts";
import { launch, type LaunchConfig, parseLaunch, type Transport } from "../collectives/launch.ts";
import { RankFailedError } from "../collectives/world.ts";
import {
  type Batch,
  type Dataset,
  type DatasetDescriptor,
  openDataset,
  replicaRows,
  type Score,
} from "../data/mod.ts";
import { type Backend, createCpuBackend } from "../kernels/mod.ts";
import { createWebGPUBackend, probeWebGPU } from "../kernels/webgpu/mod.ts";
import type { ScheduleName } from "../parallel/mod.ts";
import type { EngineConfig } from "./config.ts";
import { checkParallelLayout, type Engine, initialize, type RankMemory } from "./engine.ts";
import { readCheckpointConfig } from "./checkpoint.ts";
import { activationBytes } from "./estimate.ts";
import { keepRecordsUpTo, MetricsWriter } from "./metrics.ts";
import { type RanksRecord, serveReport, writeReport } from "./report.ts";
import { formatDuration, Progress } from "./progress.ts";

/** What a run is: the engine's configuration, the data, the cadence and where it goes. */
export interface RunOptions {
  /** The engine configuration (model, batch, optimizer, schedule, layout keys). */
  config: EngineConfig;
  /** The data set, as data (see `describeDataset`). */
  data: DatasetDescriptor;
  /** Total optimizer steps of the run (the schedule's length). */
  steps: number;
  /** Stop (and checkpoint) after this step; default `steps`. */
  stopAt?: number;
  /** Evaluate every N steps (0: only at the end). */
  evalEvery: number;
  /** Also checkpoint every N steps (0: only at the end). */
  saveEvery: number;
  /** Checkpoints to keep in the run directory; default 2, 0 keeps every one. */
  keep?: number;
  /** Batches drawn per step, as a one-rank run with this accumulation draws them. */
  drawAccum: number;
  /** Seed of the data order. */
  dataSeed: number;
  /** The run directory. */
  out: string;
  /** Continue the run saved in this directory. */
  resume?: string | null;
  /** Compute backend of a one-rank run (several ranks compute on the CPU). */
  backend?: "auto" | "cpu" | "webgpu";
  /** CPU matrix-product path. */
  gemm?: "auto" | "blas" | "wasm" | "ts";
  /**
   * BLAS threads of each rank's CPU backend; default (or 0): the machine's cores divided
   * between the ranks on it (see {@linkcode threadsPerRank}).
   */
  threads?: number;
  /** A pipeline schedule instead of the default. */
  schedule?: ScheduleName;
  /** Print progress and the summary (rank 0). */
  print?: boolean;
  /** Print only the summary. */
  quiet?: boolean;
  /** What to save as the run's section of config.json (a resumed run reads it back). */
  saveConfig?: Record<string, unknown>;
  /** Lines to print before training (e.g. that the vocabulary was padded). */
  notes?: readonly string[];
  /**
   * Where this process sits in a job of several processes or nodes (from `parseLaunch`);
   * default: this process runs every rank of the layout as a Worker.
   */
  launch?: LaunchConfig;
  /** What the ranks of a job of one process per rank talk over (see `launch`). */
  transport?: Transport;
  /**
   * Restart the ranks of this process from the run's last checkpoint after a rank fails, up to
   * this many times (default 0: the run fails with the lost rank's error). A job of one process
   * per rank (torchrun, srun, mpirun) is restarted by its launcher instead.
   */
  maxRestarts?: number;
  /** How the end-of-run sample of a text run is drawn (default greedy). */
  sampling?: { temperature?: number; topK?: number; seed?: number };
  /** Serve the live report on this loopback port while the run trains (rank 0; 0: any port). */
  dashboard?: number | null;
  /** Milliseconds a collective waits for a peer before it fails naming it; default 60 000. */
  timeoutMs?: number;
  /**
   * A flag on shared memory: once nonzero, every rank checkpoints at the next step boundary and
   * the run stops (what SIGINT and SIGTERM set in train.ts). The ranks agree on the step.
   */
  stop?: Int32Array;
  /**
   * Fault injection for tests: global rank `rank` fails after step `step` of the first attempt:
   * its process kills itself (SIGKILL) when it is a process of its own, else its Worker throws.
   */
  fault?: { rank: number; step: number };
  /** Which attempt this is (0, then 1, 2, ... after restarts). */
  attempt?: number;
}

/** What a finished run reports (also written as summary.json). */
export interface TrainSummary {
  /** Steps done when the run stopped. */
  steps: number;
  /** Mean training loss over the last logged steps. */
  train_loss: number;
  /** Validation loss at the end (null without validation data). */
  val_loss: number | null;
  /** Held-out exact-match score (tasks only). */
  heldout: { correct: number; total: number; accuracy: number } | null;
  /** Mean training throughput of this process. */
  tokens_per_s: number;
  /** Wall time of this process in seconds. */
  wall_time_s: number;
  /** Parameters of the model. */
  params: number;
  /** The backend's description. */
  backend: string;
  /** The data set. */
  data: string;
  /** The run directory. */
  out: string;
  /** How the run was laid out over ranks. */
  layout: {
    tp: number;
    pp: number;
    dp: number;
    virtual_stages: number;
    sequence_parallel: boolean;
    schedule: string;
    micro_batches: number;
    zero_stage: number;
    precision: string;
  };
  /** The signal that stopped the run early (after a checkpoint), or null. */
  stopped_by: string | null;
  /** The fp16 loss scale at the end and the steps skipped on overflow (null without fp16). */
  loss_scale: { scale: number; skipped_steps: number } | null;
  /**
   * What each rank held, measured from its allocations, and with activation checkpointing the
   * activation bytes rank 0 saved (against the estimate without it).
   */
  memory: { per_rank: (RankMemory & { rank: number })[]; activations_saved_bytes: number | null };
}

/**
 * BLAS threads for each rank when none are asked for: the machine's cores divided between the
 * ranks that share it, at least one, so that one rank uses every core and several do not
 * oversubscribe them.
 *
 * @param ranksHere ranks running on this machine
 * @param cores the machine's cores; default `navigator.hardwareConcurrency`
 * @returns threads per rank
 */
export function threadsPerRank(ranksHere: number, cores = navigator.hardwareConcurrency): number {
  return Math.max(1, Math.floor((cores || 1) / Math.max(1, ranksHere)));
}

async function pickBackend(o: RunOptions, ranks: number): Promise<Backend> {
  // Ranks on this machine: its node's (a job of several), else the whole layout's.
  const here = o.launch?.nprocPerNode ?? ranks;
  const threads = o.threads || threadsPerRank(here);
  const cpu = () => createCpuBackend({ gemm: o.gemm ?? "auto", threads });
  if (ranks > 1) return cpu();
  // auto: WebGPU only on a hardware adapter, probed without opening a device.
  const probe = (o.backend ?? "auto") === "auto" ? await probeWebGPU() : null;
  if (o.backend === "webgpu" || (probe !== null && !probe.software)) {
    const gpu = await createWebGPUBackend();
    if (gpu !== null) return gpu;
    if (o.backend === "webgpu") {
      throw new RangeError(
        "--backend webgpu: this runtime has no WebGPU adapter; use --backend cpu (or auto)",
      );
    }
  }
  return cpu();
}

async function evaluate(
  engine: Engine,
  ds: Dataset,
  B: number,
  limit: number,
): Promise<{ val: number | null; score: Score | null }> {
  const batches = ds.validationBatches(B, 8);
  let sum = 0;
  for (const b of batches) sum += await engine.evalBatch(b);
  const val = batches.length > 0 ? sum / batches.length : null;
  const score = ds.score
    ? await ds.score((inputs, b, t, past) => engine.logits(inputs, b, t, past), B, limit)
    : null;
  return { val, score };
}

/** The lost rank and why, from a failed job's error (null for any other error). */
function rankFailure(e: unknown): string | null {
  const lost = e instanceof RankFailedError || e instanceof CollectiveError;
  return lost ? e.message.split("\n")[0]! : null;
}

// A node's Workers are numbered from 0: name the failed one by its global rank.
function globalRank(e: unknown, config: LaunchConfig): unknown {
  if (!(e instanceof RankFailedError)) return e;
  const global = config.ranks[e.rank];
  if (global === undefined || global === e.rank) return e;
  const rest = e.message.replace(/^rank \d+ failed: /, "");
  return new RankFailedError(global, `(node ${config.nodeRank}) ${rest}`, {
    name: e.name,
    message: rest,
    reason: e.reason,
    peer: e.peer,
  });
}

async function hasCheckpoint(dir: string): Promise<boolean> {
  try {
    await readCheckpointConfig(dir);
    return true;
  } catch {
    return false;
  }
}

// Start this process's ranks (see runTraining) and restart them after a failure, up to
// o.maxRestarts times, from the run's last checkpoint.
async function launchRun(o: RunOptions, ranks: number): Promise<TrainSummary | null> {
  const config = o.launch ?? parseLaunch([`--nproc-per-node=${ranks}`], {});
  if (config.worldSize !== ranks) {
    throw new RangeError(
      `The layout needs ${ranks} ranks but the job has ${config.worldSize} ` +
        `(${config.nnodes} node(s) x ${config.nprocPerNode}): make tp x pp x dp equal the job's ` +
        `ranks (or leave --dp out to fill the job)`,
    );
  }
  const max = o.maxRestarts ?? 0;
  let resume = o.resume ?? null;
  for (let attempt = o.attempt ?? 0;; attempt++) {
    try {
      const results = await launch<TrainSummary | null>(config, {
        module: new URL("./rank.ts", import.meta.url),
        data: { ...o, resume, attempt, launch: config },
        timeoutMs: o.timeoutMs ?? 60_000,
        transport: o.transport,
      });
      return config.ranks[0] === 0 ? results[0]! : null;
    } catch (caught) {
      const e = globalRank(caught, config);
      const why = rankFailure(e);
      if (why === null || attempt >= max) throw e;
      const saved = await hasCheckpoint(o.out);
      if (saved) resume = o.out;
      console.error(
        `${why}\nrestarting (${attempt + 1} of ${max}) from ` +
          (saved ? `the last checkpoint in ${o.out}` : "the start: no checkpoint was saved yet"),
      );
    }
  }
}

// The machine's peak FLOP/s for MFU, when LOOM_PEAK_TFLOPS gives it.
function peakFlops(): number | null {
  const v = Deno.permissions.querySync({ name: "env", variable: "LOOM_PEAK_TFLOPS" }).state ===
      "granted"
    ? Deno.env.get("LOOM_PEAK_TFLOPS")
    : undefined;
  const t = v === undefined ? NaN : Number(v);
  return Number.isFinite(t) && t > 0 ? t * 1e12 : null;
}

/** What a nonzero stop flag means: the signal that set it. */
export const STOP_REASONS: Readonly<Record<number, string>> = { 1: "SIGINT", 2: "SIGTERM" };

// Whether any rank was asked to stop: every rank answers at the same step boundary.
async function stopAsked(
  stop: Int32Array,
  world: Communicator | undefined,
  flag: Int32Array,
): Promise<boolean> {
  flag[0] = Atomics.load(stop, 0);
  if (world !== undefined && world.size > 1) await world.allReduce(flag, "max");
  if (flag[0]! !== 0) Atomics.store(stop, 0, flag[0]!);
  return flag[0]! !== 0;
}

function injectFault(rank: number, step: number, ownProcess: boolean): never {
  console.error(`fault injection: rank ${rank} fails after step ${step} at ${Date.now()} ms`);
  if (ownProcess) Deno.kill(Deno.pid, "SIGKILL");
  throw new Error(`fault injection: rank ${rank} failed after step ${step}`);
}

function jobShape(l: LaunchConfig | undefined, transport: string | undefined): string {
  if (l === undefined || (l.mode === "node" && l.nnodes === 1)) return "Workers";
  if (l.mode === "node") return `${l.nnodes} nodes of ${l.nprocPerNode} Workers`;
  return `one process each, ${l.nnodes} node(s), over ${transport === "mpi" ? "MPI" : "TCP"}`;
}

// Every rank writes to rank 0's run directory (a default one is named after the clock).
async function agreeOnOut(o: RunOptions, world: Communicator): Promise<RunOptions> {
  const out = await broadcastJson(world, o.out, 0) as string;
  return out === o.out ? o : { ...o, out, saveConfig: { ...o.saveConfig, out } };
}

/**
 * Run the training job on this rank; or, without a world, start this process's ranks of the
 * job (Workers over shared memory when the layout has several ranks and `o.launch` says
 * nothing else; a process of a multi-process or multi-node job joins over TCP), each running
 * this same function, and return global rank 0's summary when it runs here.
 *
 * After a rank fails, every other rank's collectives fail naming it within `o.timeoutMs`; with
 * `o.maxRestarts` the ranks of this process then start again from the run's last checkpoint.
 *
 * @param o the run
 * @param world the world, when this call is one of the run's ranks
 * @returns the summary (null on ranks other than 0)
 */
export async function runTraining(
  o: RunOptions,
  world?: Communicator,
): Promise<TrainSummary | null> {
  const layout = checkParallelLayout(o.config, { schedule: o.schedule, seqLen: undefined });
  if (world === undefined && (layout.worldSize > 1 || (o.launch?.worldSize ?? 1) > 1)) {
    return await launchRun(o, layout.worldSize);
  }
  if (world !== undefined && world.size > 1) o = await agreeOnOut(o, world);
  const print = o.print ?? true;
  const lead = world === undefined || world.rank === 0;
  const quiet = !lead || (o.quiet ?? false);
  const say = (s: string) => {
    if (print && !quiet) console.log(s);
  };
  const ds = await openDataset(o.data);
  const backend = await pickBackend(o, layout.worldSize);
  let dashboard: { port: number; shutdown(): Promise<void> } | null = null;
  try {
    const engine = await initialize(o.config, {
      world,
      backend,
      schedule: o.schedule,
      seqLen: ds.seqLen,
      timeoutMs: o.timeoutMs,
    });
    const micro = engine.config.batchSize / o.drawAccum;
    if (!Number.isInteger(micro)) {
      throw new RangeError(
        `The batch of ${engine.config.batchSize} is not a multiple of --accum ${o.drawAccum}`,
      );
    }
    const src = ds.trainBatches(micro, o.dataSeed);
    // A distributed sampler: every rank draws the serial stream and builds only its replica's
    // rows of it.
    const rowsOf = replicaRows(micro, o.drawAccum, engine.groups.coords.dp, layout.dp);
    const out = o.out;
    let tokensBefore = 0;
    if (o.resume) {
      const extra = await engine.load(o.resume);
      src.setState(extra.data as ReturnType<typeof src.getState>);
      tokensBefore = Number(extra.tokens ?? 0);
      if (engine.step >= o.steps) {
        throw new RangeError(
          `The run in ${o.resume} already took ${engine.step} steps: raise --steps to continue`,
        );
      }
    }
    const stopAt = Math.min(o.stopAt ?? o.steps, o.steps);
    if (lead) await Deno.mkdir(out, { recursive: true });
    const metricsPath = `${out}/metrics.jsonl`;
    const ranksPath = `${out}/ranks.jsonl`;
    if (o.resume && lead) {
      // Steps logged after the checkpoint was taken are run again: drop their old lines.
      await keepRecordsUpTo(metricsPath, engine.step);
      await keepRecordsUpTo(ranksPath, engine.step);
    }
    const writer = lead ? await MetricsWriter.open(metricsPath, Boolean(o.resume)) : null;
    if (lead && o.dashboard !== undefined && o.dashboard !== null) {
      try {
        dashboard = serveReport(out, o.dashboard);
      } catch (e) {
        if (!(e instanceof Deno.errors.AddrInUse)) throw e;
        throw new RangeError(`--dashboard ${o.dashboard}: the port is in use; pick another`);
      }
      say(`live report: http://127.0.0.1:${dashboard.port}/`);
    }
    const m = engine.config.model;
    say(
      `Loom: ${ds.name}, ${engine.model.fullParams.toLocaleString("en-US")} parameters ` +
        `(dim ${m.dim}, layers ${m.layers}, heads ${m.heads}, ctx ${m.ctx}, vocab ${m.vocab})`,
    );
    say(`backend: ${backend.description}`);
    if (layout.worldSize > 1) {
      say(
        `layout: tp ${layout.tp} x pp ${layout.pp} x dp ${layout.dp} = ${layout.worldSize} ` +
          `ranks (${jobShape(o.launch, world?.transport)}), ${layout.schedule} schedule` +
          (layout.virtualStages > 1 ? ` with ${layout.virtualStages} virtual stages` : "") +
          (layout.sequenceParallel ? ", sequence parallel" : "") +
          `, ${layout.microBatches} micro-batches of ${layout.microBatchSize}`,
      );
    }
    const ec = engine.config;
    if (
      ec.zero.stage > 0 || ec.precision !== "fp32" || ec.checkpointActivations > 0 || ec.dropout > 0
    ) {
      say(
        `ZeRO stage ${ec.zero.stage}, ${ec.precision}` +
          (ec.checkpointActivations > 0
            ? `, activation checkpointing every ${ec.checkpointActivations} block(s)`
            : "") +
          (ec.dropout > 0 ? `, dropout ${ec.dropout}` : ""),
      );
    }
    for (const note of o.notes ?? []) say(note);
    if (ec.ignoredKeys.length > 0) {
      say(`config keys accepted but not acted on here: ${ec.ignoredKeys.join(", ")}`);
    }
    say(`${engine.step > 0 ? `resuming at step ${engine.step}, ` : ""}writing to ${out}/`);
    // DeepSpeed's steps_per_print when the configuration gives it; else every 50 steps.
    const every = o.config.steps_per_print !== undefined ? ec.stepsPerPrint : 50;
    const progress = new Progress(every, !print || quiet);

    let tokensRun = 0;
    const saveRun = async () => {
      await engine.save(out, { data: src.getState(), tokens: tokensBefore + tokensRun }, {
        run: o.saveConfig ?? {},
        tokenizer: ds.tokenizer.toJSON(),
      }, { keep: o.keep, vocab: ds.tokenizer.vocabSize });
    };
    const t0 = performance.now();
    const window: { t: number; tokens: number }[] = [{ t: t0, tokens: 0 }];
    const recent: number[] = [];
    const stepsStart = engine.step;
    let last: { val: number | null; score: Score | null } = { val: null, score: null };
    let stoppedBy: string | null = null;
    const stopFlag = new Int32Array(1);
    const rank = world?.rank ?? 0;
    const layoutRecord = {
      tp: layout.tp,
      pp: layout.pp,
      dp: layout.dp,
      virtual_stages: layout.virtualStages,
      sequence_parallel: layout.sequenceParallel,
      schedule: layout.schedule,
      micro_batches: layout.microBatches,
      zero_stage: ec.zero.stage,
      precision: ec.precision,
    };
    // What every rank measured, for the report: all ranks take part, rank 0 writes.
    let reported = -1;
    const report = async () => {
      reported = engine.step;
      const memory = await engine.memoryPerRank();
      const pipeline = await engine.pipelineTrace();
      const phases = await engine.phasesPerRank();
      if (!lead) return;
      const rec: RanksRecord = {
        step: engine.step,
        layout: layoutRecord,
        config: o.saveConfig ?? {},
        params: engine.model.fullParams,
        flops_per_token: 6 * engine.model.fullParams + 12 * m.layers * ds.seqLen * m.dim,
        peak_flops: peakFlops(),
        memory,
        pipeline,
        phases,
      };
      await Deno.writeTextFile(ranksPath, JSON.stringify(rec) + "\n", { append: true });
      await writeReport(out);
    };
    while (engine.step < stopAt) {
      const batches: Batch[] = [];
      for (const rows of rowsOf) {
        const b = src.next(rows);
        if (b.B > 0) batches.push(b);
      }
      const r = await engine.trainBatch(batches);
      tokensRun += r.tokens;
      const now = performance.now();
      const wallMs = now - window.at(-1)!.t;
      window.push({ t: now, tokens: tokensRun });
      if (window.length > 21) window.shift();
      const w0 = window[0]!;
      const tps = (tokensRun - w0.tokens) / Math.max(1e-9, (now - w0.t) / 1000);
      recent.push(r.loss);
      if (recent.length > 20) recent.shift();
      await writer?.write({
        step: r.step,
        loss: r.loss,
        lr: r.lr,
        tokens_per_s: Math.round(tps),
        step_wall_ms: Math.round(wallMs * 10) / 10,
        tokens: tokensBefore + tokensRun,
        grad_norm: r.gradNorm,
        ...(engine.lossScaler ? { loss_scale: r.lossScale, skipped: r.skipped } : {}),
        ...(r.timings
          ? Object.fromEntries(
            Object.entries(r.timings).map((
              [k, v],
            ) => [k.replace(/Ms$/, "_ms"), Math.round(v * 100) / 100]),
          )
          : {}),
      });
      if (r.timings && r.step % every === 0) {
        const t = r.timings;
        progress.log(
          `step ${r.step} time (ms): forward ${t.forwardMs.toFixed(1)} | backward ` +
            `${t.backwardMs.toFixed(1)} | pipeline idle ${t.pipelineIdleMs.toFixed(1)} | reduce ` +
            `${t.reduceMs.toFixed(1)} | step ${t.stepMs.toFixed(1)}`,
        );
      }
      if (!Number.isFinite(r.loss)) {
        throw new RangeError(
          `The loss became ${r.loss} at step ${r.step}: lower --lr (now ${r.lr}) or set --clip`,
        );
      }
      progress.update({
        step: r.step,
        total: stopAt,
        loss: r.loss,
        lr: r.lr,
        tokensPerS: tps,
        elapsed: (now - t0) / 1000,
        stepsThisRun: r.step - stepsStart,
      });
      const end = engine.step === stopAt;
      if ((o.evalEvery > 0 && r.step % o.evalEvery === 0) || end) {
        const e0 = performance.now();
        last = await evaluate(engine, ds, micro, end ? Infinity : 500);
        const evalS = Math.round(performance.now() - e0) / 1000;
        await writer?.write({
          step: r.step,
          kind: "eval",
          val_loss: last.val,
          ...(last.score ? { heldout_accuracy: last.score.accuracy } : {}),
          eval_s: evalS,
        });
        progress.log(
          `eval @ ${r.step}: val loss ${last.val?.toFixed(4) ?? "n/a"}` +
            (last.score
              ? ` | held-out exact match ${last.score.correct}/${last.score.total} ` +
                `(${(100 * last.score.accuracy).toFixed(1)}%)`
              : "") +
            ` (${evalS.toFixed(1)} s)`,
        );
        await report();
      }
      if (o.saveEvery > 0 && r.step % o.saveEvery === 0 && !end) await saveRun();
      if (o.fault?.rank === rank && o.fault.step === r.step && (o.attempt ?? 0) === 0) {
        injectFault(rank, r.step, o.launch?.mode === "process");
      }
      if (o.stop && !end && await stopAsked(o.stop, world, stopFlag)) {
        stoppedBy = STOP_REASONS[Atomics.load(o.stop, 0)] ?? "a signal";
        break;
      }
    }
    progress.done();
    await saveRun();
    if (reported !== engine.step) await report();
    if (stoppedBy !== null) {
      say(
        `stopped by ${stoppedBy} at step ${engine.step}: saved ${out}/; continue with ` +
          `--resume ${out}`,
      );
    }
    writer?.close();
    const wall = (performance.now() - t0) / 1000;
    const memory = await engine.memoryPerRank();
    let saved: number | null = null;
    if (ec.checkpointActivations > 0) {
      // What the same step would keep without checkpointing (the estimator counts the layers'
      // buffers exactly), against what this rank measured.
      const without = activationBytes(ec.model, {
        tp: layout.tp,
        pp: layout.pp,
        sequenceParallel: layout.sequenceParallel,
        microBatch: layout.microBatchSize,
        microBatches: layout.microBatches,
        seqLen: ds.seqLen,
        precision: ec.precision,
      }).stages[engine.groups.coords.pp]!.totalBytes;
      const mine = memory[world?.rank ?? 0]!.activations_peak_bytes;
      saved = without - mine;
      say(
        `activation checkpointing every ${ec.checkpointActivations} block(s): ` +
          `${(mine / 2 ** 20).toFixed(1)} MiB of activations on rank 0, ` +
          `${(without / 2 ** 20).toFixed(1)} MiB without (estimated): ${
            (saved / 2 ** 20).toFixed(1)
          } MiB saved`,
      );
    }
    const summary: TrainSummary = {
      steps: engine.step,
      train_loss: recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN,
      val_loss: last.val,
      heldout: last.score
        ? { correct: last.score.correct, total: last.score.total, accuracy: last.score.accuracy }
        : null,
      tokens_per_s: Math.round(tokensRun / Math.max(wall, 1e-9)),
      wall_time_s: Math.round(wall * 100) / 100,
      params: engine.model.fullParams,
      backend: backend.description,
      data: ds.name,
      out,
      layout: layoutRecord,
      loss_scale: engine.lossScaler
        ? { scale: engine.lossScaler.scale, skipped_steps: engine.lossScaler.skipped }
        : null,
      memory: { per_rank: memory, activations_saved_bytes: saved },
      stopped_by: stoppedBy,
    };
    // Generation runs through the parallel model on every rank; rank 0 prints it.
    let sample: string | null = null;
    if (!last.score && stoppedBy === null) {
      const start = ds.validationBatches(1, 1)[0]?.inputs ?? src.next().inputs;
      const prompt = Array.from(start.subarray(0, Math.min(16, start.length)));
      const [gen] = await engine.generate([prompt], 120, o.sampling ?? {});
      sample = `  ${ds.tokenizer.decode(prompt)}|${ds.tokenizer.decode(gen!)}`;
    }
    if (!lead) return null;
    await Deno.writeTextFile(`${out}/summary.json`, JSON.stringify(summary, null, 2) + "\n");
    if (print) {
      console.log(
        `done: ${summary.steps} steps in ${formatDuration(wall)}, ` +
          `${summary.tokens_per_s.toLocaleString("en-US")} tokens/s, ` +
          `${summary.params.toLocaleString("en-US")} parameters`,
      );
      console.log(
        `train loss ${summary.train_loss.toFixed(4)} | val loss ` +
          `${summary.val_loss?.toFixed(4) ?? "n/a"}` +
          (summary.heldout
            ? ` | held-out exact match ${summary.heldout.correct}/${summary.heldout.total} ` +
              `(${(100 * summary.heldout.accuracy).toFixed(1)}%)`
            : ""),
      );
      if (last.score) {
        console.log("samples (held-out problems):");
        for (const s of last.score.samples.slice(0, 6)) {
          console.log(
            `  ${s.prompt}${s.predicted}  ${s.correct ? "right" : `wrong, ${s.expected}`}`,
          );
        }
      } else if (sample !== null) {
        const t = o.sampling?.temperature ?? 0, k = o.sampling?.topK;
        console.log(
          t > 0 ? `sample (temperature ${t}${k ? `, top-k ${k}` : ""}):` : "sample (greedy):",
        );
        console.log(sample);
      }
      console.log(
        `wrote ${out}/metrics.jsonl, ${out}/summary.json, ${out}/report.html, ` +
          `${engine.checkpointPath}/`,
      );
    }
    return summary;
  } finally {
    await dashboard?.shutdown();
    backend.dispose();
  }
}
