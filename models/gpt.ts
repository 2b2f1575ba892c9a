/**
 * THE GPT (GPT-2 architecture), built from the tensor-parallel layers of `parallel/`: token and
 * position embeddings, pre-LN blocks of causal self-attention and a GELU MLP, a final layernorm
 * and a tied or untied head. One rank with a tensor-parallel group of one and the whole model
 * is the serial case; a rank of a larger layout builds its tensor-parallel pieces of the
 * pipeline chunks it holds, nothing more.
 *
 * Each layer declares its parameters (this rank's shape, the serial shape, how it is split,
 * whether its gradient is partial, what it is tied to, how it is initialised); the model merges
 * them and hands them to a {@linkcode ModelStore} (plain flat buffers, or ZeRO's partitioned
 * ones), which owns where parameters and gradients live.
 *
 * @module
 */

import { type Backend, Rng, roundHalf, type Tensor, type TensorDType } from "../kernels/mod.ts";
import type { FlatLayout, LayerGate, ParamSpec } from "../optim/mod.ts";
import {
  ActivationPool,
  checkModelLayout,
  gatherFromRegion,
  type Layer,
  type LayerContext,
  type ParamStore,
  type PipelineChunk,
  RECOMPUTE_SLOT,
  type Step,
  type StepDropout,
  type TensorParallel,
  tpSize,
  TransformerBlock,
  VocabParallelEmbedding,
  VocabParallelHead,
  type WireBuffer,
} from "../parallel/mod.ts";
import {
  type GptConfig,
  gptParamSpecs,
  type ResolvedGptConfig,
  resolveGptConfig,
} from "./config.ts";
import { initialPiece } from "./init.ts";
import { FlatParams, mergeSpecs, type ModelStore } from "./params.ts";

/** The part of the model one pipeline chunk holds. */
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
 * @example Two stages of two chunks each
 * ```ts
 * import { stageParts } from "./gpt.ts";
 * const [a, b] = stageParts(8, 2, 2, 1);
 * console.assert(a.blocks.join() === "2,4" && b.head && !a.head);
 * ```
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

/** One micro-batch: token ids and targets, `[B, T]` each (the full sequence). */
export interface MicroBatch {
  /** Token ids. */
  readonly inputs: Int32Array;
  /** Next-token targets (negative = ignored); `null` asks for the logits instead of a loss. */
  readonly targets: Int32Array | null;
}

/** Options of {@linkcode Gpt}. */
export interface GptOptions {
  /** Initialise the parameters from this seed (default 0); `null` leaves them as the store has them. */
  seed?: number | null;
  /** The tensor-parallel group; default one rank. */
  tp?: TensorParallel;
  /** The pipeline chunks this rank holds; default the whole model (one chunk). */
  parts?: readonly ChunkPart[];
  /** Whether the pipeline has more than one stage (a tied head then holds its own `wte`). */
  pipelined?: boolean;
  /**
   * Where parameters and gradients live, given the layers' parameters in forward order (each
   * name once per layer); default flat buffers ({@linkcode FlatParams}).
   */
  store?: (layers: readonly (readonly ParamSpec[])[]) => ModelStore;
  /** Activation checkpointing: recompute every n-th block (0 or absent: off). */
  checkpointEvery?: number;
  /** Element type of activations (and of the default store's parameters and gradients). */
  dtype?: TensorDType;
  /** Called around every layer's forward and backward (ZeRO stage 3 gathers there). */
  gate?: LayerGate;
}

/** Options of {@linkcode buildGptLayers}. */
export interface GptLayerOptions {
  /** Activation checkpointing: recompute every n-th block (0 or absent: off). */
  checkpointEvery?: number;
  /** Whether the pipeline has more than one stage (a tied head then holds its own `wte`). */
  pipelined?: boolean;
}

/**
 * The layers of the chunks a rank holds, first to last per chunk: the one place that says
 * what a GPT is made of (embedding, blocks, head) and how its layers are tied and scaled.
 *
 * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
 * @param c the model's shape
 * @param parts the chunks this rank holds
 * @param opts checkpointing and pipelining
 * @returns the layers of each chunk
 */
export function buildGptLayers(
  ctx: LayerContext,
  c: ResolvedGptConfig,
  parts: readonly ChunkPart[],
  opts: GptLayerOptions = {},
): Layer[][] {
  const every = opts.checkpointEvery ?? 0;
  const pipelined = opts.pipelined ?? false;
  const holdsEmbedding = parts.some((p) => p.embedding);
  const tie = pipelined && c.tied ? "embedding" : undefined;
  const projStd = 0.02 / Math.sqrt(2 * c.layers);
  return parts.map((part) => {
    const layers: Layer[] = [];
    if (part.embedding) {
      layers.push(new VocabParallelEmbedding(ctx, c.vocab, c.ctx, c.dim, { tie }));
    }
    for (let i = part.blocks[0]; i < part.blocks[1]; i++) {
      layers.push(
        new TransformerBlock(ctx, i, c.dim, c.heads, {
          hidden: c.hidden,
          eps: c.lnEps,
          projStd,
          checkpoint: every > 0 && i % every === 0,
        }),
      );
    }
    if (part.head) {
      layers.push(
        new VocabParallelHead(ctx, c.vocab, c.dim, {
          tied: c.tied,
          eps: c.lnEps,
          tie,
          mirror: tie !== undefined && !holdsEmbedding,
        }),
      );
    }
    return layers;
  });
}

/** Where a rank sits, for {@linkcode gptRankSpecs}. */
export interface RankPlace {
  /** Tensor-parallel size; default 1. */
  tp?: number;
  /** This rank's tensor-parallel index; default 0. */
  tpRank?: number;
  /** Sequence parallelism; default false. */
  sequenceParallel?: boolean;
  /** Pipeline stages; default 1. */
  pp?: number;
  /** This rank's stage; default 0. */
  stage?: number;
  /** Chunks per stage; default 1. */
  virtualStages?: number;
}

/**
 * The parameters a rank of a layout holds, as its layers declare them, without building a
 * model or allocating anything (what memory estimates count).
 *
 * @example The first of two tensor-parallel ranks holds half of c_attn
 * ```ts
 * import { gptRankSpecs } from "./gpt.ts";
 * const specs = gptRankSpecs({ vocab: 16, ctx: 8, dim: 8, layers: 2, heads: 2 }, { tp: 2 });
 * const w = specs.find((s) => s.name === "h.0.attn.c_attn.weight")!;
 * console.assert(w.shape.join() === "8,12");
 * ```
 *
 * @param config the model (vocabulary already padded to a multiple of tp)
 * @param place the rank's place in the layout
 * @returns its parameters, each once, in layout order
 */
export function gptRankSpecs(config: GptConfig, place: RankPlace = {}): ParamSpec[] {
  const c = resolveGptConfig(config);
  const size = place.tp ?? 1;
  const pp = place.pp ?? 1;
  // Layers only declare their parameters when built: neither the group nor the backend is
  // used until they run, so a description of the group is enough here.
  const comm = size > 1
    ? ({ size, rank: place.tpRank ?? 0 } as unknown as NonNullable<TensorParallel["comm"]>)
    : null;
  const unused = new Proxy({}, {
    get: () => {
      throw new Error("gptRankSpecs() builds layers only to read their declarations");
    },
  });
  const ctx: LayerContext = {
    backend: unused as Backend,
    tp: { comm, sequenceParallel: place.sequenceParallel },
    store: unused as ParamStore,
  };
  const parts = stageParts(c.layers, pp, place.virtualStages ?? 1, place.stage ?? 0);
  return mergeSpecs(
    buildGptLayers(ctx, c, parts, { pipelined: pp > 1 }).flat().map((l) => l.specs),
  );
}

/** Options of {@linkcode decode} (and of `generate`). */
export interface GenerateOptions {
  /** A row stops after producing this token (it is kept in the output). */
  stop?: number;
  /** 0 (the default): the most likely token; above 0, sample from softmax(logits / it). */
  temperature?: number;
  /** With a temperature: sample among the k most likely tokens only; default every token. */
  topK?: number;
  /** Seed of the sampling; default 0 (every rank draws the same tokens). */
  seed?: number;
}

/**
 * Logits `[B, T, V]` of a pass of decoding: `past` (when given) positions of every row are
 * already in the model's key/value cache and `ids` holds the next `T` of each row; without
 * `past`, `ids` holds the whole window.
 */
export type DecodeLogits = (
  ids: Int32Array,
  B: number,
  T: number,
  past?: number,
) => Promise<Float32Array>;

/** Options of {@linkcode Gpt.chunk}. */
export interface ChunkOptions {
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
  /** Index in the step's global batch of micro-batch 0's first sequence; default 0. */
  seqOffset?: number;
  /** Dropout of this step: its probability and key (omit for evaluation). */
  dropout?: { p: number; key: number };
  /**
   * Evaluation: forward only, every micro-batch in the pool's shared activation slot (nothing
   * is kept for a backward).
   */
  eval?: boolean;
  /** Receives each micro-batch's loss tensor `[1]` (the chunk with the head). */
  onLoss?: (mb: number, loss: Tensor) => void;
  /** Decoding: the pass's tokens follow `past` cached positions (with `eval`). */
  past?: number;
  /** Receives each micro-batch's output without targets (the logits of this rank's shard). */
  onLogits?: (mb: number, logits: Tensor) => void;
}

function checkTokens(what: string, a: Int32Array, n: number, V: number, allowNegative: boolean) {
  if (!(a instanceof Int32Array)) throw new TypeError(`${what} must be an Int32Array`);
  if (a.length !== n) {
    throw new RangeError(`${what} has ${a.length} tokens but B * T = ${n}`);
  }
  let count = 0;
  for (let i = 0; i < n; i++) {
    const t = a[i]!;
    if (t >= V || (t < 0 && !allowNegative)) {
      throw new RangeError(
        `${what}[${i}] = ${t} is outside the vocabulary [0, ${V})` +
          (allowNegative ? " (use a negative target to ignore a position)" : ""),
      );
    }
    if (t >= 0) count++;
  }
  return count;
}

/**
 * A GPT whose layers are `[Embedding, Block x layers, Head]`, or this rank's share of them.
 *
 * @example A train step on the reference backend
 * ```ts
 * import { createReferenceBackend } from "../kernels/mod.ts";
 * import { Gpt } from "./gpt.ts";
 * const gpt = new Gpt(createReferenceBackend(), { vocab: 8, ctx: 4, dim: 8, layers: 1, heads: 2 });
 * const ids = new Int32Array([1, 2, 3, 4]);
 * const loss = await gpt.forward(ids, new Int32Array([2, 3, 4, 5]), 1, 4);
 * gpt.zeroGrad();
 * await gpt.backward();
 * console.assert((await gpt.backend.read(loss))[0] > 0);
 * ```
 */
export class Gpt {
  /** The backend every op runs on. */
  readonly backend: Backend;
  /** The validated configuration. */
  readonly config: ResolvedGptConfig;
  /** The tensor-parallel group. */
  readonly tp: TensorParallel;
  /** The pipeline chunks this rank holds. */
  readonly parts: readonly ChunkPart[];
  /** The layers of each chunk, first to last. */
  readonly chunks: readonly (readonly Layer[])[];
  /** Where parameters and gradients live. */
  readonly store: ModelStore;
  /** The activation memory of every layer (its `bytes` is what they allocated). */
  readonly pool: ActivationPool;
  /** Element type of the activations. */
  readonly dtype: TensorDType;
  #gate: LayerGate | null;
  #pending: { chunk: GptChunk; step: number } | null = null;

  /**
   * Build this rank's layers and hand their parameters to the store.
   *
   * @param backend the backend
   * @param config the model's shape
   * @param opts seed, tensor group, chunks, store, checkpointing, activation type, gate
   */
  constructor(backend: Backend, config: GptConfig, opts: GptOptions = {}) {
    const c = resolveGptConfig(config);
    const tp = opts.tp ?? { comm: null };
    checkModelLayout({
      heads: c.heads,
      layers: c.layers,
      vocab: c.vocab,
      tp: tpSize(tp),
    });
    if (c.vocab % tpSize(tp) !== 0) {
      throw new RangeError(
        `Vocabulary ${c.vocab} does not split across tp=${tpSize(tp)}: build the model with ` +
          `the padded vocabulary of checkModelLayout()`,
      );
    }
    this.backend = backend;
    this.config = c;
    this.tp = tp;
    this.dtype = opts.dtype ?? "f32";
    this.parts = opts.parts ?? stageParts(c.layers, 1, 1, 0);
    this.pool = new ActivationPool(backend);
    // The layers look parameters up at run time, through the store built below.
    const lookup: ParamStore = {
      value: (name) => this.store.value(name),
      grad: (name) => this.store.grad(name),
    };
    const ctx: LayerContext = { backend, tp, store: lookup, pool: this.pool, dtype: this.dtype };
    this.chunks = buildGptLayers(ctx, c, this.parts, {
      checkpointEvery: opts.checkpointEvery,
      pipelined: opts.pipelined,
    });
    const perLayer = this.layers.map((l) => l.specs);
    this.store = opts.store?.(perLayer) ??
      new FlatParams(backend, mergeSpecs(perLayer), { dtype: this.dtype });
    this.#gate = opts.gate ?? null;
    const seed = opts.seed === undefined ? 0 : opts.seed;
    if (seed !== null) this.initialize(seed);
  }

  /** Every layer of this rank in forward order (chunk by chunk). */
  get layers(): readonly Layer[] {
    return this.chunks.flat();
  }

  /** The flat layout of this rank's parameters and gradients. */
  get layout(): FlatLayout {
    return this.store.layout;
  }

  /** The number of parameters this rank holds a piece of (its pieces' sizes, no padding). */
  get numParams(): number {
    return this.layout.numParams;
  }

  /** The number of parameters of the whole (serial) model. */
  get fullParams(): number {
    return gptParamSpecs(this.config).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
  }

  /** Whether this rank holds the whole model (one rank, one chunk with embedding and head). */
  get whole(): boolean {
    const p = this.parts;
    return p.length === 1 && p[0]!.embedding && p[0]!.head && tpSize(this.tp) === 1;
  }

  /**
   * Set this rank's piece of every parameter to its deterministic initial value for `seed`
   * (the slice of the serial tensor, so that every layout starts from the same model).
   *
   * @param seed the seed
   */
  initialize(seed: number): void {
    for (const s of this.layout.slots) this.store.write(s.name, initialPiece(s, seed));
  }

  /** Set every gradient to zero. */
  zeroGrad(): void {
    this.store.zeroGrad();
  }

  /** The layer gate (ZeRO stage 3's gathers), or null. */
  get gate(): LayerGate | null {
    return this.#gate;
  }

  /**
   * A pipeline chunk that runs this rank's chunk `c` per micro-batch (see `runPipeline`).
   *
   * @param c the chunk index on this rank
   * @param opts shapes, data, gradient scale, dropout and where losses go
   * @returns the chunk
   */
  chunk(c: number, opts: ChunkOptions): GptChunk {
    const part = this.parts[c];
    if (!part) throw new RangeError(`This rank holds ${this.parts.length} chunks, not chunk ${c}`);
    return new GptChunk(this, this.chunks[c]!, part, opts);
  }

  #checkShape(B: number, T: number): void {
    if (!Number.isInteger(B) || B < 1) {
      throw new RangeError(`B must be a positive integer, got ${B}`);
    }
    if (!Number.isInteger(T) || T < 1 || T > this.config.ctx) {
      throw new RangeError(
        `T must be an integer in [1, ${this.config.ctx}] (the model's ctx), got ${T}`,
      );
    }
  }

  #single(what: string): void {
    if (this.parts.length !== 1 || !this.parts[0]!.embedding || !this.parts[0]!.head) {
      throw new RangeError(
        `${what} runs a model whose rank holds every layer; a pipeline stage runs through ` +
          `the engine's pipeline instead`,
      );
    }
  }

  /**
   * Run the model on a batch and compute the mean cross-entropy over the targets >= 0 (this
   * rank holds every layer; with tensor parallelism every rank of the group calls it).
   *
   * @param inputs token ids `[B, T]`
   * @param targets next-token ids `[B, T]`; a negative target is ignored
   * @param B sequences
   * @param T tokens per sequence (at most `ctx`)
   * @returns the loss `[1]` on the backend (read it with `backend.read`)
   */
  async forward(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<Tensor> {
    this.#single("forward()");
    this.#checkShape(B, T);
    const V = this.config.vocab;
    checkTokens("inputs", inputs, B * T, V, false);
    checkTokens("targets", targets, B * T, V, true);
    let loss: Tensor | null = null;
    const ch = this.chunk(0, {
      B,
      T,
      batch: () => ({ inputs, targets }),
      onLoss: (_, l) => loss = l,
    });
    await ch.forward(0, null);
    this.#pending = { chunk: ch, step: 0 };
    return loss!;
  }

  /**
   * Add the gradients of the last {@linkcode Gpt.forward}'s loss into the gradients.
   *
   * @param gradScale multiplies the gradient (e.g. 1 / accumulation steps); default 1
   */
  async backward(gradScale = 1): Promise<void> {
    const p = this.#pending;
    if (!p) throw new RangeError("backward() needs a forward() first");
    this.#pending = null;
    p.chunk.gradScale = gradScale;
    await p.chunk.backward(0, null);
  }

  /**
   * The logits of every position, for evaluation (does not disturb a pending backward).
   * With tensor parallelism (every rank of the group calls it) the vocabulary shards are
   * gathered, so each rank gets the full logits.
   *
   * @param inputs token ids `[B, T]`
   * @param B sequences
   * @param T tokens per sequence (at most `ctx`)
   * @param past decoding: positions of every row already in the key/value cache (0 starts)
   * @returns the logits `[B, T, V]` on the backend, valid until the next call
   */
  async logits(inputs: Int32Array, B: number, T: number, past?: number): Promise<Tensor> {
    this.#single("logits()");
    this.#checkShape(B, T);
    checkTokens("inputs", inputs, B * T, this.config.vocab, false);
    let out: Tensor | null = null;
    const ch = this.chunk(0, {
      B,
      T,
      past,
      eval: true,
      batch: () => ({ inputs, targets: null }),
      onLogits: (_, l) => out = l,
    });
    await ch.forward(0, null);
    return await this.fullLogits(out!, B * T);
  }

  /**
   * The full logits `[N, V]` from this rank's vocabulary shard `[N, V/tp]` (gathered over
   * the tensor group; the shard itself with one rank).
   *
   * @param shard this rank's logits
   * @param N rows
   * @returns the full logits on the backend
   */
  async fullLogits(shard: Tensor, N: number): Promise<Tensor> {
    const size = tpSize(this.tp);
    if (size === 1) return shard;
    const V = this.config.vocab;
    const out = this.#buf("logits", N * V, shard.dtype);
    await gatherFromRegion.forward(this.backend, this.tp, out, shard, N, V);
    return out;
  }

  // A reused buffer outside the layers (ids, targets, stage inputs), counted with the
  // activations.
  #buf(name: string, n: number, dtype: TensorDType): Tensor {
    return this.pool.get(0, `model/${name}`, n, dtype);
  }

  /** @internal A tensor of token ids for `slot`, reused. */
  idsTensor(slot: number, data: Int32Array, what: string): Tensor {
    const t = this.#buf(`${what}${slot}`, data.length, "i32");
    this.backend.write(t, data);
    return t;
  }

  /** The activation type's element type on the wire between pipeline stages. */
  get wire(): "float32" | "float16" | "bfloat16" {
    return this.dtype === "f16" ? "float16" : this.dtype === "bf16" ? "bfloat16" : "float32";
  }

  /** @internal Activations or gradients from another stage, as a tensor of the activation type. */
  wireTensor(name: string, data: WireBuffer): Tensor {
    const t = this.#buf(name, data.length, this.dtype);
    this.backend.write(t, data);
    return t;
  }

  /** @internal A tensor's values for another stage, in the activation type. */
  async toWire(t: Tensor): Promise<WireBuffer> {
    const be = this.backend;
    if (this.dtype === "f32") {
      const v = await be.read(t);
      return v instanceof Float32Array ? v : Float32Array.from(v);
    }
    const live = be.hostView(t);
    if (live instanceof Uint16Array) return live.slice();
    const bits = new Uint16Array(t.length);
    roundHalf(this.dtype as "f16" | "bf16", (await be.read(t)) as Float32Array, bits);
    return bits;
  }

  /**
   * Decode: append a next token to each prompt, `maxNew` times (or until `stop`), greedily or
   * sampled (see {@linkcode decode}), with a key/value cache.
   *
   * @param prompts token ids per row (at least one token each)
   * @param maxNew the most tokens to add per row
   * @param opts a stop token, sampling
   * @returns the generated tokens per row (without the prompt)
   */
  generate(
    prompts: readonly (readonly number[])[],
    maxNew: number,
    opts: GenerateOptions = {},
  ): Promise<number[][]> {
    return decode(
      async (ids, B, T, past) => {
        return Float32Array.from(await this.backend.read(await this.logits(ids, B, T, past)));
      },
      this.config,
      prompts,
      maxNew,
      opts,
    );
  }

  /**
   * Copy host values into this rank's parameters by name (e.g. loaded weights).
   *
   * @param values name to values; each must have this rank's size of the parameter
   * @throws {RangeError} for an unknown name or a wrong size
   */
  setParams(values: Map<string, Float32Array> | Record<string, Float32Array>): void {
    const entries = values instanceof Map ? [...values] : Object.entries(values);
    for (const [name, v] of entries) {
      const s = this.layout.get(name);
      if (v.length !== s.size) {
        throw new RangeError(
          `Parameter "${name}" [${s.shape}] has ${s.size} elements, got ${v.length} values`,
        );
      }
      this.store.write(name, v);
    }
  }

  /**
   * Read this rank's parameters back to the host, by name.
   *
   * @returns name to a Float32Array copy, in layout order
   */
  async getParams(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const s of this.layout.slots) out.set(s.name, await this.store.read("params", s.name));
    return out;
  }

  /**
   * Read this rank's gradients back to the host, by name.
   *
   * @returns name to a Float32Array copy, in layout order
   */
  async getGrads(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const s of this.layout.slots) out.set(s.name, await this.store.read("grads", s.name));
    return out;
  }
}

/**
 * Decoding over any logits function (the model's, or a pipeline's): every row gets a next
 * token, `maxNew` times or until it produces `stop`. With a temperature of 0 that token is the
 * most likely one (greedy); above 0 it is drawn from softmax(logits / temperature), among the
 * `topK` most likely if given, by a generator seeded with `seed` (so that every rank draws the
 * same).
 *
 * The rows share one key/value cache: the first pass reads the shortest prompt's length of
 * every row, then each pass feeds every row one token (its next prompt token while it has one,
 * else the token it generated last), so a step costs one token's work. Once a row would pass
 * the model's `ctx`, each step runs the last `ctx` tokens of every row instead (positions then
 * shift, so nothing can be cached).
 *
 * @example Greedy decoding with a toy logits function
 * ```ts
 * import { decode } from "./gpt.ts";
 * // Always predicts token (last + 1) mod 4.
 * const next = (ids: Int32Array, B: number, T: number) => {
 *   const z = new Float32Array(B * T * 4);
 *   for (let i = 0; i < B * T; i++) z[i * 4 + (ids[i]! + 1) % 4] = 1;
 *   return Promise.resolve(z);
 * };
 * console.assert((await decode(next, { vocab: 4, ctx: 8 }, [[0]], 3))[0]!.join() === "1,2,3");
 * ```
 *
 * @param logits full logits `[B, T, V]` of a pass
 * @param config the model's shape
 * @param prompts token ids per row (at least one token each)
 * @param maxNew the most tokens to add per row
 * @param opts a stop token, temperature, top-k and seed
 * @returns the generated tokens per row
 */
export async function decode(
  logits: DecodeLogits,
  config: { vocab: number; ctx: number },
  prompts: readonly (readonly number[])[],
  maxNew: number,
  opts: GenerateOptions = {},
): Promise<number[][]> {
  const B = prompts.length;
  const { vocab: V, ctx } = config;
  if (!Number.isInteger(maxNew) || maxNew < 0) {
    throw new RangeError(`maxNew must be an integer >= 0, got ${maxNew}`);
  }
  const temperature = opts.temperature ?? 0;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new RangeError(`temperature must be a number >= 0, got ${opts.temperature}`);
  }
  const topK = opts.topK ?? V;
  if (!Number.isInteger(topK) || topK < 1) {
    throw new RangeError(`topK must be an integer >= 1, got ${opts.topK}`);
  }
  const rows = prompts.map((p, i) => {
    if (p.length === 0) throw new RangeError(`Prompt ${i} is empty: give at least one token`);
    return [...p];
  });
  const out: number[][] = prompts.map(() => []);
  const done = rows.map(() => maxNew === 0);
  const rng = new Rng(opts.seed ?? 0);
  const pick = (z: Float32Array, base: number) =>
    temperature === 0 ? argmax(z, base, V) : sample(z, base, V, temperature, topK, rng);
  const emit = (b: number, token: number) => {
    rows[b]!.push(token);
    out[b]!.push(token);
    if (out[b]!.length >= maxNew || (opts.stop !== undefined && token === opts.stop)) {
      done[b] = true;
    }
  };
  // Positions of every row in the cache, while the rows fit the model's ctx.
  const first = Math.min(...rows.map((r) => r.length));
  let cached = first <= ctx, fed = 0;
  while (B > 0 && done.includes(false)) {
    if (cached && fed < ctx) {
      // A pass through the cache: the first reads `first` tokens of each row, then one each.
      const T = fed === 0 ? first : 1;
      const ids = new Int32Array(B * T);
      for (let b = 0; b < B; b++) {
        const r = rows[b]!;
        for (let t = 0; t < T; t++) ids[b * T + t] = r[Math.min(fed + t, r.length - 1)]!;
      }
      const z = await logits(ids, B, T, fed);
      fed += T;
      for (let b = 0; b < B; b++) {
        // The row's last token went in: the pass predicts its next one.
        if (!done[b] && rows[b]!.length === fed) emit(b, pick(z, (b * T + T - 1) * V));
      }
      continue;
    }
    cached = false;
    const T = Math.min(ctx, Math.max(...rows.map((r) => r.length)));
    const ids = new Int32Array(B * T);
    for (let b = 0; b < B; b++) ids.set(rows[b]!.slice(-T), b * T);
    const z = await logits(ids, B, T);
    for (let b = 0; b < B; b++) {
      if (!done[b]) emit(b, pick(z, (b * T + Math.min(T, rows[b]!.length) - 1) * V));
    }
  }
  return out;
}

function argmax(z: Float32Array, base: number, V: number): number {
  let best = 0;
  for (let v = 1; v < V; v++) if (z[base + v]! > z[base + best]!) best = v;
  return best;
}

// A token drawn from softmax(z / temperature) over the k most likely.
function sample(
  z: Float32Array,
  base: number,
  V: number,
  temperature: number,
  k: number,
  rng: Rng,
): number {
  let ids = Array.from({ length: V }, (_, v) => v);
  if (k < V) ids = ids.sort((a, b) => z[base + b]! - z[base + a]! || a - b).slice(0, k);
  let max = -Infinity;
  for (const v of ids) max = Math.max(max, z[base + v]!);
  const w = ids.map((v) => Math.exp((z[base + v]! - max) / temperature));
  let u = rng.uniform() * w.reduce((a, b) => a + b, 0);
  for (let i = 0; i < ids.length; i++) {
    u -= w[i]!;
    if (u < 0) return ids[i]!;
  }
  return ids[ids.length - 1]!;
}

/** A chunk of GPT layers run per micro-batch by the pipeline executor. */
export class GptChunk implements PipelineChunk {
  /** The layers, first to last. */
  readonly layers: readonly Layer[];
  /** Most activation slots in use at once (micro-batches between forward and backward). */
  peakSlots = 0;
  /** Multiplies every micro-batch's loss gradient. */
  gradScale: number;
  #m: Gpt;
  #opts: ChunkOptions;
  #first: boolean;
  #last: boolean;
  #chunk: number;
  #steps = new Map<number, Step>();
  #used = new Set<number>(); // activation slots held by micro-batches between forward and backward

  /**
   * Wrap layers as a pipeline chunk (see {@linkcode Gpt.chunk}).
   *
   * @param model the model
   * @param layers the chunk's layers
   * @param part what the chunk holds
   * @param opts shapes, data, gradient scale, dropout and where losses go
   */
  constructor(model: Gpt, layers: readonly Layer[], part: ChunkPart, opts: ChunkOptions) {
    const tp = tpSize(model.tp);
    if (opts.past !== undefined) {
      const { ctx } = model.config;
      if (!opts.eval) throw new RangeError("Decoding with a cache (past) is evaluation only");
      if (!Number.isInteger(opts.past) || opts.past < 0 || opts.past + opts.T > ctx) {
        throw new RangeError(
          `Positions ${opts.past}..${opts.past + opts.T - 1} do not fit the model's ctx ${ctx}`,
        );
      }
    }
    if (model.tp.sequenceParallel && opts.T % tp !== 0) {
      throw new RangeError(
        `Sequence parallelism splits T=${opts.T} across tp=${tp}: T must be a multiple`,
      );
    }
    this.layers = layers;
    this.gradScale = opts.gradScale ?? 1;
    this.#m = model;
    this.#opts = opts;
    this.#first = part.embedding;
    this.#last = part.head;
    this.#chunk = part.virtualStage;
  }

  #step(mb: number): Step {
    let s = this.#steps.get(mb);
    if (s) return s;
    const { B, T } = this.#opts;
    const m = this.#m;
    // The lowest free slot: layers keep activations per slot, so a schedule that holds at most
    // k micro-batches (1F1B: pp - stage) makes them allocate k sets, not m. Evaluation keeps
    // nothing for a backward: it runs in the pool's shared slot.
    let slot = 0;
    if (this.#opts.eval) slot = RECOMPUTE_SLOT;
    else {
      while (this.#used.has(slot)) slot++;
      this.#used.add(slot);
      this.peakSlots = Math.max(this.peakSlots, this.#used.size);
    }
    const d = this.#opts.dropout;
    const dropout: StepDropout | undefined = d && d.p > 0
      ? { p: d.p, key: d.key, seqOffset: (this.#opts.seqOffset ?? 0) + mb * B }
      : undefined;
    const sp = m.tp.sequenceParallel ? tpSize(m.tp) : 1;
    const past = this.#opts.past;
    const base: Step = {
      B,
      T: T / sp,
      slot,
      ...(dropout ? { dropout } : {}),
      ...(past !== undefined ? { cache: { past, capacity: m.config.ctx } } : {}),
    };
    const tg = this.#last ? this.#opts.batch(mb).targets : null;
    if (tg === null) s = base;
    else {
      let count = 0;
      for (const x of tg) if (x >= 0) count++;
      s = { ...base, targets: m.idsTensor(slot, tg, "targets"), count };
    }
    this.#steps.set(mb, s);
    return s;
  }

  async #run(
    i: number,
    phase: "forward" | "backward",
    f: () => Promise<Tensor | null>,
  ): Promise<Tensor | null> {
    const gate = this.#m.gate;
    const layer = this.layers[i]!;
    if (gate) {
      const next = phase === "forward"
        ? this.layers.slice(i + 1)
        : this.layers.slice(0, i).reverse();
      await gate.acquire(layer, phase, next);
    }
    const out = await f();
    if (gate) await gate.release(layer, phase);
    return out;
  }

  /**
   * Forward of micro-batch `mb`.
   *
   * @param mb micro-batch
   * @param input activations from the previous chunk, or `null` on the first
   * @returns activations for the next chunk, or `null` on the last (its loss goes to `onLoss`)
   */
  async forward(mb: number, input: WireBuffer | null): Promise<WireBuffer | null> {
    const step = this.#step(mb);
    const slot = step.slot!;
    let x: Tensor;
    if (this.#first) {
      x = this.#m.idsTensor(slot, this.#opts.batch(mb).inputs, "inputs");
    } else {
      if (input === null) throw new TypeError(`Chunk needs activations for micro-batch ${mb}`);
      // Per chunk and slot: a stage's chunks number their slots alike.
      x = this.#m.wireTensor(`input${this.#chunk}:${slot}`, input);
    }
    for (let i = 0; i < this.layers.length; i++) {
      const layer = this.layers[i]!, inp = x;
      x = (await this.#run(i, "forward", () => layer.forward(inp, step)))!;
    }
    if (this.#opts.eval) this.#release(mb);
    if (this.#last) {
      if (step.targets) this.#opts.onLoss?.(mb, x);
      else this.#opts.onLogits?.(mb, x);
      return null;
    }
    return await this.#m.toWire(x);
  }

  #release(mb: number): void {
    const s = this.#steps.get(mb);
    if (!s) return;
    this.#steps.delete(mb);
    this.#used.delete(s.slot!);
  }

  /**
   * Backward of micro-batch `mb`.
   *
   * @param mb micro-batch
   * @param dOutput gradient of this chunk's output, or `null` on the last
   * @returns gradient of its input, or `null` on the first
   */
  async backward(mb: number, dOutput: WireBuffer | null): Promise<WireBuffer | null> {
    const s = this.#steps.get(mb);
    if (!s) throw new RangeError(`Backward of micro-batch ${mb} before its forward`);
    const step: Step = this.gradScale === 1 ? s : { ...s, gradScale: this.gradScale };
    let dy: Tensor | null = null;
    if (!this.#last) {
      if (dOutput === null) throw new TypeError(`Chunk needs a gradient for micro-batch ${mb}`);
      dy = this.#m.wireTensor(`dy${this.#chunk}`, dOutput);
    }
    for (let i = this.layers.length - 1; i >= 0; i--) {
      const layer = this.layers[i]!, d = dy;
      dy = await this.#run(i, "backward", () => layer.backward(d, step));
    }
    this.#release(mb);
    if (this.#first || dy === null) return null;
    return await this.#m.toWire(dy);
  }
}
