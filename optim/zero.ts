/**
 * ZeRO over the data-parallel group, with DeepSpeed's meaning of each stage, on the layout of
 * `zero_layout.ts`. {@linkcode Zero} is where a rank's parameters and gradients live (the
 * model's store), the gate its layers pass through, and the optimizer's step:
 *
 * - stage 0: every rank keeps everything; each gradient bucket is all-reduced once its last
 *   micro-batch's backward has filled it.
 * - stage 1: the optimizer state (fp32 master weights and the moments) is partitioned: each
 *   rank updates its shard; buckets are reduce-scattered and the parameters all-gathered.
 * - stage 2: also the gradients: a bucket is filled in a transient buffer and reduce-scattered
 *   as soon as backward has filled it, every micro-batch; a rank keeps only its gradient shard,
 *   so the full gradient buffer never exists.
 * - stage 3: also the parameters: a layer's buckets are all-gathered just before its forward and
 *   again before its backward and released after; the next layers' gathers start ahead (up to
 *   `prefetchSize` elements); buckets of parameters below the persistence threshold stay whole.
 *
 * With 16-bit compute (`dtype` f16 or bf16) parameters used in compute, gradients and
 * everything on the wire are 16-bit; the fp32 master weights and the optimizer state stay
 * fp32 and are sharded by stage 1 and up. Memory is counted from the real allocations: what a
 * rank holds between steps, and the peak of what lives only inside a step (buckets in flight,
 * gathered layers, the fp32 copies of gradient slices being cast).
 *
 * @module
 */
import type { Communicator } from "../collectives/mod.ts";
import type { Backend, Tensor, TensorDType } from "../kernels/backend.ts";
import type { GatedLayer, LayerGate } from "./gate.ts";
import type { ParamSlot, ParamSpec } from "./layout.ts";
import type { UpdateRule } from "./optimizer.ts";
import { allGatherT, allReduceT, reduceScatterT } from "./tensor_comm.ts";
import { buildZeroLayout, type ZeroBucket, type ZeroLayout } from "./zero_layout.ts";

/** Where buffers come from (e.g. the world's shared arena, where collectives fold in SIMD). */
export interface BufferSource {
  /** A zeroed tensor of `n` elements. */
  alloc(n: number, dtype: TensorDType): Tensor;
}

/** Options of {@linkcode Zero}. */
export interface ZeroOptions {
  /** ZeRO stage. */
  stage: 0 | 1 | 2 | 3;
  /** The data-parallel group (`null` or a group of one: nothing is sharded). */
  dp: Communicator | null;
  /** The optimizer's update rule. */
  rule: UpdateRule;
  /** Elements per gradient bucket (DeepSpeed's `reduce_bucket_size`). */
  bucketSize: number;
  /** Element type of parameters used in compute and of gradients; default f32. */
  dtype?: TensorDType;
  /** Stage 3: parameters below this many elements stay gathered; default 0. */
  persistenceThreshold?: number;
  /** Stage 3: gather the next layers ahead up to this many elements; default one layer. */
  prefetchSize?: number;
  /** Stage 3: at most this many gathered elements live at once (beyond the current layer). */
  maxLiveParameters?: number;
  /** Launch each bucket's reduction as soon as it is full (else after backward); default true. */
  overlap?: boolean;
  /** Where the buffers the collectives touch come from; default the backend. */
  buffers?: BufferSource;
  /** Timeout of each collective in milliseconds. */
  timeoutMs?: number;
  /** Element alignment of the layout; default 64. */
  align?: number;
}

/** Bytes a rank holds, by kind (see {@linkcode Zero.memory}). */
export interface ZeroMemory {
  /** Parameters used in compute (full, a shard, and stage 3's persistent buckets). */
  params: number;
  /** Gradients (the full buffer, or the shard). */
  grads: number;
  /** Optimizer state: the fp32 master weights when separate, and the rule's buffers. */
  optimizer: number;
  /** Peak of the buffers that live only inside a step. */
  transientPeak: number;
}

/** What a step's gradient reductions cost and how much of it backward hid (see `commStats`). */
export interface ZeroCommStats {
  /** Gradient reductions launched this step. */
  reductions: number;
  /** Milliseconds from each reduction's launch to its completion, summed. */
  reduceMs: number;
  /**
   * Milliseconds backward stood still waiting for reductions: after it, in `release` without
   * overlap, or for a free bucket (stage 2 and 3 keep at most two in flight).
   */
  waitMs: number;
  /** Stage 3: milliseconds layers waited for their parameters to be gathered. */
  gatherWaitMs: number;
  /** Milliseconds the step's all-gather of the updated parameters took. */
  stepGatherMs: number;
  /**
   * Bytes this rank handed to and took from data-parallel collectives this step (payloads:
   * gradient reductions and parameter gathers, sent plus received).
   */
  wireBytes: number;
}

/** One contiguous piece of a parameter that this rank updates (or counts). */
export interface ZeroPiece {
  /** The parameter. */
  readonly slot: ParamSlot;
  /** Its first element in the flat (global) layout. */
  readonly global: number;
  /** Its first element in this rank's shard buffers. */
  readonly local: number;
  /** Elements. */
  readonly n: number;
}

const BYTES: Record<string, number> = { f32: 4, i32: 4, f16: 2, bf16: 2 };

const NO_STATS: ZeroCommStats = {
  reductions: 0,
  reduceMs: 0,
  waitMs: 0,
  gatherWaitMs: 0,
  stepGatherMs: 0,
  wireBytes: 0,
};

// Gradient buckets in flight at once at stage 2 and 3 (each a bucket-sized transient buffer).
const MAX_IN_FLIGHT = 2;

// One turn of the event loop (a macrotask), so that pending I/O and collectives progress: a
// message through a fresh channel takes about 30 us (a zero timeout waits about 2 ms here), and
// closing the channel lets the process exit.
function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(0);
  });
}

interface Gathered {
  buf: Tensor;
  ready: Promise<void>;
  refs: number;
}

/** A rank's ZeRO: its parameter and gradient store, its layer gate and its optimizer step. */
export class Zero implements LayerGate {
  /** The stage. */
  readonly stage: 0 | 1 | 2 | 3;
  /** The layout (backward order, buckets, shards). */
  readonly layout: ZeroLayout;
  /** Element type of parameters used in compute and of gradients. */
  readonly dtype: TensorDType;
  /** The update rule. */
  readonly rule: UpdateRule;
  /** Optimizer steps taken (AdamW's bias correction uses steps + 1 for the next). */
  steps = 0;
  #be: Backend;
  #dp: Communicator | null;
  #rank: number;
  #o: ZeroOptions;
  #layerIndex = new Map<readonly ParamSpec[], number>();
  #layers: readonly (readonly ParamSpec[])[];
  // Persistent buffers.
  #params: Tensor; // full (stage <= 2) or this rank's shard (stage 3)
  #persist = new Map<ZeroBucket, Tensor>(); // stage 3: buckets kept whole
  #grads: Tensor; // full (stage <= 1) or this rank's shard (stage >= 2)
  #master: Tensor | null; // fp32 master weights when the parameters are 16-bit
  #state: Tensor[];
  #bytes: ZeroMemory = { params: 0, grads: 0, optimizer: 0, transientPeak: 0 };
  // Transient.
  #pool = new Map<string, Tensor[]>();
  #live = 0;
  #pending = new Map<ZeroBucket, number>(); // uses left before a bucket is complete
  #current = new Map<ZeroBucket, Tensor>(); // stage >= 2: the bucket buffer being filled
  #gathered = new Map<ZeroBucket, Gathered>(); // stage 3
  #work: Promise<void>[] = [];
  #inFlight = new Set<Promise<void>>();
  #stats: ZeroCommStats = { ...NO_STATS };
  #micro = 1;
  #views = new Map<string, Tensor>();
  #owned: ZeroPiece[];
  #all: ZeroPiece[];
  #gatherCache: { bucket: ZeroBucket; kind: string; data: Float32Array } | null = null;
  #gradPieces = new Map<string, { slot: ParamSlot; grad: Tensor }[]>();
  #runs: { global: number; local: number; n: number; decay: boolean }[] | null = null;
  #pieceSet: Set<ZeroPiece> | null = null;

  /**
   * Lay out the parameters and allocate what this rank keeps.
   *
   * @param backend the backend
   * @param layers each layer's parameters, layers in forward order
   * @param opts stage, group, update rule, buckets, element type
   */
  constructor(backend: Backend, layers: readonly (readonly ParamSpec[])[], opts: ZeroOptions) {
    const dpSize = opts.dp?.size ?? 1;
    if (![0, 1, 2, 3].includes(opts.stage)) {
      throw new RangeError(`ZeRO stage must be 0, 1, 2 or 3, got ${opts.stage}`);
    }
    this.stage = opts.stage;
    this.dtype = opts.dtype ?? "f32";
    this.rule = opts.rule;
    this.#be = backend;
    this.#dp = dpSize > 1 ? opts.dp : null;
    this.#rank = opts.dp?.rank ?? 0;
    this.#o = opts;
    this.#layers = layers;
    layers.forEach((l, i) => this.#layerIndex.set(l, i));
    this.layout = buildZeroLayout(layers, {
      dp: dpSize,
      bucketSize: opts.bucketSize,
      align: opts.align,
      persistenceThreshold: opts.stage === 3 ? opts.persistenceThreshold ?? 0 : 0,
    });
    const L = this.layout;
    const dt = this.dtype;
    const keep = (kind: keyof ZeroMemory, n: number, dtype: TensorDType, comm: boolean) => {
      this.#bytes[kind] += n * BYTES[dtype]!;
      return comm && opts.buffers ? opts.buffers.alloc(n, dtype) : backend.alloc(n, dtype);
    };
    this.#params = keep("params", this.stage === 3 ? L.shardSize : L.size, dt, true);
    if (this.stage === 3) {
      for (const b of L.buckets) {
        if (b.persistent) this.#persist.set(b, keep("params", b.length, dt, true));
      }
    }
    this.#grads = keep("grads", this.stage >= 2 ? L.shardSize : L.size, dt, this.stage <= 1);
    const stateSize = this.stage === 0 ? L.size : L.shardSize;
    this.#master = dt === "f32" ? null : keep("optimizer", stateSize, "f32", false);
    this.#state = this.rule.state.map(() => keep("optimizer", stateSize, "f32", false));
    this.#owned = this.#pieces(true);
    this.#all = this.#pieces(false);
  }

  #pieces(owned: boolean): ZeroPiece[] {
    const out: ZeroPiece[] = [];
    for (const b of this.layout.buckets) {
      const lo = b.start + (owned ? this.#rank * b.shard : 0);
      const hi = owned ? lo + b.shard : b.start + b.length;
      for (const s of b.slots) {
        const a = Math.max(lo, s.offset), e = Math.min(hi, s.offset + s.size);
        if (a < e) out.push({ slot: s, global: a, local: b.shardOffset + (a - lo), n: e - a });
      }
    }
    return out;
  }

  /** The data-parallel size. */
  get dpSize(): number {
    return this.layout.dp;
  }

  /**
   * This step's gradient reductions: how long they took from launch to completion, and how long
   * backward waited for them. `1 - waitMs / reduceMs` is the fraction backward hid.
   *
   * @returns the figures since the step began
   */
  commStats(): ZeroCommStats {
    return { ...this.#stats };
  }

  /** Bytes this rank holds, by kind, and the peak of what lives only inside a step. */
  memory(): ZeroMemory {
    return { ...this.#bytes };
  }

  // ---- buffers that live inside a step -------------------------------------------------------

  #take(n: number, dtype: TensorDType): Tensor {
    const key = `${n}:${dtype}`;
    const t = this.#pool.get(key)?.pop() ??
      (this.#o.buffers ? this.#o.buffers.alloc(n, dtype) : this.#be.alloc(n, dtype));
    this.#live += n * BYTES[dtype]!;
    this.#bytes.transientPeak = Math.max(this.#bytes.transientPeak, this.#live);
    return t;
  }

  #give(t: Tensor): void {
    const key = `${t.length}:${t.dtype}`;
    let list = this.#pool.get(key);
    if (!list) this.#pool.set(key, list = []);
    list.push(t);
    this.#live -= t.length * BYTES[t.dtype]!;
  }

  // An all-gather of a bucket: this rank's slice out, the whole bucket in.
  #countGather(b: ZeroBucket): void {
    if (this.#dp !== null) this.#stats.wireBytes += (b.shard + b.length) * BYTES[this.dtype]!;
  }

  #group() {
    return { comm: this.#dp, timeoutMs: this.#o.timeoutMs };
  }

  // ---- the store: where a layer finds its parameters and gradients -------------------------

  #view(key: string, buf: Tensor, at: number, n: number): Tensor {
    let v = this.#views.get(key);
    if (!v) {
      v = this.#be.view(buf, at, n);
      this.#views.set(key, v);
    }
    return v;
  }

  /**
   * The parameter a layer computes with. At stage 3 it exists only while its layer holds the
   * gate (between `acquire` and `release`).
   *
   * @param name the parameter
   * @returns its tensor
   */
  value(name: string): Tensor {
    const s = this.layout.get(name);
    if (this.stage < 3) return this.#view(`p:${name}`, this.#params, s.offset, s.size);
    const b = this.layout.bucketOf(name);
    const whole = this.#persist.get(b) ?? this.#gathered.get(b)?.buf;
    if (!whole) {
      throw new RangeError(
        `Parameter "${name}" is not gathered: at ZeRO stage 3 a layer must run through the ` +
          `model's gate (acquire before forward and backward)`,
      );
    }
    return this.#be.view(whole, s.offset - b.start, s.size);
  }

  /**
   * The gradient a layer adds into. At stage 2 and 3 it exists only while its layer holds the
   * gate in backward.
   *
   * @param name the parameter
   * @returns its gradient tensor
   */
  grad(name: string): Tensor {
    const s = this.layout.get(name);
    if (this.stage <= 1) return this.#view(`g:${name}`, this.#grads, s.offset, s.size);
    const b = this.layout.bucketOf(name);
    const buf = this.#current.get(b);
    if (!buf) {
      throw new RangeError(
        `The gradient of "${name}" has no bucket: at ZeRO stage ${this.stage} gradients exist ` +
          `only while a layer's backward holds the gate`,
      );
    }
    return this.#be.view(buf, s.offset - b.start, s.size);
  }

  /**
   * Set a parameter (its initial or loaded value, this rank's tensor-parallel piece of it):
   * what this rank keeps of it, in compute and in the fp32 master copy.
   *
   * @param name the parameter
   * @param piece its values
   */
  write(name: string, piece: Float32Array): void {
    const s = this.layout.get(name);
    if (piece.length !== s.size) {
      throw new RangeError(
        `Parameter "${name}" [${s.shape}] has ${s.size} elements, got ${piece.length} values`,
      );
    }
    const be = this.#be;
    if (this.stage < 3) be.write(this.#params, piece, s.offset);
    const p = this.#persist.get(this.layout.bucketOf(name));
    if (p) be.write(p, piece, s.offset - this.layout.bucketOf(name).start);
    for (const q of this.#stage0 ? this.#all : this.#owned) {
      if (q.slot !== s) continue;
      const part = piece.subarray(q.global - s.offset, q.global - s.offset + q.n);
      if (this.stage === 3) be.write(this.#params, part, q.local);
      if (this.#master) be.write(this.#master, part, this.#stage0 ? q.global : q.local);
    }
  }

  get #stage0(): boolean {
    return this.stage === 0;
  }

  /**
   * Read a parameter (the fp32 master weights when kept), its gradient, or an optimizer state
   * buffer (`m`, `v`, `momentum`), for checkpoints. Where it is sharded across the data-parallel
   * group this gathers it: every rank of the group then reads the same names in the same order.
   *
   * @param kind `"params"`, `"grads"` or a state buffer's name
   * @param name the parameter
   * @returns its values (this rank's tensor-parallel piece, whole across data parallelism)
   */
  async read(kind: string, name: string): Promise<Float32Array> {
    const s = this.layout.get(name);
    const be = this.#be;
    const local = (buf: Tensor) => be.read(be.view(buf, s.offset, s.size));
    if (kind === "params") {
      if (this.stage === 0) return Float32Array.from(await local(this.#master ?? this.#params));
      if (this.stage < 3 && !this.#master) return Float32Array.from(await local(this.#params));
      return await this.#gatherSlot(kind, s, this.#master ?? this.#params);
    }
    if (kind === "grads") {
      if (this.stage <= 1) return Float32Array.from(await local(this.#grads));
      return await this.#gatherSlot(kind, s, this.#grads);
    }
    const i = this.rule.state.indexOf(kind);
    if (i < 0) throw new RangeError(`No optimizer state "${kind}": ${this.rule.state.join(", ")}`);
    if (this.stage === 0) return Float32Array.from(await local(this.#state[i]!));
    return await this.#gatherSlot(kind, s, this.#state[i]!);
  }

  // All-gather the bucket holding `s` from each rank's slice of `shard` (a shard buffer), once
  // per bucket for consecutive reads, and cut the parameter out.
  async #gatherSlot(kind: string, s: ParamSlot, shard: Tensor): Promise<Float32Array> {
    const b = this.layout.bucketOf(s.name);
    const c = this.#gatherCache;
    let data: Float32Array;
    if (c && c.bucket === b && c.kind === kind) data = c.data;
    else {
      const be = this.#be;
      const whole = be.alloc(b.length, shard.dtype);
      await allGatherT(be, this.#group(), whole, be.view(shard, b.shardOffset, b.shard));
      data = Float32Array.from(await be.read(whole));
      this.#gatherCache = { bucket: b, kind, data };
    }
    return data.slice(s.offset - b.start, s.offset - b.start + s.size);
  }

  /**
   * Set an optimizer state buffer's values for a parameter (from a checkpoint): what this rank
   * keeps of it.
   *
   * @param kind a state buffer's name
   * @param name the parameter
   * @param piece its values
   */
  writeState(kind: string, name: string, piece: Float32Array): void {
    const s = this.layout.get(name);
    const i = this.rule.state.indexOf(kind);
    if (i < 0) throw new RangeError(`No optimizer state "${kind}": ${this.rule.state.join(", ")}`);
    for (const q of this.#stage0 ? this.#all : this.#owned) {
      if (q.slot !== s) continue;
      const part = piece.subarray(q.global - s.offset, q.global - s.offset + q.n);
      this.#be.write(this.#state[i]!, part, this.#stage0 ? q.global : q.local);
    }
  }

  /**
   * The pieces of parameters whose optimizer state (and fp32 master weights, when kept) this
   * rank keeps, in layout order: at stage 0 every parameter whole; at stages 1-3 its slice of
   * every bucket, a contiguous range of each parameter the slice meets (at most one piece per
   * parameter). Over the data-parallel group the slices of stages 1-3 hold every element of
   * every parameter exactly once. Each piece's range is `[global - slot.offset, + n)` of the
   * parameter's flat (tensor-parallel) values.
   *
   * @returns the pieces
   */
  statePieces(): readonly ZeroPiece[] {
    return this.#stage0 ? this.#all : this.#owned;
  }

  #checkPiece(q: ZeroPiece): void {
    this.#pieceSet ??= new Set(this.statePieces());
    if (!this.#pieceSet.has(q)) {
      throw new RangeError(
        `The piece of "${q.slot.name}" at ${q.global} is not one of this rank's statePieces()`,
      );
    }
  }

  #stateIndex(kind: string): number {
    const i = this.rule.state.indexOf(kind);
    if (i < 0) throw new RangeError(`No optimizer state "${kind}": ${this.rule.state.join(", ")}`);
    return i;
  }

  /**
   * Read a piece of {@linkcode Zero.statePieces} from this rank alone (no collective): the
   * fp32 master weights when kept, else the parameters (`"params"`), or an optimizer state
   * buffer.
   *
   * @param kind `"params"` or a state buffer's name
   * @param q the piece
   * @returns its values (a new array)
   */
  async readPiece(kind: string, q: ZeroPiece): Promise<Float32Array> {
    const out = new Float32Array(q.n);
    await this.readPieceInto(kind, q, out);
    return out;
  }

  /**
   * {@linkcode Zero.readPiece} into a buffer of the caller's (e.g. one reused for every piece
   * of a checkpoint): on a host-memory backend nothing is allocated.
   *
   * @param kind `"params"` or a state buffer's name
   * @param q the piece
   * @param out where its `q.n` values go (its first `q.n` elements)
   */
  async readPieceInto(kind: string, q: ZeroPiece, out: Float32Array): Promise<void> {
    this.#checkPiece(q);
    if (out.length < q.n) {
      throw new RangeError(`The piece of "${q.slot.name}" has ${q.n} elements, out ${out.length}`);
    }
    const be = this.#be;
    const at = this.#stage0 ? q.global : q.local;
    let buf: Tensor, off: number;
    if (kind === "params") {
      if (this.#master) [buf, off] = [this.#master, at];
      else [buf, off] = [this.#params, this.stage < 3 ? q.global : q.local];
    } else [buf, off] = [this.#state[this.#stateIndex(kind)]!, at];
    const v = be.view(buf, off, q.n);
    const live = v.dtype === "f32" ? be.hostView(v) : null;
    out.set(live instanceof Float32Array ? live : await be.read(v));
  }

  /**
   * Set a piece of {@linkcode Zero.statePieces} on this rank alone: for `"params"` the fp32
   * master weights (when kept) and this rank's copy of the range in the compute parameters
   * (rounded to their type); or an optimizer state buffer. Where every rank keeps the whole
   * compute parameters (stages 0-2, stage 3's persistent buckets) the other ranks' ranges stay
   * as they were on this rank: to set whole parameters use {@linkcode Zero.write}.
   *
   * @param kind `"params"` or a state buffer's name
   * @param q the piece
   * @param values its `q.n` values
   */
  writePiece(kind: string, q: ZeroPiece, values: Float32Array): void {
    this.#checkPiece(q);
    if (values.length !== q.n) {
      throw new RangeError(
        `The piece of "${q.slot.name}" has ${q.n} elements, got ${values.length} values`,
      );
    }
    const be = this.#be;
    const at = this.#stage0 ? q.global : q.local;
    if (kind !== "params") {
      be.write(this.#state[this.#stateIndex(kind)]!, values, at);
      return;
    }
    if (this.#master) be.write(this.#master, values, at);
    be.write(this.#params, values, this.stage < 3 ? q.global : q.local);
    const b = this.layout.bucketOf(q.slot.name);
    const p = this.#persist.get(b);
    if (p) be.write(p, values, q.global - b.start);
  }

  /** Set every gradient to zero (the start of a step). */
  zeroGrad(): void {
    this.#be.fill(this.#grads, 0);
  }

  // ---- the gate --------------------------------------------------------------------------

  /**
   * Start an optimizer step over `micro` micro-batches: zero the gradients and count what
   * each bucket waits for.
   *
   * @param micro micro-batches each rank runs this step
   */
  beginStep(micro: number): void {
    this.zeroGrad();
    this.#micro = micro;
    this.#pending.clear();
    this.#work = [];
    this.#gatherCache = null;
    this.#stats = { ...NO_STATS };
  }

  #index(layer: GatedLayer): number {
    const i = this.#layerIndex.get(layer.specs);
    if (i === undefined) throw new RangeError("The gate was given a layer of another model");
    return i;
  }

  #gather(b: ZeroBucket): Gathered {
    let g = this.#gathered.get(b);
    if (!g) {
      const be = this.#be;
      const buf = this.#take(b.length, this.dtype);
      this.#countGather(b);
      const ready = allGatherT(
        be,
        this.#group(),
        buf,
        be.view(this.#params, b.shardOffset, b.shard),
      );
      ready.catch(() => {});
      g = { buf, ready, refs: 0 };
      this.#gathered.set(b, g);
    }
    return g;
  }

  #liveElements(): number {
    let n = 0;
    for (const b of this.#gathered.keys()) n += b.length;
    return n;
  }

  /**
   * Before a layer runs: at stage 3 gather its parameters (and start gathering the next layers'
   * ahead); in backward at stage 2 and 3 give its gradient buckets a buffer.
   *
   * @param layer the layer
   * @param phase which pass
   * @param next the layers that run after it in this pass, nearest first
   */
  async acquire(
    layer: GatedLayer,
    phase: "forward" | "backward",
    next: readonly GatedLayer[] = [],
  ): Promise<void> {
    const i = this.#index(layer);
    const buckets = this.layout.bucketsOfLayer(i);
    if (this.stage === 3) {
      const mine = buckets.filter((b) => !b.persistent).map((b) => this.#gather(b));
      for (const g of mine) g.refs++;
      let budget = this.#o.prefetchSize ?? 0;
      const maxLive = this.#o.maxLiveParameters ?? Infinity;
      for (const l of next) {
        const more = this.layout.bucketsOfLayer(this.#index(l)).filter((b) =>
          !b.persistent && !this.#gathered.has(b)
        );
        const n = more.reduce((a, b) => a + b.length, 0);
        if (n > budget || this.#liveElements() + n > maxLive) break;
        for (const b of more) this.#gather(b);
        budget -= n;
      }
      const t0 = performance.now();
      await Promise.all(mine.map((g) => g.ready));
      this.#stats.gatherWaitMs += performance.now() - t0;
    }
    if (phase !== "backward") return;
    if (this.#inFlight.size > 0 && this.#dp !== null) {
      // Hand the event loop a turn between layers while reductions are in flight: backward is
      // synchronous kernel calls, and a collective moves only when its thread's loop runs.
      await yieldToLoop();
    }
    if (this.stage >= 2) {
      // At most MAX_IN_FLIGHT buckets in flight: a new bucket waits for the oldest, so the
      // buckets never add up to the whole gradient buffer that stage 2 exists to avoid.
      const need = buckets.filter((b) => !this.#current.has(b));
      while (need.length > 0 && this.#inFlight.size >= MAX_IN_FLIGHT) {
        const t0 = performance.now();
        await this.#inFlight.values().next().value;
        this.#stats.waitMs += performance.now() - t0;
      }
      for (const b of need) {
        const buf = this.#take(b.length, this.dtype);
        this.#be.fill(buf, 0);
        this.#current.set(b, buf);
      }
    }
  }

  /**
   * After a layer ran: at stage 3 release its gathered parameters; in backward count its
   * gradients in, and reduce each bucket that is now complete.
   *
   * @param layer the layer
   * @param phase which pass
   */
  async release(layer: GatedLayer, phase: "forward" | "backward"): Promise<void> {
    const i = this.#index(layer);
    const buckets = this.layout.bucketsOfLayer(i);
    if (this.stage === 3) {
      for (const b of buckets) {
        const g = this.#gathered.get(b);
        if (!g || b.persistent) continue;
        if (--g.refs <= 0) {
          this.#gathered.delete(b);
          // The gather has completed (acquire awaited it), so the buffer is free to reuse.
          this.#give(g.buf);
        }
      }
    }
    if (phase !== "backward") return;
    const uses = new Map<ZeroBucket, number>();
    for (const s of this.#layers[i]!) {
      const b = this.layout.bucketOf(s.name);
      uses.set(b, (uses.get(b) ?? 0) + 1);
    }
    for (const [b, u] of uses) {
      const total = b.uses * (this.stage <= 1 ? this.#micro : 1);
      const left = (this.#pending.get(b) ?? total) - u;
      if (left > 0) {
        this.#pending.set(b, left);
        continue;
      }
      this.#pending.delete(b);
      // With overlap the reduction proceeds while backward computes the next buckets; without,
      // backward waits for it here.
      const done = this.#reduce(b);
      if (this.#o.overlap ?? true) this.#work.push(done);
      else {
        const t0 = performance.now();
        await done;
        this.#stats.waitMs += performance.now() - t0;
      }
    }
  }

  // Reduce a complete bucket over the data-parallel group, in the order buckets complete (the
  // same on every rank).
  #reduce(b: ZeroBucket): Promise<void> {
    const t0 = performance.now();
    const st = this.#stats;
    st.reductions++;
    const bytes = b.length * BYTES[this.dtype]!;
    const timed = (p: Promise<void>) =>
      p.then(() => {
        st.reduceMs += performance.now() - t0;
      });
    const done = timed(this.#launch(b, bytes));
    this.#inFlight.add(done);
    const settle = () => this.#inFlight.delete(done);
    done.then(settle, settle);
    return done;
  }

  #launch(b: ZeroBucket, bytes: number): Promise<void> {
    const be = this.#be;
    const g = this.#group();
    // Payload bytes this rank sends and receives: an all-reduce moves the bucket out and the
    // sum back; a reduce-scatter the bucket out and a slice back.
    if (this.#dp !== null) {
      this.#stats.wireBytes += this.stage === 0 ? 2 * bytes : bytes + bytes / this.layout.dp;
    }
    if (this.stage === 0) {
      return allReduceT(be, g, be.view(this.#grads, b.start, b.length));
    }
    const slice = this.#take(b.shard, this.dtype);
    const full = this.stage === 1 ? be.view(this.#grads, b.start, b.length) : this.#current.get(b)!;
    this.#current.delete(b);
    return reduceScatterT(be, g, slice, full).then(() => {
      if (this.stage === 1) {
        be.copy(be.view(this.#grads, b.start + this.#rank * b.shard, b.shard), slice);
      } else {
        const mine = be.view(this.#grads, b.shardOffset, b.shard);
        be.add(mine, mine, slice, b.shard);
        this.#give(full);
      }
      this.#give(slice);
    });
  }

  /**
   * After the step's last backward: wait for every bucket's reduction. Each rank then holds the
   * data-parallel sum of the gradients of its shard (all of them at stage 0).
   *
   * @returns once reduced
   */
  async finishBackward(): Promise<void> {
    const t0 = performance.now();
    await Promise.all(this.#work);
    this.#stats.waitMs += performance.now() - t0;
    this.#work = [];
    if (this.#pending.size > 0 || this.#current.size > 0) {
      throw new Error(
        `${this.#pending.size + this.#current.size} gradient buckets were not complete after ` +
          `backward: every layer's backward must run through the gate`,
      );
    }
  }

  /**
   * The gradient pieces this rank owns (its shard; at stage 0 its slice of every bucket, for
   * counting each element once over the group), or with `all` every piece it holds.
   *
   * @param all every piece this rank holds a gradient for (stage 0: all of them)
   * @returns the pieces, each with a view of its gradient
   */
  gradPieces(all = false): readonly { slot: ParamSlot; grad: Tensor }[] {
    const key = all && this.stage === 0 ? "all" : "owned";
    let pieces = this.#gradPieces.get(key);
    if (!pieces) {
      pieces = (key === "all" ? this.#all : this.#owned).map((q) => ({
        slot: q.slot,
        grad: this.#be.view(this.#grads, this.stage >= 2 ? q.local : q.global, q.n),
      }));
      this.#gradPieces.set(key, pieces);
    }
    return pieces;
  }

  // The runs this rank updates: consecutive pieces of one bucket with one decay flag, merged
  // across the zero-filled alignment gaps between them (an update leaves zeros as zeros).
  #updateRuns(): { global: number; local: number; n: number; decay: boolean }[] {
    if (this.#runs) return this.#runs;
    const runs: { global: number; local: number; n: number; decay: boolean; b: number }[] = [];
    for (const q of this.#stage0 ? this.#all : this.#owned) {
      const b = this.layout.bucketOf(q.slot.name).index;
      const last = runs.at(-1);
      if (last && last.b === b && last.decay === q.slot.decay) {
        last.n = q.global + q.n - last.global;
      } else runs.push({ global: q.global, local: q.local, n: q.n, decay: q.slot.decay, b });
    }
    this.#runs = runs;
    return runs;
  }

  /**
   * The optimizer step: scale the reduced gradients by `factor` (unscaling and clipping), update
   * this rank's part with the rule (in fp32), round the compute parameters from the master
   * weights, and all-gather them where they are partitioned (stage 1 and 2; stage 3's
   * persistent buckets).
   *
   * @param lr the learning rate
   * @param factor multiplies every gradient first
   * @returns once the parameters are current on every rank
   */
  async step(lr: number, factor: number): Promise<void> {
    const be = this.#be;
    const t = this.steps + 1;
    const runs = this.#updateRuns();
    const at = (q: { global: number; local: number }, full: boolean) => full ? q.global : q.local;
    const paramFull = this.stage < 3;
    const stateFull = this.#stage0;
    const gradFull = this.stage <= 1;
    const f32Grads = this.dtype === "f32";
    let scratch: Tensor | null = null;
    const longest = runs.reduce((a, r) => Math.max(a, r.n), 0);
    for (const q of runs) {
      let g = be.view(this.#grads, at(q, gradFull), q.n);
      if (f32Grads) {
        if (factor !== 1) be.scale(g, factor, q.n);
      } else {
        // The 16-bit gradient widened to fp32 (a transient copy), scaled there.
        scratch ??= this.#take(longest, "f32");
        const s = be.view(scratch, 0, q.n);
        be.copy(s, g);
        if (factor !== 1) be.scale(s, factor, q.n);
        g = s;
      }
      const master = this.#master
        ? be.view(this.#master, at(q, stateFull), q.n)
        : be.view(this.#params, at(q, paramFull), q.n);
      const state = this.#state.map((x) => be.view(x, at(q, stateFull), q.n));
      this.rule.update(be, master, g, state, q.n, q.decay, lr, t);
      if (this.#master) be.copy(be.view(this.#params, at(q, paramFull), q.n), master);
    }
    if (scratch) this.#give(scratch);
    this.steps = t;
    if (this.#dp === null || this.stage === 0) {
      for (const [b, p] of this.#persist) be.copy(p, be.view(this.#params, b.shardOffset, b.shard));
      return;
    }
    // Every rank's updated slices back into the whole buckets.
    const t0 = performance.now();
    const g = this.#group();
    for (const b of this.layout.buckets) {
      const whole = this.stage < 3
        ? be.view(this.#params, b.start, b.length)
        : this.#persist.get(b);
      if (!whole) continue;
      const mine = this.#take(b.shard, this.dtype);
      this.#countGather(b);
      be.copy(
        mine,
        be.view(
          this.#params,
          this.stage < 3 ? b.start + this.#rank * b.shard : b.shardOffset,
          b.shard,
        ),
      );
      await allGatherT(be, g, whole, mine);
      this.#give(mine);
    }
    this.#stats.stepGatherMs += performance.now() - t0;
  }
}
