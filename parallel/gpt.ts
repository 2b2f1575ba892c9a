/**
 * A GPT laid out over the grid: which blocks each pipeline stage (and virtual chunk) holds,
 * each rank's parameter shards under GPT-2 names, the stage's layers built from the parallel
 * layers, a {@linkcode PipelineChunk} that runs them per micro-batch, and the gradient work
 * between backward and the optimizer step (sequence-parallel sums, tied embeddings, data
 * parallel all-reduce) with the global gradient norm counted once per parameter.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import type { FlatLayout, ParamSpec } from "../optim/mod.ts";
import { allReduceT } from "./_host.ts";
import { ParallelBlock } from "./block.ts";
import { VocabParallelHead } from "./cross_entropy.ts";
import { VocabParallelEmbedding } from "./embedding.ts";
import {
  gpt2ShardKind,
  isSequenceParallelPartial,
  type ParallelLayer,
  type ParallelStep,
  type ParamSource,
} from "./layer.ts";
import { type TensorParallel, tpSize } from "./mappings.ts";
import type { PipelineChunk } from "./pipeline.ts";

/** The shape of a GPT (the same keys as `models/`' GptConfig). */
export interface ParallelGptConfig {
  /** Vocabulary size (padded to a multiple of tp: see `checkModelLayout`). */
  vocab: number;
  /** Longest sequence. */
  ctx: number;
  /** Model width C. */
  dim: number;
  /** Transformer blocks. */
  layers: number;
  /** Attention heads. */
  heads: number;
  /** Whether the head reuses `wte`; default true. */
  tied?: boolean;
  /** MLP width; default 4 * dim. */
  hidden?: number;
  /** Layernorm epsilon; default 1e-5. */
  lnEps?: number;
}

/** The part of the model one chunk holds. */
export interface ChunkPart {
  /** Virtual stage index `chunk * pp + stage`. */
  readonly virtualStage: number;
  /** Whether it starts with the embedding. */
  readonly embedding: boolean;
  /** Blocks `[start, end)`. */
  readonly blocks: readonly [number, number];
  /** Whether it ends with the head. */
  readonly head: boolean;
}

/**
 * The chunks of pipeline stage `stage`: chunk `c` is virtual stage `c * pp + stage` and holds
 * `layers / (pp * v)` consecutive blocks; the first virtual stage adds the embedding, the last
 * the head.
 *
 * @param layers transformer blocks
 * @param pp pipeline stages
 * @param v chunks per stage
 * @param stage this stage
 * @returns one part per chunk
 */
export function stageParts(layers: number, pp: number, v: number, stage: number): ChunkPart[] {
  const V = pp * v;
  if (layers % V !== 0) {
    throw new RangeError(`${layers} layers do not split into ${V} pipeline chunks`);
  }
  const per = layers / V;
  return Array.from({ length: v }, (_, c) => {
    const k = c * pp + stage;
    return {
      virtualStage: k,
      embedding: k === 0,
      blocks: [k * per, (k + 1) * per] as const,
      head: k === V - 1,
    };
  });
}

function resolved(c: ParallelGptConfig): Required<ParallelGptConfig> {
  return { tied: true, hidden: 4 * c.dim, lnEps: 1e-5, ...c };
}

/**
 * The serial (one-rank) parameters of the given parts, GPT-2 names and shapes, in GPT-2 order.
 * A head without the embedding on its stage brings its own `wte` when tied.
 *
 * @param config the model
 * @param parts the chunks of one stage
 * @returns the serial specs
 */
export function serialSpecs(config: ParallelGptConfig, parts: readonly ChunkPart[]): ParamSpec[] {
  const { vocab: V, ctx, dim: C, hidden: F, tied } = resolved(config);
  const out: ParamSpec[] = [];
  const seen = new Set<string>();
  const add = (name: string, shape: number[]) => {
    if (!seen.has(name)) out.push({ name, shape });
    seen.add(name);
  };
  for (const p of parts) {
    if (p.embedding) {
      add("wte", [V, C]);
      add("wpe", [ctx, C]);
    }
    for (let i = p.blocks[0]; i < p.blocks[1]; i++) {
      const h = `h.${i}`;
      add(`${h}.ln_1.weight`, [C]);
      add(`${h}.ln_1.bias`, [C]);
      add(`${h}.attn.c_attn.weight`, [C, 3 * C]);
      add(`${h}.attn.c_attn.bias`, [3 * C]);
      add(`${h}.attn.c_proj.weight`, [C, C]);
      add(`${h}.attn.c_proj.bias`, [C]);
      add(`${h}.ln_2.weight`, [C]);
      add(`${h}.ln_2.bias`, [C]);
      add(`${h}.mlp.c_fc.weight`, [C, F]);
      add(`${h}.mlp.c_fc.bias`, [F]);
      add(`${h}.mlp.c_proj.weight`, [F, C]);
      add(`${h}.mlp.c_proj.bias`, [C]);
    }
    if (p.head) {
      add("ln_f.weight", [C]);
      add("ln_f.bias", [C]);
      add(tied ? "wte" : "lm_head.weight", [V, C]);
    }
  }
  return out;
}

/**
 * This rank's parameter specs: the serial ones with each shape cut as `gpt2ShardKind` says.
 *
 * @param serial the serial specs
 * @param tp tensor-parallel size
 * @returns the specs with this rank's shapes (same names and order)
 */
export function shardSpecs(serial: readonly ParamSpec[], tp: number): ParamSpec[] {
  return serial.map((s) => {
    const how = gpt2ShardKind(s.name);
    const shape = [...s.shape];
    if (how.kind === "rows") shape[0] = shape[0]! / tp;
    if (how.kind === "columns") shape[shape.length - 1] = shape[shape.length - 1]! / tp;
    return { name: s.name, shape, decay: s.decay ?? s.shape.length >= 2 };
  });
}

/**
 * Build the layers of one chunk: embedding, blocks, head, as its part says.
 *
 * @param be the backend
 * @param tp the tensor-parallel group
 * @param store where this rank's shards live
 * @param config the model
 * @param part what the chunk holds
 * @returns the layers, first to last
 */
export function buildChunkLayers(
  be: Backend,
  tp: TensorParallel,
  store: ParamSource,
  config: ParallelGptConfig,
  part: ChunkPart,
): ParallelLayer[] {
  const c = resolved(config);
  const layers: ParallelLayer[] = [];
  if (part.embedding) layers.push(new VocabParallelEmbedding(be, tp, store, c.vocab, c.ctx, c.dim));
  for (let i = part.blocks[0]; i < part.blocks[1]; i++) {
    layers.push(new ParallelBlock(be, tp, store, i, c.dim, c.heads, c.hidden, c.lnEps));
  }
  if (part.head) layers.push(new VocabParallelHead(be, tp, store, c.vocab, c.dim, c.tied, c.lnEps));
  return layers;
}

/** One micro-batch: token ids and targets, `[B, T]` each (the full sequence). */
export interface MicroBatch {
  /** Token ids. */
  readonly inputs: Int32Array;
  /** Next-token targets (negative = ignored). */
  readonly targets: Int32Array;
}

/** Options of {@linkcode GptChunk}. */
export interface GptChunkOptions {
  /** Sequences per micro-batch. */
  B: number;
  /** Tokens per sequence (the full length). */
  T: number;
  /**
   * The micro-batch `mb` of this step (the same on every rank of a tensor group). It may be
   * called more than once for one micro-batch and must return the same data each time.
   */
  batch: (mb: number) => MicroBatch;
  /** Multiplies every micro-batch's loss gradient, e.g. 1 / (m * dp); default 1. */
  gradScale?: number;
}

/** A chunk of GPT layers run per micro-batch by the pipeline executor. */
export class GptChunk implements PipelineChunk {
  /** The layers, first to last. */
  readonly layers: readonly ParallelLayer[];
  /** Loss of each micro-batch this step (on the chunk with the head). */
  readonly losses: Map<number, number> = new Map();
  /** Most activation slots in use at once (micro-batches between forward and backward). */
  peakSlots = 0;
  #be: Backend;
  #tp: TensorParallel;
  #opts: GptChunkOptions;
  #first: boolean;
  #last: boolean;
  #inputs = new Map<number, Tensor>();
  #targets = new Map<number, Tensor>();
  #steps = new Map<number, ParallelStep>();
  #used = new Set<number>(); // activation slots held by micro-batches between forward and backward
  #dy: Tensor | null = null;

  /**
   * Wrap layers as a pipeline chunk.
   *
   * @param be the backend
   * @param tp the tensor-parallel group
   * @param layers the chunk's layers
   * @param part what the chunk holds
   * @param opts shapes, data and gradient scale
   */
  constructor(
    be: Backend,
    tp: TensorParallel,
    layers: readonly ParallelLayer[],
    part: ChunkPart,
    opts: GptChunkOptions,
  ) {
    if (tp.sequenceParallel && opts.T % tpSize(tp) !== 0) {
      throw new RangeError(
        `Sequence parallelism splits T=${opts.T} across tp=${tpSize(tp)}: T must be a multiple`,
      );
    }
    this.layers = layers;
    this.#be = be;
    this.#tp = tp;
    this.#opts = opts;
    this.#first = part.embedding;
    this.#last = part.head;
  }

  #step(mb: number): ParallelStep {
    let s = this.#steps.get(mb);
    if (s) return s;
    const { B, T } = this.#opts;
    const sp = this.#tp.sequenceParallel === true;
    // The lowest free slot: layers keep activations per slot, so a schedule that holds at most
    // k micro-batches (1F1B: pp - stage) makes them allocate k sets, not m.
    let slot = 0;
    while (this.#used.has(slot)) slot++;
    this.#used.add(slot);
    this.peakSlots = Math.max(this.peakSlots, this.#used.size);
    const base = { B, T: sp ? T / tpSize(this.#tp) : T, slot };
    if (!this.#last) s = base;
    else {
      const tg = this.#opts.batch(mb).targets;
      const t = this.#tensor(this.#targets, slot, tg.length, "i32");
      this.#be.write(t, tg);
      let count = 0;
      for (const x of tg) if (x >= 0) count++;
      s = { ...base, targets: t, count, gradScale: this.#opts.gradScale ?? 1 };
    }
    this.#steps.set(mb, s);
    return s;
  }

  /** A tensor of `length` elements kept per slot in `cache`, reused across steps. */
  #tensor(
    cache: Map<number, Tensor>,
    slot: number,
    length: number,
    dtype: "f32" | "i32",
  ): Tensor {
    let t = cache.get(slot);
    if (!t || t.length !== length || t.dtype !== dtype) {
      t = this.#be.alloc(length, dtype);
      cache.set(slot, t);
    }
    return t;
  }

  /**
   * Forward of micro-batch `mb`.
   *
   * @param mb micro-batch
   * @param input activations from the previous chunk, or `null` on the first
   * @returns activations for the next chunk, or `null` on the last (its loss is in `losses`)
   */
  async forward(mb: number, input: Float32Array | null): Promise<Float32Array | null> {
    const step = this.#step(mb);
    let x: Tensor;
    if (this.#first) {
      const ids = this.#opts.batch(mb).inputs;
      x = this.#tensor(this.#inputs, step.slot!, ids.length, "i32");
      this.#be.write(x, ids);
    } else {
      if (input === null) throw new TypeError(`Chunk needs activations for micro-batch ${mb}`);
      x = this.#tensor(this.#inputs, step.slot!, input.length, "f32");
      this.#be.write(x, input);
    }
    for (const layer of this.layers) x = await layer.forward(x, step);
    const out = await this.#be.read(x);
    if (this.#last) {
      this.losses.set(mb, out[0]!);
      return null;
    }
    return out instanceof Float32Array ? out : Float32Array.from(out);
  }

  /**
   * Backward of micro-batch `mb`.
   *
   * @param mb micro-batch
   * @param dOutput gradient of this chunk's output, or `null` on the last
   * @returns gradient of its input, or `null` on the first
   */
  async backward(mb: number, dOutput: Float32Array | null): Promise<Float32Array | null> {
    const step = this.#steps.get(mb);
    if (!step) throw new RangeError(`Backward of micro-batch ${mb} before its forward`);
    let dy: Tensor | null = null;
    if (!this.#last) {
      if (dOutput === null) throw new TypeError(`Chunk needs a gradient for micro-batch ${mb}`);
      if (!this.#dy || this.#dy.length !== dOutput.length) {
        this.#dy = this.#be.alloc(dOutput.length);
      }
      this.#be.write(this.#dy, dOutput);
      dy = this.#dy;
    }
    for (let i = this.layers.length - 1; i >= 0; i--) dy = await this.layers[i]!.backward(dy, step);
    this.#steps.delete(mb);
    this.#used.delete(step.slot!);
    if (this.#first || dy === null) return null;
    const out = await this.#be.read(dy);
    return out instanceof Float32Array ? out : Float32Array.from(out);
  }
}

/**
 * Elements of one micro-batch's activations at a pipeline boundary: `B * T * C`, divided by tp
 * with sequence parallelism (each rank sends its rows).
 *
 * @param B sequences per micro-batch
 * @param T tokens per sequence
 * @param dim model width
 * @param tp the tensor-parallel group
 * @returns the element count
 */
export function gptActivationSize(B: number, T: number, dim: number, tp: TensorParallel): number {
  return (B * T * dim) / (tp.sequenceParallel ? tpSize(tp) : 1);
}

/** The groups gradient work needs (the grid's communicators, `null` for a size-1 axis). */
export interface GradGroups {
  /** Tensor-parallel group, with the sequence-parallel flag. */
  readonly tp: TensorParallel;
  /** Data-parallel group. */
  readonly dp: Communicator | null;
  /** First and last stage of this pipeline (`null` on middle stages). */
  readonly embedding: Communicator | null;
  /** One model replica (tp * pp ranks), for the gradient norm. */
  readonly modelParallel: Communicator | null;
  /** This rank's pipeline stage. */
  readonly stage: number;
  /** Number of pipeline stages. */
  readonly pp: number;
  /** Whether the head reuses `wte` (then the first and last stage each hold a copy). */
  readonly tied: boolean;
}

/**
 * Between backward and the optimizer: sum the sequence-parallel partial gradients over the
 * tensor group, the tied `wte` gradient over the first and last stage, then every gradient over
 * the data-parallel group.
 *
 * @param be the backend
 * @param g the groups
 * @param layout this rank's flat layout
 * @param grads the flat gradient buffer
 * @returns once done
 */
export async function syncGradients(
  be: Backend,
  g: GradGroups,
  layout: FlatLayout,
  grads: Tensor,
): Promise<void> {
  if (g.tp.sequenceParallel) {
    for (const s of layout.slots) {
      if (isSequenceParallelPartial(s.name)) {
        await allReduceT(be, g.tp, be.view(grads, s.offset, s.size));
      }
    }
  }
  if (g.tied && g.pp > 1 && g.embedding !== null) {
    const s = layout.get("wte");
    await allReduceT(be, { comm: g.embedding }, be.view(grads, s.offset, s.size));
  }
  if (g.dp !== null && g.dp.size > 1) await allReduceT(be, { comm: g.dp }, grads);
}

/**
 * The global gradient norm of the whole model, each parameter counted once: sharded
 * parameters by every tensor rank, replicated ones by tensor rank 0 only, the tied `wte` of
 * the last stage not at all when the first stage holds it too. Summed over the model-parallel
 * group (data-parallel replicas are equal after {@linkcode syncGradients}).
 *
 * @param be the backend
 * @param g the groups
 * @param layout this rank's flat layout
 * @param grads the flat gradient buffer
 * @returns the L2 norm
 */
export async function globalGradNorm(
  be: Backend,
  g: GradGroups,
  layout: FlatLayout,
  grads: Tensor,
): Promise<number> {
  const tpRank = g.tp.comm?.rank ?? 0;
  const out = be.alloc(1);
  for (const s of layout.slots) {
    if (gpt2ShardKind(s.name).kind === "replicate" && tpRank !== 0) continue;
    if (s.name === "wte" && g.tied && g.pp > 1 && g.stage !== 0) continue;
    be.sumSquares(out, be.view(grads, s.offset, s.size), s.size, true);
  }
  const sq = Float32Array.from(await be.read(out));
  if (g.modelParallel !== null && g.modelParallel.size > 1) await g.modelParallel.allReduce(sq);
  return Math.sqrt(sq[0]!);
}
