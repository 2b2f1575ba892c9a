/**
 * The one compute contract: every layer calls these ops on a {@linkcode Backend}; only
 * `kernels/` knows whether they run as WGSL on a GPU or as CPU code.
 *
 * Conventions (llm.c style):
 * - All matrices are row-major; sizes are passed explicitly; outputs come first.
 * - Float tensors are `f32`, `f16` (IEEE half) or `bf16` (bfloat16); the 16-bit ones store 2
 *   bytes per element. Every op takes any of the three for each float argument independently
 *   and computes exactly as in f32 on the exactly widened values; every result it stores into a
 *   16-bit tensor is rounded to that tensor's type (to nearest, ties to even; f16 overflows to
 *   ±Inf; NaN stays NaN). Accumulating outputs (`+=`) are widened, accumulated in f32 and
 *   rounded once. Ops on f32 tensors alone run exactly as if 16-bit types did not exist.
 * - Every `*Backward` op ADDS (+=) into every gradient output, so a gradient buffer is zeroed
 *   once per step and contributions from several uses (tied weights, residuals) accumulate.
 * - Ops are enqueued synchronously; only {@linkcode Backend.read} waits. On the CPU an op has
 *   finished when it returns; on WebGPU it has been submitted in order.
 *
 * @module
 */

/**
 * Element type of a tensor: `f32`; `f16` (IEEE 754 binary16) and `bf16` (bfloat16), both stored
 * as 16 bits per element; `i32` (indices and targets).
 */
export type TensorDType = "f32" | "f16" | "bf16" | "i32";

/**
 * A host array holding tensor data. `f32` tensors are `Float32Array`s, except on a backend
 * created for float64 checks (the reference backend with `precision: "f64"`), whose `f32`
 * tensors are `Float64Array`s; `i32` tensors are `Int32Array`s.
 */
export type HostArray = Float32Array | Float64Array | Int32Array;

/**
 * Dropout on the attention probabilities ({@linkcode Backend.attentionForward}). The
 * probability (b, h, i, j) of local sequence b, local head h, query i and key j is kept iff
 * `dropoutHash(key, (((seqOffset + b) * heads + headOffset + h) * T + i) * T + j)` is at least
 * `floor(p * 2^32)`; kept probabilities are scaled by `1 / (1 - p)`.
 */
export interface AttentionDropout {
  /** Drop probability in [0, 1); 0 runs the op without dropout. */
  p: number;
  /** The mask's key: an unsigned 32-bit integer (a new one for every step and layer). */
  key: number;
  /** Global index of this call's first sequence (data parallel rank, micro-batch). */
  seqOffset: number;
  /** Global index of this rank's first head (tensor parallel rank times local heads). */
  headOffset: number;
  /** Number of heads across all tensor-parallel ranks. */
  heads: number;
}

/**
 * An opaque handle to backend memory: a flat run of `length` elements. Views into a larger
 * tensor (the flat parameter buffer) are tensors too.
 */
export interface Tensor {
  /** Number of elements. */
  readonly length: number;
  /** Element type. */
  readonly dtype: TensorDType;
}

/** Options of {@linkcode Backend.matmul}. */
export interface MatmulOptions {
  /** `a` is stored transposed, as [K, M]. */
  transA?: boolean;
  /** `b` is stored transposed, as [N, K]. */
  transB?: boolean;
  /** Add into `out` instead of overwriting it. */
  accumulate?: boolean;
}

/** Hyper-parameters of one AdamW step over a range. */
export interface AdamWParams {
  /** Learning rate. */
  lr: number;
  /** First-moment decay. */
  beta1: number;
  /** Second-moment decay. */
  beta2: number;
  /** Denominator epsilon. */
  eps: number;
  /** Decoupled weight decay (0 for biases and norms). */
  weightDecay: number;
  /** 1-based step number, for bias correction. */
  step: number;
}

/** A compute backend. */
export interface Backend {
  /** `"reference"`, `"cpu"` or `"webgpu"`. */
  readonly name: string;
  /** What runs underneath, e.g. `"cpu: matmul by OpenBLAS 0.3.21 (Haswell), 1 thread"`. */
  readonly description: string;

  // ---- memory ----------------------------------------------------------------------------
  /** A new zero-filled tensor. */
  alloc(length: number, dtype?: TensorDType): Tensor;
  /** A view of `length` elements of `t` starting at element `offset` (no copy). */
  view(t: Tensor, offset: number, length: number): Tensor;
  /**
   * Copy host data into `t` starting at element `offset` (default 0). Into a float tensor, a
   * `Float32Array` or `Float64Array` is converted to the tensor's type (rounded to nearest,
   * ties to even, for `f16` and `bf16`); into a 16-bit tensor a `Uint16Array` is copied as raw
   * bits; an `i32` tensor takes an `Int32Array`.
   */
  write(t: Tensor, src: HostArray | Uint16Array, offset?: number): void;
  /**
   * Copy `t` back to the host (waits for queued work); a 16-bit tensor comes back widened
   * (exactly) to a `Float32Array`.
   */
  read(t: Tensor): Promise<HostArray>;
  /**
   * The live host array behind `t` for host-memory backends (a 16-bit tensor's raw bits as a
   * `Uint16Array`); `null` on a device backend.
   */
  hostView(t: Tensor): HostArray | Uint16Array | null;
  /** Set every element of `t` to `value` (rounded to a 16-bit tensor's type). */
  fill(t: Tensor, value: number): void;
  /**
   * `dst = src` (same length): a plain copy between equal dtypes, a rounding or widening
   * conversion between any two float dtypes.
   */
  copy(dst: Tensor, src: Tensor): void;
  /** Release the backend (destroys the GPU device). */
  dispose(): void;
  /**
   * Bytes held by the scratch pool that widens 16-bit arguments to f32 for the kernels (its
   * peak so far: it only grows).
   */
  scratchBytes?(): number;

  // ---- linear algebra ---------------------------------------------------------------------
  /**
   * out[M,N] (+)= op(a)[M,K] @ op(b)[K,N] (+ bias[N] broadcast over rows when bias is given).
   */
  matmul(
    out: Tensor,
    a: Tensor,
    b: Tensor,
    bias: Tensor | null,
    M: number,
    N: number,
    K: number,
    opts?: MatmulOptions,
  ): void;
  /** out[N] (+)= sum over the M rows of inp[M,N] (bias gradients, positional gradients). */
  sumRows(out: Tensor, inp: Tensor, M: number, N: number, accumulate?: boolean): void;
  /** out[M,N] += row[N] for every row (positional embeddings, biases). */
  addRows(out: Tensor, row: Tensor, M: number, N: number): void;
  /** out[n] = a[n] + b[n] (out may alias a or b). */
  add(out: Tensor, a: Tensor, b: Tensor, n: number): void;
  /** y[n] += alpha * x[n]. */
  axpy(y: Tensor, x: Tensor, alpha: number, n: number): void;
  /** x[n] *= alpha. */
  scale(x: Tensor, alpha: number, n: number): void;
  /** out[0] (+)= sum of x[n]^2 (gradient clipping). */
  sumSquares(out: Tensor, x: Tensor, n: number, accumulate?: boolean): void;

  // ---- embedding --------------------------------------------------------------------------
  /**
   * out[N,C] = table[idx[n] - vocabStart] for rows of the table's shard
   * [vocabStart, vocabStart + table.length / C); rows outside the shard give zeros.
   */
  embeddingForward(
    out: Tensor,
    idx: Tensor,
    table: Tensor,
    N: number,
    C: number,
    vocabStart?: number,
  ): void;
  /** dtable[idx[n] - vocabStart] += dout[n] for rows in the shard (scatter-add). */
  embeddingBackward(
    dtable: Tensor,
    dout: Tensor,
    idx: Tensor,
    N: number,
    C: number,
    vocabStart?: number,
  ): void;

  // ---- normalisation and activations --------------------------------------------------------
  /** out[N,C] = (inp - mean) * rstd * w + b; saves mean[N] and rstd[N] (biased variance). */
  layernormForward(
    out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    inp: Tensor,
    w: Tensor,
    b: Tensor,
    N: number,
    C: number,
    eps?: number,
  ): void;
  /** dinp, dw, db += the layernorm gradients. */
  layernormBackward(
    dinp: Tensor,
    dw: Tensor,
    db: Tensor,
    dout: Tensor,
    inp: Tensor,
    w: Tensor,
    mean: Tensor,
    rstd: Tensor,
    N: number,
    C: number,
  ): void;
  /** out[n] = GELU(inp[n]), tanh form. */
  geluForward(out: Tensor, inp: Tensor, n: number): void;
  /** dinp[n] += GELU'(inp[n]) * dout[n]. */
  geluBackward(dinp: Tensor, inp: Tensor, dout: Tensor, n: number): void;
  /**
   * out[r, c] = keep ? inp[r, c] / (1 - p) : 0 for a rows x cols block, where element (r, c)
   * has global index g = (rowOffset + r) * fullCols + colOffset + c and is kept iff
   * `dropoutHash(key, g) >= floor(p * 2^32)` (unsigned). out may alias inp. The same call on an
   * output gradient is the backward. p in [0, 1); p = 0 copies.
   *
   * @param rowOffset global row of the block's first row (default 0)
   * @param colOffset global column of the block's first column (default 0)
   * @param fullCols columns of the whole (global) matrix (default `cols`)
   * @throws {RangeError} when p is outside [0, 1), key is not an unsigned 32-bit integer, the
   *   block does not fit in `fullCols` columns or a global index would exceed 2^32 - 1
   */
  dropout(
    out: Tensor,
    inp: Tensor,
    rows: number,
    cols: number,
    p: number,
    key: number,
    rowOffset?: number,
    colOffset?: number,
    fullCols?: number,
  ): void;

  // ---- attention --------------------------------------------------------------------------
  /**
   * Causal multi-head attention. qkv[B,T,3C] holds q | k | v along the last axis, each split
   * into H heads of C/H in head order; scores are scaled by 1/sqrt(C/H). Writes out[B,T,C] and
   * saves the probabilities att[B,H,T,T] (upper triangle zero). With `drop`, out is computed
   * from the probabilities after dropout ({@linkcode AttentionDropout}); att still holds them
   * before dropout.
   */
  attentionForward(
    out: Tensor,
    att: Tensor,
    qkv: Tensor,
    B: number,
    T: number,
    C: number,
    H: number,
    drop?: AttentionDropout,
  ): void;
  /**
   * dqkv += the gradient of attention given dout[B,T,C] and the saved att; with `drop` (the
   * forward's), the dropout mask is recomputed from its hash.
   */
  attentionBackward(
    dqkv: Tensor,
    dout: Tensor,
    qkv: Tensor,
    att: Tensor,
    B: number,
    T: number,
    C: number,
    H: number,
    drop?: AttentionDropout,
  ): void;

  /**
   * Causal attention of `T` new tokens per sequence against a key/value cache, for decoding:
   * qkv[B,T,3C] holds the new tokens' q | k | v (as in {@linkcode Backend.attentionForward}),
   * which sit at positions past..past+T-1; cache[B,capacity,2C] holds k | v of every earlier
   * position. Writes the new tokens' k and v into the cache at their positions, then out[B,T,C]:
   * each new token attends to every cached position up to its own. No probabilities are kept
   * (no backward).
   */
  attentionCached(
    out: Tensor,
    cache: Tensor,
    qkv: Tensor,
    B: number,
    T: number,
    past: number,
    capacity: number,
    C: number,
    H: number,
  ): void;

  // ---- loss -------------------------------------------------------------------------------
  /**
   * losses[N] = -log softmax(logits[N,V])[targets[n]], probs[N,V] = softmax(logits) (saved).
   * A negative target is ignored: its loss is 0.
   */
  crossEntropyForward(
    losses: Tensor,
    probs: Tensor,
    logits: Tensor,
    targets: Tensor,
    N: number,
    V: number,
  ): void;
  /** dlogits[N,V] += (probs - onehot(targets)) * dloss; rows with a negative target add 0. */
  crossEntropyBackward(
    dlogits: Tensor,
    probs: Tensor,
    targets: Tensor,
    dloss: number,
    N: number,
    V: number,
  ): void;

  // ---- optimiser --------------------------------------------------------------------------
  /** One AdamW step on n elements: bias-corrected moments m, v; decoupled weight decay. */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, n: number, p: AdamWParams): void;
}
