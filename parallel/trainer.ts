/**
 * One rank's training of a GPT over the grid: tensor (and sequence), pipeline and data
 * parallelism together. {@linkcode ParallelGptTrainer.create} lays out the grid, makes the
 * groups, builds this rank's stage with its parameter shards (each the slice of the serial
 * tensor that `init` gives), and {@linkcode ParallelGptTrainer.trainStep} runs one optimizer
 * step: the pipeline schedule over the micro-batches, the gradient sums, clipping by the true
 * global norm and the optimizer update. Every rank of the world calls the same methods.
 *
 * @module
 */

import { type Communicator, sharedArray } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import {
  buildLayout,
  clipFactor,
  type FlatLayout,
  type Optimizer,
  type ParamSpec,
} from "../optim/mod.ts";
import {
  buildChunkLayers,
  type ChunkPart,
  globalGradNorm,
  gptActivationSize,
  GptChunk,
  type GradGroups,
  type MicroBatch,
  type ParallelGptConfig,
  serialSpecs,
  shardSpecs,
  stageParts,
  syncGradients,
} from "./gpt.ts";
import { buildGrid, checkModelLayout, createGroups, type Grid, type GridGroups } from "./grid.ts";
import { gpt2ShardKind, type ParamSource, shardTensor, unshardTensor } from "./layer.ts";
import type { TensorParallel } from "./mappings.ts";
import { runPipeline } from "./pipeline.ts";
import { chooseSchedule, type PipelineSchedule, type ScheduleName } from "./schedules.ts";

/** Options of {@linkcode ParallelGptTrainer.create}. */
export interface ParallelTrainerOptions {
  /** The communicator of every rank. */
  world: Communicator;
  /** This rank's backend. */
  backend: Backend;
  /** The model (vocabulary already padded to a multiple of tp). */
  config: ParallelGptConfig;
  /** Tensor-parallel size; default 1. */
  tp?: number;
  /** Pipeline stages; default 1. */
  pp?: number;
  /** Model chunks per stage (interleaving); default 1. */
  virtualStages?: number;
  /** A schedule to use instead of the one `chooseSchedule` picks. */
  schedule?: ScheduleName;
  /** Sequence parallelism (needs tp > 1 to matter); default false. */
  sequenceParallel?: boolean;
  /** Micro-batches per optimizer step on each data-parallel rank. */
  microBatches: number;
  /** Sequences per micro-batch. */
  microBatchSize: number;
  /** Tokens per sequence. */
  seqLen: number;
  /** The serial initial value of a parameter (GPT-2 name and full shape). */
  init: (spec: ParamSpec) => Float32Array;
  /** Make the optimizer over this rank's flat buffers. */
  optimizer: (layout: FlatLayout, params: Tensor, grads: Tensor) => Optimizer;
  /** Clip gradients to this global L2 norm; default no clipping. */
  maxGradNorm?: number;
  /** Timeout of every collective in milliseconds. */
  timeoutMs?: number;
}

/** What one optimizer step reports (the same on every rank). */
export interface StepResult {
  /** Mean loss over the global batch. */
  readonly loss: number;
  /** Global gradient norm before clipping. */
  readonly gradNorm: number;
  /**
   * Most micro-batches whose activations this rank held at once, summed over its chunks
   * (1F1B: at most pp - stage; GPipe: m).
   */
  readonly peakActivations: number;
}

class Store implements ParamSource {
  readonly params: Tensor;
  readonly grads: Tensor;
  #be: Backend;
  #layout: FlatLayout;
  #v = new Map<string, Tensor>();
  #g = new Map<string, Tensor>();
  constructor(be: Backend, layout: FlatLayout) {
    this.#be = be;
    this.#layout = layout;
    this.params = be.alloc(layout.size);
    // On the CPU, the gradients live in the process (or world) arena: their data-parallel and
    // tensor-parallel all-reduces then fold in SIMD straight between the ranks' buffers.
    const fromHost = (be as { fromHost?: (a: Float32Array) => Tensor }).fromHost;
    this.grads = fromHost !== undefined
      ? fromHost.call(be, sharedArray(Float32Array, layout.size))
      : be.alloc(layout.size);
  }
  #view(m: Map<string, Tensor>, buf: Tensor, name: string): Tensor {
    let t = m.get(name);
    if (!t) {
      const s = this.#layout.get(name);
      t = this.#be.view(buf, s.offset, s.size);
      m.set(name, t);
    }
    return t;
  }
  value(name: string): Tensor {
    return this.#view(this.#v, this.params, name);
  }
  grad(name: string): Tensor {
    return this.#view(this.#g, this.grads, name);
  }
}

/** One rank's share of a parallel GPT and its training step. */
export class ParallelGptTrainer {
  /** The grid. */
  readonly grid: Grid;
  /** This rank's groups. */
  readonly groups: GridGroups;
  /** The schedule every pipeline runs. */
  readonly schedule: PipelineSchedule;
  /** This rank's flat layout (its shards, GPT-2 names). */
  readonly layout: FlatLayout;
  /** This rank's parameter buffer. */
  readonly params: Tensor;
  /** This rank's gradient buffer. */
  readonly grads: Tensor;
  /** The optimizer over this rank's buffers. */
  readonly optimizer: Optimizer;
  #o: ParallelTrainerOptions;
  #tp: TensorParallel;
  #parts: ChunkPart[];
  #layers: ReturnType<typeof buildChunkLayers>[];
  #gg: GradGroups;

  private constructor(
    o: ParallelTrainerOptions,
    grid: Grid,
    groups: GridGroups,
    schedule: PipelineSchedule,
  ) {
    this.#o = o;
    this.grid = grid;
    this.groups = groups;
    this.schedule = schedule;
    const be = o.backend;
    const tp = grid.tp;
    this.#tp = {
      comm: groups.tp,
      sequenceParallel: (o.sequenceParallel ?? false) && tp > 1,
      timeoutMs: o.timeoutMs,
    };
    this.#parts = stageParts(o.config.layers, grid.pp, schedule.v, groups.coords.pp);
    const serial = serialSpecs(o.config, this.#parts);
    this.layout = buildLayout(shardSpecs(serial, tp));
    const store = new Store(be, this.layout);
    this.params = store.params;
    this.grads = store.grads;
    for (const s of serial) {
      const shard = shardTensor(o.init(s), s.shape, gpt2ShardKind(s.name), tp, groups.coords.tp);
      be.write(this.params, shard, this.layout.get(s.name).offset);
    }
    this.#layers = this.#parts.map((p) => buildChunkLayers(be, this.#tp, store, o.config, p));
    this.optimizer = o.optimizer(this.layout, this.params, this.grads);
    this.#gg = {
      tp: this.#tp,
      dp: groups.dp,
      embedding: groups.embedding,
      modelParallel: groups.modelParallel,
      stage: groups.coords.pp,
      pp: grid.pp,
      tied: o.config.tied ?? true,
    };
  }

  /**
   * Lay out the grid, make the groups and build this rank's stage. Collective over `world`.
   *
   * @param o sizes, model, data shape, initialisation and optimizer
   * @returns the trainer
   */
  static async create(o: ParallelTrainerOptions): Promise<ParallelGptTrainer> {
    const grid = buildGrid({ worldSize: o.world.size, tp: o.tp ?? 1, pp: o.pp ?? 1 });
    const c = o.config;
    const shape = checkModelLayout({
      heads: c.heads,
      layers: c.layers,
      vocab: c.vocab,
      tp: grid.tp,
      pp: grid.pp,
      virtualStages: o.virtualStages ?? 1,
    });
    if (shape.vocabPadding > 0) {
      throw new RangeError(
        `Vocabulary ${c.vocab} does not split across tp=${grid.tp}: build the model (on every ` +
          `layout, one rank too) with the padded vocabulary ${shape.paddedVocab}`,
      );
    }
    const hidden = c.hidden ?? 4 * c.dim;
    if (hidden % grid.tp !== 0 || c.dim % c.heads !== 0) {
      throw new RangeError(
        `The MLP width ${hidden} must be a multiple of tp=${grid.tp} and the width ${c.dim} ` +
          `a multiple of the ${c.heads} heads`,
      );
    }
    if ((o.sequenceParallel ?? false) && grid.tp > 1 && o.seqLen % grid.tp !== 0) {
      throw new RangeError(
        `Sequence parallelism splits each sequence of ${o.seqLen} tokens across tp=${grid.tp}: ` +
          `the sequence length must be a multiple of tp`,
      );
    }
    const schedule = chooseSchedule({
      pp: grid.pp,
      m: o.microBatches,
      v: o.virtualStages ?? 1,
      requested: o.schedule,
    });
    const groups = await createGroups(o.world, grid);
    return new ParallelGptTrainer(o, grid, groups, schedule);
  }

  /**
   * One optimizer step over a global batch of `microBatches * dp` micro-batches; this rank's
   * pipeline takes global micro-batches `[dp * m, (dp + 1) * m)` of `batch`.
   *
   * @param batch global micro-batch `j` of this step (may be called more than once per `j`;
   *   must then return the same data)
   * @param lr the learning rate
   * @returns the mean loss and the gradient norm (the same on every rank), and this rank's peak
   *   number of micro-batches holding activations
   */
  async trainStep(batch: (j: number) => MicroBatch, lr: number): Promise<StepResult> {
    const o = this.#o;
    const be = o.backend;
    const m = o.microBatches;
    const dp = this.grid.dp;
    be.fill(this.grads, 0);
    const chunks = this.#parts.map((p, c) =>
      new GptChunk(be, this.#tp, this.#layers[c]!, p, {
        B: o.microBatchSize,
        T: o.seqLen,
        batch: (mb) => batch(this.groups.coords.dp * m + mb),
        gradScale: 1 / (m * dp),
      })
    );
    await runPipeline({
      schedule: this.schedule,
      comm: this.groups.pp,
      chunks,
      activationSize: gptActivationSize(o.microBatchSize, o.seqLen, o.config.dim, this.#tp),
      timeoutMs: o.timeoutMs,
    });
    await syncGradients(be, this.#gg, this.layout, this.grads);
    const gradNorm = await globalGradNorm(be, this.#gg, this.layout, this.grads);
    const f = o.maxGradNorm === undefined ? 1 : clipFactor(gradNorm, o.maxGradNorm);
    if (f !== 1) be.scale(this.grads, f, this.layout.size);
    this.optimizer.step(lr);
    // The loss lives on the last stage; tensor rank 0 of each pipeline contributes it.
    const sum = new Float32Array(1);
    if (this.groups.coords.pp === this.grid.pp - 1 && this.groups.coords.tp === 0) {
      for (const c of chunks) for (const l of c.losses.values()) sum[0]! += l;
    }
    await o.world.allReduce(sum, "sum", { timeoutMs: o.timeoutMs ?? 30_000 });
    const peakActivations = chunks.reduce((a, c) => a + c.peakSlots, 0);
    return { loss: sum[0]! / (m * dp), gradNorm, peakActivations };
  }

  /**
   * Every serial parameter, put together from the shards of data-parallel replica 0, on world
   * rank 0 (`null` elsewhere): for evaluation, sampling and checkpoints. Collective over the
   * world.
   *
   * @returns the full tensors by GPT-2 name on rank 0
   */
  gatherParams(): Promise<Map<string, Float32Array> | null> {
    return this.gather(this.params);
  }

  /**
   * Put a buffer laid out like the parameters (the parameters, the gradients, an optimizer
   * moment) back together as serial tensors on world rank 0, from data-parallel replica 0.
   * Collective over the world.
   *
   * @param buf a buffer of `layout.size` elements on this rank
   * @returns the full tensors by GPT-2 name on rank 0, `null` elsewhere
   */
  async gather(buf: Tensor): Promise<Map<string, Float32Array> | null> {
    const o = this.#o;
    const world = o.world;
    const g = this.grid;
    const opts = { timeoutMs: o.timeoutMs ?? 30_000 };
    const mine = Float32Array.from(await o.backend.read(buf));
    if (world.rank !== 0) {
      if (this.groups.coords.dp === 0) await world.send(mine, 0, 0x7ff0, opts);
      return null;
    }
    const shards = new Map<string, { shape: readonly number[]; parts: Float32Array[] }>();
    for (let pp = 0; pp < g.pp; pp++) {
      const serial = serialSpecs(o.config, stageParts(o.config.layers, g.pp, this.schedule.v, pp));
      const layout = buildLayout(shardSpecs(serial, g.tp));
      const seen = new Set(shards.keys()); // a tied wte already taken from an earlier stage
      for (let t = 0; t < g.tp; t++) {
        const r = g.rankOf({ tp: t, dp: 0, pp });
        let from = mine;
        if (r !== 0) {
          from = new Float32Array(layout.size);
          await world.recv(from, r, 0x7ff0, opts);
        }
        for (const s of serial) {
          if (seen.has(s.name)) continue;
          const e = shards.get(s.name) ?? { shape: s.shape, parts: [] };
          const slot = layout.get(s.name);
          e.parts.push(from.slice(slot.offset, slot.offset + slot.size));
          shards.set(s.name, e);
        }
      }
    }
    const out = new Map<string, Float32Array>();
    for (const [name, e] of shards) {
      out.set(name, unshardTensor(e.parts, e.shape, gpt2ShardKind(name)));
    }
    return out;
  }

  /**
   * Fill a buffer laid out like the parameters from serial tensors (e.g. a checkpoint every rank
   * has read): each rank takes its slices. Not collective.
   *
   * @param buf a buffer of `layout.size` elements on this rank
   * @param full the serial tensors by GPT-2 name
   */
  load(buf: Tensor, full: ReadonlyMap<string, Float32Array>): void {
    const o = this.#o;
    const serial = serialSpecs(o.config, this.#parts);
    for (const s of serial) {
      const value = full.get(s.name);
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (!value || value.length !== n) {
        throw new RangeError(
          `Tensor "${s.name}" is ${value ? `${value.length} elements` : "missing"}: the model ` +
            `needs [${s.shape}] (${n} elements)`,
        );
      }
      const shard = shardTensor(
        value,
        s.shape,
        gpt2ShardKind(s.name),
        this.grid.tp,
        this.groups.coords.tp,
      );
      o.backend.write(buf, shard, this.layout.get(s.name).offset);
    }
  }
}
