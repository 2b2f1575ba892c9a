/**
 * A GPT (GPT-2 architecture) on one rank: token and position embeddings, pre-LN blocks of
 * causal self-attention and a GELU MLP, a final layernorm and a tied or untied head, over one
 * flat parameter buffer and one flat gradient buffer.
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import { buildLayout, type FlatLayout, type LayoutOptions, type ParamSpec } from "../optim/mod.ts";
import { Arena, RECOMPUTE_SLOT } from "./_arena.ts";
import { ActivationPool, Block, Embedding, Head, type Layer, type Step } from "./blocks.ts";
import {
  type GptConfig,
  gptParamSpecs,
  type ResolvedGptConfig,
  resolveGptConfig,
} from "./config.ts";
import { initialValue } from "./init.ts";
import { FlatParams } from "./params.ts";

/** Options of {@linkcode Gpt}. */
export interface GptOptions {
  /** Initialise the parameters from this seed (default 0); `null` leaves them zero. */
  seed?: number | null;
  /** Layout alignment and padding (e.g. `padTo` the data-parallel size). */
  layout?: LayoutOptions;
  /**
   * Adopt this parameter buffer (`layout.size` elements, e.g. shared with other Workers)
   * instead of allocating one; pass `seed: null` to keep its contents.
   */
  params?: Tensor;
  /** Adopt this gradient buffer (`layout.size` elements) instead of allocating one. */
  grads?: Tensor;
  /** Activation checkpointing of every block: recompute its activations in backward. */
  checkpoint?: boolean;
  /**
   * Called around every layer's forward and backward, e.g. to gather a layer's parameters
   * before it runs and release them after (ZeRO stage 3), or to start reducing a layer's
   * gradients as soon as its backward is done.
   */
  gate?: LayerGate;
}

/**
 * Hooks around each layer's forward and backward (see {@linkcode GptOptions.gate}). A layer
 * is passed as what it declares, its parameter specs, so an implementation (a ZeRO-3
 * optimizer) needs nothing from `models/`.
 */
export interface LayerGate {
  /**
   * Before `layer` runs `phase`; `layer.specs` names its parameters.
   *
   * @param layer the layer about to run
   * @param phase which pass
   */
  acquire(
    layer: { readonly specs: readonly ParamSpec[] },
    phase: "forward" | "backward",
  ): void | Promise<void>;
  /**
   * After `layer` has run `phase` (its gradients are complete after its last backward).
   *
   * @param layer the layer that ran
   * @param phase which pass
   */
  release(
    layer: { readonly specs: readonly ParamSpec[] },
    phase: "forward" | "backward",
  ): void | Promise<void>;
}

/** Options of {@linkcode Gpt.generate}. */
export interface GenerateOptions {
  /** A row stops after producing this token (it is kept in the output). */
  stop?: number;
}

const TRAIN_SLOT = 0;
// Evaluation keeps nothing for a backward, so it runs in the transient slot that the blocks
// share through the pool: its activations cost one block's worth, not one per block.
const EVAL_SLOT = RECOMPUTE_SLOT;

function checkTokens(what: string, a: Int32Array, n: number, V: number, allowNegative: boolean) {
  if (!(a instanceof Int32Array)) throw new TypeError(`${what} must be an Int32Array`);
  if (a.length !== n) {
    throw new RangeError(`${what} has ${a.length} tokens but B * T = ${n}`);
  }
  let count = 0;
  for (let i = 0; i < n; i++) {
    const t = a[i];
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
 * A GPT whose layers are `[Embedding, Block x layers, Head]`.
 *
 * @example Train step on the reference backend
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
  /** The parameter and gradient buffers (GPT-2 names). */
  readonly store: FlatParams;
  /** The layers, first to last: embedding, blocks, head. */
  readonly layers: readonly Layer[];
  #arena: Arena;
  #step: Step | null = null;
  #gate: LayerGate | null;

  /**
   * Build the model and its buffers.
   *
   * @param backend the backend
   * @param config the model's shape
   * @param opts seed, layout, buffers to adopt, checkpointing, a layer gate
   */
  constructor(backend: Backend, config: GptConfig, opts: GptOptions = {}) {
    const c = resolveGptConfig(config);
    this.backend = backend;
    this.config = c;
    this.store = new FlatParams(backend, buildLayout(gptParamSpecs(c), opts.layout), {
      params: opts.params,
      grads: opts.grads,
    });
    const pool = new ActivationPool(backend);
    const checkpoint = opts.checkpoint ?? false;
    const layers: Layer[] = [new Embedding(backend, this.store, c.vocab, c.ctx, c.dim)];
    for (let i = 0; i < c.layers; i++) {
      layers.push(
        Block.create(backend, this.store, i, c.dim, c.heads, c.hidden, c.lnEps, {
          pool,
          checkpoint,
        }),
      );
    }
    layers.push(new Head(backend, this.store, c.vocab, c.dim, c.tied, c.lnEps, { pool }));
    this.layers = layers;
    this.#arena = new Arena(backend);
    this.#gate = opts.gate ?? null;
    const seed = opts.seed === undefined ? 0 : opts.seed;
    if (seed !== null) this.initialize(seed);
  }

  /** The flat layout of parameters and gradients. */
  get layout(): FlatLayout {
    return this.store.layout;
  }

  /** The number of parameters (without padding). */
  get numParams(): number {
    return this.store.layout.numParams;
  }

  /**
   * Set every parameter to its deterministic initial value (GPT-2 style) for `seed`.
   *
   * @param seed the seed
   */
  initialize(seed: number): void {
    for (const s of this.layout.slots) {
      this.backend.write(this.store.params, initialValue(s, this.config.layers, seed), s.offset);
    }
  }

  /** Set every gradient to zero. */
  zeroGrad(): void {
    this.store.zeroGrad();
  }

  async #run(ids: Int32Array, B: number, T: number, step: Step): Promise<Tensor> {
    const slot = step.slot!;
    const idT = this.#arena.get(slot, "ids", B * T, "i32");
    this.backend.write(idT, ids);
    let x = idT;
    const gate = this.#gate;
    for (const layer of this.layers) {
      if (gate) await gate.acquire(layer, "forward");
      x = await layer.forward(x, step);
      if (gate) await gate.release(layer, "forward");
    }
    return x;
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

  /**
   * Run the model on a batch and compute the mean cross-entropy over the targets >= 0.
   *
   * @param inputs token ids `[B, T]`
   * @param targets next-token ids `[B, T]`; a negative target is ignored
   * @param B sequences
   * @param T tokens per sequence (at most `ctx`)
   * @returns the loss `[1]` on the backend (read it with `backend.read`)
   */
  async forward(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<Tensor> {
    this.#checkShape(B, T);
    const V = this.config.vocab;
    checkTokens("inputs", inputs, B * T, V, false);
    const count = checkTokens("targets", targets, B * T, V, true);
    const tgt = this.#arena.get(TRAIN_SLOT, "targets", B * T, "i32");
    this.backend.write(tgt, targets);
    const step: Step = { B, T, slot: TRAIN_SLOT, targets: tgt, count };
    this.#step = step;
    return await this.#run(inputs, B, T, step);
  }

  /**
   * Add the gradients of the last {@linkcode Gpt.forward}'s loss into the gradient buffer.
   *
   * @param gradScale multiplies the gradient (e.g. 1 / accumulation steps); default 1
   */
  async backward(gradScale = 1): Promise<void> {
    const s = this.#step;
    if (!s) throw new RangeError("backward() needs a forward() first");
    const step: Step = gradScale === (s.gradScale ?? 1) ? s : { ...s, gradScale };
    let dy: Tensor | null = null;
    for (let i = this.layers.length - 1; i >= 0; i--) {
      const layer = this.layers[i];
      if (this.#gate) await this.#gate.acquire(layer, "backward");
      dy = await layer.backward(dy, step);
      if (this.#gate) await this.#gate.release(layer, "backward");
    }
  }

  /**
   * The logits of every position, for evaluation (does not disturb a pending backward).
   *
   * @param inputs token ids `[B, T]`
   * @param B sequences
   * @param T tokens per sequence (at most `ctx`)
   * @returns the logits `[B, T, V]` on the backend, valid until the next call
   */
  async logits(inputs: Int32Array, B: number, T: number): Promise<Tensor> {
    this.#checkShape(B, T);
    checkTokens("inputs", inputs, B * T, this.config.vocab, false);
    return await this.#run(inputs, B, T, { B, T, slot: EVAL_SLOT });
  }

  /**
   * Greedy decoding: append the most likely next token to each prompt, `maxNew` times (or
   * until `stop`). Each step feeds the last `ctx` tokens of every row.
   *
   * @param prompts token ids per row (at least one token each)
   * @param maxNew the most tokens to add per row
   * @param opts a stop token
   * @returns the generated tokens per row (without the prompt)
   */
  async generate(
    prompts: readonly (readonly number[])[],
    maxNew: number,
    opts: GenerateOptions = {},
  ): Promise<number[][]> {
    const B = prompts.length;
    const V = this.config.vocab;
    const ctx = this.config.ctx;
    if (!Number.isInteger(maxNew) || maxNew < 0) {
      throw new RangeError(`maxNew must be an integer >= 0, got ${maxNew}`);
    }
    const rows = prompts.map((p, i) => {
      if (p.length === 0) throw new RangeError(`Prompt ${i} is empty: give at least one token`);
      return [...p];
    });
    const out: number[][] = prompts.map(() => []);
    const done = new Array<boolean>(B).fill(false);
    for (let k = 0; k < maxNew && B > 0 && done.includes(false); k++) {
      const T = Math.min(ctx, Math.max(...rows.map((r) => r.length)));
      const ids = new Int32Array(B * T);
      for (let b = 0; b < B; b++) {
        const w = rows[b].slice(-T);
        ids.set(w, b * T);
      }
      const logits = await this.backend.read(await this.logits(ids, B, T));
      for (let b = 0; b < B; b++) {
        if (done[b]) continue;
        const pos = Math.min(T, rows[b].length) - 1;
        const base = (b * T + pos) * V;
        let best = 0;
        for (let v = 1; v < V; v++) if (logits[base + v] > logits[base + best]) best = v;
        rows[b].push(best);
        out[b].push(best);
        if (opts.stop !== undefined && best === opts.stop) done[b] = true;
      }
    }
    return out;
  }

  /**
   * Copy host values into parameters by name (e.g. loaded GPT-2 weights).
   *
   * @param values name to values; each must have the parameter's size
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
      this.backend.write(this.store.params, v, s.offset);
    }
  }

  /**
   * Read every parameter back to the host, by name.
   *
   * @returns name to a Float32Array copy, in layout order
   */
  async getParams(): Promise<Map<string, Float32Array>> {
    return this.#split(await this.backend.read(this.store.params));
  }

  /**
   * Read every gradient back to the host, by name.
   *
   * @returns name to a Float32Array copy, in layout order
   */
  async getGrads(): Promise<Map<string, Float32Array>> {
    return this.#split(await this.backend.read(this.store.grads));
  }

  #split(flat: ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> }) {
    const m = new Map<string, Float32Array>();
    for (const s of this.layout.slots) {
      m.set(s.name, Float32Array.from(flat.subarray(s.offset, s.offset + s.size)));
    }
    return m;
  }
}
