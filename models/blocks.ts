/**
 * The layers a GPT is built from, each with an explicit `forward` that keeps what its
 * `backward` needs and a `backward` that takes dY, adds into the layer's gradient views and
 * returns dX. A model is a list of layers (embedding, blocks, head); a pipeline stage is a
 * slice of that list, and tensor-parallel versions of the linears, attention, MLP, embedding
 * and head can stand in for these, since a {@linkcode Block} is assembled from parts.
 *
 * Activations are kept per `slot` (one per micro-batch in flight; slot 0 is enough without
 * pipelining) in buffers allocated once per shape and reused. A tensor returned by
 * `forward` stays valid until the next `forward` of that layer on the same slot; a tensor
 * returned by `backward` until the next `backward` of that layer (any slot), or of any layer
 * sharing its {@linkcode ActivationPool}. A layer keeps a reference to its input, so the
 * caller must keep the input unchanged until `backward`. Slots are integers in [0, 1023].
 *
 * Linear weights are stored `[in, out]` (GPT-2's Conv1D layout): `y = x W + b`.
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, Buffers, checkSlot, GRAD_SLOT, RECOMPUTE_SLOT, roleOf } from "./_arena.ts";
import type { ParamStore } from "./params.ts";

/** What a layer is told about the pass it takes part in. */
export interface Step {
  /** Sequences in the (micro-)batch. */
  readonly B: number;
  /** Tokens per sequence. */
  readonly T: number;
  /** Which saved-activation set to use (a micro-batch in flight); default 0. */
  readonly slot?: number;
  /** Targets `[B*T]` (i32, negative = ignored), for the head's forward and backward. */
  readonly targets?: Tensor;
  /** How many targets are >= 0 (the loss is their mean); needed with `targets`. */
  readonly count?: number;
  /** Multiplies the loss gradient (gradient accumulation, loss scaling); default 1. */
  readonly gradScale?: number;
}

/** A layer with an explicit forward and backward. */
export interface Layer {
  /** The parameters this layer reads (a tied weight appears in each layer that uses it). */
  readonly specs: readonly ParamSpec[];
  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input (token ids for an embedding)
   * @param step the shape and slot of the pass
   * @returns the output (the loss `[1]` for a head given targets)
   */
  forward(x: Tensor, step: Step): Promise<Tensor>;
  /**
   * Add this layer's parameter gradients into the gradient views and return dX.
   *
   * @param dy the gradient of the output (ignored by a head, which starts from the loss)
   * @param step the same shape and slot as the matching forward
   * @returns the gradient of the input, or `null` when the input is token ids
   */
  backward(dy: Tensor | null, step: Step): Promise<Tensor | null>;
}

/** A normalisation layer whose backward can add into a caller's buffer (residual streams). */
export interface NormLayer extends Layer {
  /**
   * Add the gradient of the input into `dx` (instead of returning a new one).
   *
   * @param dx the buffer to add into, `[B*T, C]`
   * @param dy the gradient of the output
   * @param step the same shape and slot as the matching forward
   */
  backwardAdd(dx: Tensor, dy: Tensor, step: Step): Promise<void>;
}

/**
 * Memory that the blocks of one model share for what is transient: backward scratch (the
 * gradient a layer hands down, consumed before the next layer's backward) and the activations
 * of checkpointed blocks. Block i and block j then use the same buffers for the same role,
 * so that scratch costs one block's worth instead of one per block. A tensor returned by a
 * pooled layer's `backward` is then valid until the next `backward` of any layer of the pool.
 */
export class ActivationPool {
  #buffers: Buffers;

  /**
   * Create an empty pool.
   *
   * @param backend the backend that allocates the buffers
   */
  constructor(backend: Backend) {
    this.#buffers = new Buffers(backend);
  }

  /**
   * A buffer of exactly `length` elements for (slot, name), allocated once.
   *
   * @param slot the slot
   * @param name the buffer's name (role and purpose)
   * @param length elements
   * @param dtype element type
   * @returns the buffer
   */
  get(slot: number, name: string, length: number, dtype: "f32" | "i32" = "f32"): Tensor {
    return this.#buffers.get(slot, name, length, dtype);
  }
}

/** Options every built-in layer takes. */
export interface LayerOptions {
  /** Share transient buffers with the model's other blocks (see {@linkcode ActivationPool}). */
  pool?: ActivationPool;
}

function slotOf(step: Step): number {
  const s = step.slot ?? 0;
  checkSlot(s);
  return s;
}

function saved(list: (Tensor | undefined)[], slot: number, what: string): Tensor {
  const t = list[slot];
  if (!t) throw new RangeError(`${what}: backward on slot ${slot} before any forward on it`);
  return t;
}

/** Options of {@linkcode Linear}. */
export interface LinearOptions extends LayerOptions {
  /** Whether the layer has a bias `${name}.bias`; default true. */
  bias?: boolean;
}

/** `y[N, out] = x[N, in] W[in, out] + b[out]`, parameters `${name}.weight` and `${name}.bias`. */
export class Linear implements Layer {
  /** The parameters. */
  readonly specs: readonly ParamSpec[];
  #be: Backend;
  #w: Tensor;
  #dw: Tensor;
  #b: Tensor | null;
  #db: Tensor | null;
  #in: number;
  #out: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param name the parameter prefix, e.g. `"h.0.attn.c_attn"`
   * @param inDim input features
   * @param outDim output features
   * @param opts whether there is a bias; a pool to share scratch in
   */
  constructor(
    backend: Backend,
    store: ParamStore,
    name: string,
    inDim: number,
    outDim: number,
    opts: LinearOptions = {},
  ) {
    const bias = opts.bias ?? true;
    this.specs = [
      { name: `${name}.weight`, shape: [inDim, outDim] },
      ...(bias ? [{ name: `${name}.bias`, shape: [outDim] }] : []),
    ];
    this.#be = backend;
    this.#in = inDim;
    this.#out = outDim;
    this.#w = store.value(`${name}.weight`);
    this.#dw = store.grad(`${name}.weight`);
    this.#b = bias ? store.value(`${name}.bias`) : null;
    this.#db = bias ? store.grad(`${name}.bias`) : null;
    this.#arena = new Arena(backend, opts.pool, roleOf(name));
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const N = step.B * step.T;
    const y = this.#arena.get(slot, "y", N * this.#out);
    this.#be.matmul(y, x, this.#w, this.#b, N, this.#out, this.#in);
    this.#x[slot] = x;
    return Promise.resolve(y);
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const x = saved(this.#x, slot, "Linear");
    if (!dy) throw new TypeError("Linear.backward needs dy");
    const N = step.B * step.T;
    const be = this.#be;
    const dx = this.#arena.get(GRAD_SLOT, "dx", N * this.#in);
    be.matmul(dx, dy, this.#w, null, N, this.#in, this.#out, { transB: true });
    be.matmul(this.#dw, x, dy, null, this.#in, this.#out, N, { transA: true, accumulate: true });
    if (this.#db) be.sumRows(this.#db, dy, N, this.#out, true);
    return Promise.resolve(dx);
  }
}

/** Layer normalisation over the last axis, parameters `${name}.weight` and `${name}.bias`. */
export class LayerNorm implements NormLayer {
  /** The parameters. */
  readonly specs: readonly ParamSpec[];
  #be: Backend;
  #w: Tensor;
  #b: Tensor;
  #dw: Tensor;
  #db: Tensor;
  #C: number;
  #eps: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param name the parameter prefix, e.g. `"h.0.ln_1"`
   * @param dim the normalised size C
   * @param eps the variance epsilon, default 1e-5
   * @param opts a pool to share scratch in
   */
  constructor(
    backend: Backend,
    store: ParamStore,
    name: string,
    dim: number,
    eps = 1e-5,
    opts: LayerOptions = {},
  ) {
    this.specs = [
      { name: `${name}.weight`, shape: [dim] },
      { name: `${name}.bias`, shape: [dim] },
    ];
    this.#be = backend;
    this.#C = dim;
    this.#eps = eps;
    this.#w = store.value(`${name}.weight`);
    this.#b = store.value(`${name}.bias`);
    this.#dw = store.grad(`${name}.weight`);
    this.#db = store.grad(`${name}.bias`);
    this.#arena = new Arena(backend, opts.pool, roleOf(name));
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const N = step.B * step.T;
    const a = this.#arena;
    const y = a.get(slot, "y", N * this.#C);
    this.#be.layernormForward(
      y,
      a.get(slot, "mean", N),
      a.get(slot, "rstd", N),
      x,
      this.#w,
      this.#b,
      N,
      this.#C,
      this.#eps,
    );
    this.#x[slot] = x;
    return Promise.resolve(y);
  }

  /** Add the input gradient into `dx` (see {@linkcode NormLayer.backwardAdd}). */
  backwardAdd(dx: Tensor, dy: Tensor, step: Step): Promise<void> {
    const slot = slotOf(step);
    const x = saved(this.#x, slot, "LayerNorm");
    const N = step.B * step.T;
    const a = this.#arena;
    this.#be.layernormBackward(
      dx,
      this.#dw,
      this.#db,
      dy,
      x,
      this.#w,
      a.get(slot, "mean", N),
      a.get(slot, "rstd", N),
      N,
      this.#C,
    );
    return Promise.resolve();
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    if (!dy) throw new TypeError("LayerNorm.backward needs dy");
    const dx = this.#arena.get(GRAD_SLOT, "dx", step.B * step.T * this.#C);
    this.#be.fill(dx, 0);
    await this.backwardAdd(dx, dy, step);
    return dx;
  }
}

/**
 * Causal multi-head self-attention: `cProj(attention(cAttn(x)))`, where `cAttn` maps C to
 * q | k | v (3 * `dim`) and `cProj` maps `dim` back to C. `dim` and `heads` are this layer's
 * share (all of them serially; a tensor-parallel rank's slice otherwise).
 */
export class CausalSelfAttention implements Layer {
  /** The parameters of both projections. */
  readonly specs: readonly ParamSpec[];
  /** The input projection to q | k | v. */
  readonly cAttn: Layer;
  /** The output projection. */
  readonly cProj: Layer;
  #be: Backend;
  #C: number;
  #H: number;
  #arena: Arena;
  #qkv: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param cAttn the q | k | v projection, output `[B*T, 3*dim]`
   * @param cProj the output projection, input `[B*T, dim]`
   * @param dim the attention width (heads * head size) this layer computes
   * @param heads the number of heads this layer computes
   * @param opts a pool to share scratch in, and this layer's role in it (default `"attn"`)
   */
  constructor(
    backend: Backend,
    cAttn: Layer,
    cProj: Layer,
    dim: number,
    heads: number,
    opts: LayerOptions & { role?: string } = {},
  ) {
    if (!Number.isInteger(heads) || heads < 1 || dim % heads !== 0) {
      throw new RangeError(`Attention width ${dim} must be a multiple of heads (${heads})`);
    }
    this.#be = backend;
    this.cAttn = cAttn;
    this.cProj = cProj;
    this.#C = dim;
    this.#H = heads;
    this.specs = [...cAttn.specs, ...cProj.specs];
    this.#arena = new Arena(backend, opts.pool, opts.role ?? "attn");
  }

  /**
   * The serial layer with GPT-2's parameters `${name}.c_attn.*` and `${name}.c_proj.*`.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param name the prefix, e.g. `"h.0.attn"`
   * @param dim the model width C
   * @param heads the number of heads
   * @param opts a pool to share scratch in
   * @returns the layer
   */
  static create(
    backend: Backend,
    store: ParamStore,
    name: string,
    dim: number,
    heads: number,
    opts: LayerOptions = {},
  ): CausalSelfAttention {
    return new CausalSelfAttention(
      backend,
      new Linear(backend, store, `${name}.c_attn`, dim, 3 * dim, opts),
      new Linear(backend, store, `${name}.c_proj`, dim, dim, opts),
      dim,
      heads,
      { pool: opts.pool, role: roleOf(name) },
    );
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const { B, T } = step;
    const qkv = await this.cAttn.forward(x, step);
    const y = this.#arena.get(slot, "y", B * T * this.#C);
    const att = this.#arena.get(slot, "att", B * this.#H * T * T);
    this.#be.attentionForward(y, att, qkv, B, T, this.#C, this.#H);
    this.#qkv[slot] = qkv;
    return await this.cProj.forward(y, step);
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor | null> {
    const slot = slotOf(step);
    const qkv = saved(this.#qkv, slot, "CausalSelfAttention");
    const { B, T } = step;
    const dyAtt = await this.cProj.backward(dy, step);
    const dqkv = this.#arena.get(GRAD_SLOT, "dqkv", B * T * 3 * this.#C);
    this.#be.fill(dqkv, 0);
    const att = this.#arena.get(slot, "att", B * this.#H * T * T);
    this.#be.attentionBackward(dqkv, dyAtt!, qkv, att, B, T, this.#C, this.#H);
    return await this.cAttn.backward(dqkv, step);
  }
}

/** The GELU MLP: `cProj(gelu(cFc(x)))`; `hidden` is this layer's share of the hidden width. */
export class Mlp implements Layer {
  /** The parameters of both projections. */
  readonly specs: readonly ParamSpec[];
  /** The expansion C -> hidden. */
  readonly cFc: Layer;
  /** The projection hidden -> C. */
  readonly cProj: Layer;
  #be: Backend;
  #hidden: number;
  #arena: Arena;
  #h: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param cFc the expansion, output `[B*T, hidden]`
   * @param cProj the projection, input `[B*T, hidden]`
   * @param hidden the hidden width this layer computes
   * @param opts a pool to share scratch in, and this layer's role in it (default `"mlp"`)
   */
  constructor(
    backend: Backend,
    cFc: Layer,
    cProj: Layer,
    hidden: number,
    opts: LayerOptions & { role?: string } = {},
  ) {
    this.#be = backend;
    this.cFc = cFc;
    this.cProj = cProj;
    this.#hidden = hidden;
    this.specs = [...cFc.specs, ...cProj.specs];
    this.#arena = new Arena(backend, opts.pool, opts.role ?? "mlp");
  }

  /**
   * The serial layer with GPT-2's parameters `${name}.c_fc.*` and `${name}.c_proj.*`.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param name the prefix, e.g. `"h.0.mlp"`
   * @param dim the model width C
   * @param hidden the hidden width (GPT-2: 4C)
   * @param opts a pool to share scratch in
   * @returns the layer
   */
  static create(
    backend: Backend,
    store: ParamStore,
    name: string,
    dim: number,
    hidden: number,
    opts: LayerOptions = {},
  ): Mlp {
    return new Mlp(
      backend,
      new Linear(backend, store, `${name}.c_fc`, dim, hidden, opts),
      new Linear(backend, store, `${name}.c_proj`, hidden, dim, opts),
      hidden,
      { pool: opts.pool, role: roleOf(name) },
    );
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const n = step.B * step.T * this.#hidden;
    const h = await this.cFc.forward(x, step);
    const g = this.#arena.get(slot, "g", n);
    this.#be.geluForward(g, h, n);
    this.#h[slot] = h;
    return await this.cProj.forward(g, step);
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor | null> {
    const slot = slotOf(step);
    const h = saved(this.#h, slot, "Mlp");
    const n = step.B * step.T * this.#hidden;
    const dg = await this.cProj.backward(dy, step);
    const dh = this.#arena.get(GRAD_SLOT, "dh", n);
    this.#be.fill(dh, 0);
    this.#be.geluBackward(dh, h, dg!, n);
    return await this.cFc.backward(dh, step);
  }
}

/** The parts of a pre-LN transformer block. */
export interface BlockParts {
  /** Normalisation before attention. */
  ln1: NormLayer;
  /** Attention (returns `[B*T, C]`, fully reduced). */
  attn: Layer;
  /** Normalisation before the MLP. */
  ln2: NormLayer;
  /** The MLP (returns `[B*T, C]`, fully reduced). */
  mlp: Layer;
}

/** Options of {@linkcode Block}. */
export interface BlockOptions extends LayerOptions {
  /**
   * Activation checkpointing: keep only the block's input and output per slot, and recompute
   * its inner activations (in the pool, when given) right before its backward.
   */
  checkpoint?: boolean;
}

/** A pre-LN transformer block: `r = x + attn(ln1(x))`, `y = r + mlp(ln2(r))`. */
export class Block implements Layer {
  /** The parameters of every part. */
  readonly specs: readonly ParamSpec[];
  /** The parts. */
  readonly parts: BlockParts;
  /** Whether the block recomputes its activations in backward. */
  readonly checkpoint: boolean;
  #be: Backend;
  #C: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Create the block.
   *
   * @param backend the backend
   * @param parts the normalisations, attention and MLP
   * @param dim the model width C
   * @param opts a pool to share scratch in; activation checkpointing
   */
  constructor(backend: Backend, parts: BlockParts, dim: number, opts: BlockOptions = {}) {
    this.#be = backend;
    this.parts = parts;
    this.#C = dim;
    this.checkpoint = opts.checkpoint ?? false;
    this.specs = [...parts.ln1.specs, ...parts.attn.specs, ...parts.ln2.specs, ...parts.mlp.specs];
    this.#arena = new Arena(backend, opts.pool, "block");
  }

  /**
   * GPT-2's block `h.${index}` with serial parts.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param index the layer index
   * @param dim the model width C
   * @param heads the number of heads
   * @param hidden the MLP width
   * @param eps the layernorm epsilon
   * @param opts a pool to share scratch in; activation checkpointing
   * @returns the block
   */
  static create(
    backend: Backend,
    store: ParamStore,
    index: number,
    dim: number,
    heads: number,
    hidden: number,
    eps = 1e-5,
    opts: BlockOptions = {},
  ): Block {
    const p = `h.${index}`;
    const o: LayerOptions = { pool: opts.pool };
    return new Block(
      backend,
      {
        ln1: new LayerNorm(backend, store, `${p}.ln_1`, dim, eps, o),
        attn: CausalSelfAttention.create(backend, store, `${p}.attn`, dim, heads, o),
        ln2: new LayerNorm(backend, store, `${p}.ln_2`, dim, eps, o),
        mlp: Mlp.create(backend, store, `${p}.mlp`, dim, hidden, o),
      },
      dim,
      opts,
    );
  }

  async #forward(x: Tensor, step: Step, slot: number): Promise<Tensor> {
    const n = step.B * step.T * this.#C;
    const { ln1, attn, ln2, mlp } = this.parts;
    const a = await attn.forward(await ln1.forward(x, step), step);
    const r = this.#arena.get(slot, "r", n);
    this.#be.add(r, x, a, n);
    const m = await mlp.forward(await ln2.forward(r, step), step);
    const y = this.#arena.get(slot, "y", n);
    this.#be.add(y, r, m, n);
    return y;
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    if (!this.checkpoint) return await this.#forward(x, step, slot);
    const y = await this.#forward(x, { ...step, slot: RECOMPUTE_SLOT }, RECOMPUTE_SLOT);
    const out = this.#arena.get(slot, "out", y.length);
    this.#be.copy(out, y);
    this.#x[slot] = x;
    return out;
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    if (!dy) throw new TypeError("Block.backward needs dy");
    if (this.checkpoint) {
      const x = saved(this.#x, slotOf(step), "Block");
      step = { ...step, slot: RECOMPUTE_SLOT };
      await this.#forward(x, step, RECOMPUTE_SLOT);
    }
    const n = step.B * step.T * this.#C;
    const { ln1, attn, ln2, mlp } = this.parts;
    // dr carries the residual stream's gradient; it becomes dx once ln1 has added into it.
    // With a pool, dy may be the dr of the block above: the same buffer.
    const dr = this.#arena.get(GRAD_SLOT, "dr", n);
    if (dr !== dy) this.#be.copy(dr, dy);
    await ln2.backwardAdd(dr, (await mlp.backward(dr, step))!, step);
    await ln1.backwardAdd(dr, (await attn.backward(dr, step))!, step);
    return dr;
  }
}

/**
 * Token plus position embedding: `x[b, t] = wte[ids[b, t]] + wpe[t]`. The input is the token
 * ids `[B*T]` (i32); backward returns `null`.
 */
export class Embedding implements Layer {
  /** `wte` `[V, C]` and `wpe` `[ctx, C]`. */
  readonly specs: readonly ParamSpec[];
  #be: Backend;
  #wte: Tensor;
  #dwte: Tensor;
  #wpe: Tensor;
  #dwpe: Tensor;
  #C: number;
  #ctx: number;
  #arena: Arena;
  #ids: (Tensor | undefined)[] = [];
  #rows = new Map<number, [Tensor, Tensor]>();

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param store where `wte` and `wpe` live
   * @param vocab the vocabulary size V
   * @param ctx the longest sequence
   * @param dim the model width C
   */
  constructor(backend: Backend, store: ParamStore, vocab: number, ctx: number, dim: number) {
    this.specs = [{ name: "wte", shape: [vocab, dim] }, { name: "wpe", shape: [ctx, dim] }];
    this.#be = backend;
    this.#C = dim;
    this.#ctx = ctx;
    this.#wte = store.value("wte");
    this.#dwte = store.grad("wte");
    this.#wpe = store.value("wpe");
    this.#dwpe = store.grad("wpe");
    this.#arena = new Arena(backend);
  }

  #positions(T: number): [Tensor, Tensor] {
    let r = this.#rows.get(T);
    if (!r) {
      if (T > this.#ctx) {
        throw new RangeError(`Sequence length ${T} exceeds the context ${this.#ctx}`);
      }
      r = [this.#be.view(this.#wpe, 0, T * this.#C), this.#be.view(this.#dwpe, 0, T * this.#C)];
      this.#rows.set(T, r);
    }
    return r;
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  forward(ids: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const { B, T } = step;
    const C = this.#C;
    const x = this.#arena.get(slot, "x", B * T * C);
    this.#be.embeddingForward(x, ids, this.#wte, B * T, C);
    this.#be.addRows(x, this.#positions(T)[0], B, T * C);
    this.#ids[slot] = ids;
    return Promise.resolve(x);
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  backward(dy: Tensor | null, step: Step): Promise<null> {
    const slot = slotOf(step);
    const ids = saved(this.#ids, slot, "Embedding");
    if (!dy) throw new TypeError("Embedding.backward needs dy");
    const { B, T } = step;
    this.#be.embeddingBackward(this.#dwte, dy, ids, B * T, this.#C);
    this.#be.sumRows(this.#positions(T)[1], dy, B, T * this.#C, true);
    return Promise.resolve(null);
  }
}

/**
 * The final layernorm `ln_f`, the output head `logits = ln_f(x) W^T` (W = `wte` when tied,
 * else `lm_head.weight`, both `[V, C]`) and the mean softmax cross-entropy over the targets
 * >= 0. Forward returns the loss `[1]` when the step has targets, the logits `[B*T, V]`
 * otherwise. Backward starts from the loss (scaled by `step.gradScale`) and returns dX; it
 * overwrites the logits buffer of the slot.
 */
export class Head implements Layer {
  /** `ln_f.*` and the output weight. */
  readonly specs: readonly ParamSpec[];
  /** The final layernorm. */
  readonly lnf: NormLayer;
  #be: Backend;
  #w: Tensor;
  #dw: Tensor;
  #V: number;
  #C: number;
  #arena: Arena;
  #h: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param backend the backend
   * @param store where the parameters live
   * @param vocab the vocabulary size V
   * @param dim the model width C
   * @param tied whether the head reuses `wte` (else `lm_head.weight`)
   * @param eps the layernorm epsilon
   * @param opts a pool to share scratch in
   */
  constructor(
    backend: Backend,
    store: ParamStore,
    vocab: number,
    dim: number,
    tied = true,
    eps = 1e-5,
    opts: LayerOptions = {},
  ) {
    const wName = tied ? "wte" : "lm_head.weight";
    this.lnf = new LayerNorm(backend, store, "ln_f", dim, eps, opts);
    this.specs = [...this.lnf.specs, { name: wName, shape: [vocab, dim] }];
    this.#be = backend;
    this.#V = vocab;
    this.#C = dim;
    this.#w = store.value(wName);
    this.#dw = store.grad(wName);
    this.#arena = new Arena(backend, opts.pool, "head");
  }

  /** Run the layer forward, keeping what backward needs (see {@linkcode Layer.forward}). */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const N = step.B * step.T;
    const V = this.#V;
    const h = await this.lnf.forward(x, step);
    this.#h[slot] = h;
    const logits = this.#arena.get(slot, "logits", N * V);
    const be = this.#be;
    be.matmul(logits, h, this.#w, null, N, V, this.#C, { transB: true });
    if (!step.targets) return logits;
    const losses = this.#arena.get(slot, "losses", N);
    const probs = this.#arena.get(slot, "probs", N * V);
    const loss = this.#arena.get(slot, "loss", 1);
    be.crossEntropyForward(losses, probs, logits, step.targets, N, V);
    be.sumRows(loss, losses, N, 1);
    const count = step.count ?? N;
    be.scale(loss, count > 0 ? 1 / count : 0, 1);
    return loss;
  }

  /** Add parameter gradients and return dX (see {@linkcode Layer.backward}). */
  async backward(_dy: Tensor | null, step: Step): Promise<Tensor | null> {
    const slot = slotOf(step);
    const h = saved(this.#h, slot, "Head");
    if (!step.targets) throw new TypeError("Head.backward needs the step's targets");
    const N = step.B * step.T;
    const V = this.#V;
    const C = this.#C;
    const be = this.#be;
    const count = step.count ?? N;
    const dlogits = this.#arena.get(slot, "logits", N * V);
    be.fill(dlogits, 0);
    const dloss = count > 0 ? (step.gradScale ?? 1) / count : 0;
    be.crossEntropyBackward(
      dlogits,
      this.#arena.get(slot, "probs", N * V),
      step.targets,
      dloss,
      N,
      V,
    );
    const dh = this.#arena.get(GRAD_SLOT, "dh", N * C);
    be.matmul(dh, dlogits, this.#w, null, N, C, V);
    be.matmul(this.#dw, dlogits, h, null, V, C, N, { transA: true, accumulate: true });
    return await this.lnf.backward(dh, step);
  }
}
