/**
 * The CPU backend's element-wise and row kernels in WebAssembly SIMD (see `_ew_module.ts`):
 * operands are copied into the module's memory in chunks of {@linkcode CHUNK} elements, which
 * stay in the first levels of cache, and results copied back. Row blocks (attention scores)
 * may instead live in the module's memory, where a GEMM writes and reads them through
 * {@linkcode EwKernels.view}.
 *
 * @module
 */

import type { AdamWParams } from "../backend.ts";
import { buildEwModule, type EwExports, hasRelaxedMadd } from "./_ew_module.ts";

/** Elements per operand per call of an element-wise kernel. */
const CHUNK = 8192;
/** Bytes between operand regions: a chunk plus room for the lanes a vector loop runs past. */
const REGION = 4 * (CHUNK + 16);
const PAGE = 65536;

/** The module, compiled once per thread. */
let compiled: { fma: boolean; module: WebAssembly.Module } | undefined;

/** The kernels, bound to one instance of the module. */
export class EwKernels {
  readonly fma: boolean;
  #x: EwExports;
  #mem: WebAssembly.Memory;
  #f32: Float32Array;
  #u16: Uint16Array;

  constructor() {
    if (compiled === undefined) {
      const fma = hasRelaxedMadd();
      compiled = { fma, module: new WebAssembly.Module(buildEwModule(fma) as BufferSource) };
    }
    this.fma = compiled.fma;
    const inst = new WebAssembly.Instance(compiled.module, {});
    this.#x = inst.exports as unknown as EwExports;
    this.#mem = this.#x.memory;
    this.#f32 = new Float32Array(this.#mem.buffer);
    this.#u16 = new Uint16Array(this.#mem.buffer);
    this.reserve(4 * REGION);
  }

  /**
   * Grows the memory to at least `bytes`. Views from {@linkcode EwKernels.view} taken before a
   * call that grows are stale; take the view after the last `reserve`.
   */
  reserve(bytes: number): void {
    const have = this.#mem.buffer.byteLength;
    if (bytes > have) this.#mem.grow(Math.ceil((bytes - have) / PAGE));
    if (this.#f32.buffer !== this.#mem.buffer) {
      this.#f32 = new Float32Array(this.#mem.buffer);
      this.#u16 = new Uint16Array(this.#mem.buffer);
    }
  }

  /** A float view of the whole memory (valid until the next growing `reserve`). */
  get view(): Float32Array {
    return this.#f32;
  }

  /** out[i] = the float32 value of the bf16 bits bits[i], for every element of `bits`. */
  widenBf16(bits: Uint16Array, out: Float32Array): void {
    const h = this.#u16, m = this.#f32, x = this.#x, n = bits.length;
    const r1 = REGION >> 2;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      h.set(bits.subarray(i, i + c), 0);
      x.bf16Widen(0, REGION, c);
      out.set(m.subarray(r1, r1 + c), i);
    }
  }

  /** out[offset + i] = the bf16 bits of src[i] (to nearest, ties to even), for every i. */
  roundBf16(src: Float32Array, out: Uint16Array, offset: number): void {
    const h = this.#u16, m = this.#f32, x = this.#x, n = src.length;
    const r1 = REGION >> 1;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(src.subarray(i, i + c), 0);
      x.bf16Round(0, REGION, c);
      out.set(h.subarray(r1, r1 + c), offset + i);
    }
  }

  /** O[i] = gelu(X[i]) for i < n. */
  geluForward(O: Float32Array, X: Float32Array, n: number): void {
    const m = this.#f32, x = this.#x;
    const r1 = REGION >> 2;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(X.subarray(i, i + c), 0);
      x.geluForward(0, REGION, c);
      O.set(m.subarray(r1, r1 + c), i);
    }
  }

  /** D[i] += gelu'(X[i]) G[i] for i < n. */
  geluBackward(D: Float32Array, X: Float32Array, G: Float32Array, n: number): void {
    const m = this.#f32, x = this.#x;
    const r1 = REGION >> 2, r2 = 2 * r1;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(X.subarray(i, i + c), 0);
      m.set(G.subarray(i, i + c), r1);
      m.set(D.subarray(i, i + c), r2);
      x.geluBackward(0, REGION, 2 * REGION, c);
      D.set(m.subarray(r2, r2 + c), i);
    }
  }

  /** One AdamW step on n elements (moments and arithmetic in float32). */
  adamw(
    W: Float32Array,
    G: Float32Array,
    M: Float32Array,
    V: Float32Array,
    n: number,
    p: AdamWParams,
  ): void {
    const m = this.#f32, x = this.#x;
    const r = REGION >> 2;
    const c1 = 1 / (1 - p.beta1 ** p.step), c2 = 1 / (1 - p.beta2 ** p.step);
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(W.subarray(i, i + c), 0);
      m.set(G.subarray(i, i + c), r);
      m.set(M.subarray(i, i + c), 2 * r);
      m.set(V.subarray(i, i + c), 3 * r);
      x.adamw(
        0,
        REGION,
        2 * REGION,
        3 * REGION,
        c,
        p.beta1,
        p.beta2,
        1 - p.beta1,
        1 - p.beta2,
        c1,
        c2,
        p.lr,
        p.eps,
        p.weightDecay,
      );
      W.set(m.subarray(0, c), i);
      M.set(m.subarray(2 * r, 2 * r + c), i);
      V.set(m.subarray(3 * r, 3 * r + c), i);
    }
  }

  /** Rows per chunk for rows of n elements, and the region size (elements) that holds them. */
  #rows(n: number): [number, number] {
    const rows = Math.max(1, Math.floor(CHUNK / n));
    return [rows, rows * n + 16];
  }

  /**
   * Layernorm forward of N rows of C elements (C a multiple of 4): O = (X - mean) rstd W + B,
   * Mu[n] = mean, Rs[n] = rstd.
   */
  layernormForward(
    O: Float32Array,
    Mu: Float32Array,
    Rs: Float32Array,
    X: Float32Array,
    W: Float32Array,
    B: Float32Array,
    N: number,
    C: number,
    eps: number,
  ): void {
    const [rows, reg] = this.#rows(C);
    const o = reg, w = 2 * reg, b = w + C + 16, st = b + C + 16;
    this.reserve(4 * (st + 2 * rows + 16));
    const m = this.#f32, x = this.#x;
    m.set(W.subarray(0, C), w);
    m.set(B.subarray(0, C), b);
    for (let n = 0; n < N; n += rows) {
      const r = Math.min(rows, N - n), c = r * C;
      m.set(X.subarray(n * C, n * C + c), 0);
      x.layernormForward(0, 4 * o, 4 * st, 4 * w, 4 * b, r, C, eps);
      O.set(m.subarray(o, o + c), n * C);
      for (let i = 0; i < r; i++) {
        Mu[n + i] = m[st + 2 * i];
        Rs[n + i] = m[st + 2 * i + 1];
      }
    }
  }

  /** Layernorm backward (C a multiple of 4): adds into DX, DW and DB. */
  layernormBackward(
    DX: Float32Array,
    DW: Float32Array,
    DB: Float32Array,
    G: Float32Array,
    X: Float32Array,
    W: Float32Array,
    Mu: Float32Array,
    Rs: Float32Array,
    N: number,
    C: number,
  ): void {
    const [rows, reg] = this.#rows(C);
    const g = reg, x = 2 * reg, w = 3 * reg, dw = w + C + 16, db = dw + C + 16;
    const st = db + C + 16;
    this.reserve(4 * (st + 2 * rows + 16));
    const m = this.#f32, k = this.#x;
    m.set(W.subarray(0, C), w);
    m.set(DW.subarray(0, C), dw);
    m.set(DB.subarray(0, C), db);
    for (let n = 0; n < N; n += rows) {
      const r = Math.min(rows, N - n), c = r * C, e = n * C;
      m.set(DX.subarray(e, e + c), 0);
      m.set(G.subarray(e, e + c), g);
      m.set(X.subarray(e, e + c), x);
      for (let i = 0; i < r; i++) {
        m[st + 2 * i] = Mu[n + i];
        m[st + 2 * i + 1] = Rs[n + i];
      }
      k.layernormBackward(0, 4 * dw, 4 * db, 4 * g, 4 * x, 4 * w, 4 * st, r, C);
      DX.set(m.subarray(0, c), e);
    }
    DW.set(m.subarray(dw, dw + C));
    DB.set(m.subarray(db, db + C));
  }

  /** O[i] = alpha X[i] + beta Y[i] for i < n (O may alias X or Y). */
  addScaled(
    O: Float32Array,
    X: Float32Array,
    Y: Float32Array,
    n: number,
    al: number,
    be: number,
  ): void {
    const m = this.#f32, x = this.#x, r = REGION >> 2;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(X.subarray(i, i + c), 0);
      m.set(Y.subarray(i, i + c), r);
      x.addScaled(0, REGION, 0, c, al, be);
      O.set(m.subarray(0, c), i);
    }
  }

  /** The sum of X[i]^2 for i < n (float32 within a chunk, float64 across chunks). */
  sumSquares(X: Float32Array, n: number): number {
    const m = this.#f32, x = this.#x, out = REGION >> 2;
    let s = 0;
    for (let i = 0; i < n; i += CHUNK) {
      const c = Math.min(CHUNK, n - i);
      m.set(X.subarray(i, i + c), 0);
      m.fill(0, c, c + 8);
      x.sumSquares(0, c, REGION);
      s += m[out];
    }
    return s;
  }

  /** O[j] (+)= sum over the M rows of X[M, N] (N a multiple of 4), summed in float32. */
  sumRows(O: Float32Array, X: Float32Array, M: number, N: number, accumulate: boolean): void {
    const [rows, reg] = this.#rows(N);
    this.reserve(4 * (reg + N + 16));
    const m = this.#f32, k = this.#x;
    m.fill(0, reg, reg + N);
    for (let i = 0; i < M; i += rows) {
      const r = Math.min(rows, M - i);
      m.set(X.subarray(i * N, (i + r) * N), 0);
      k.sumRows(0, 4 * reg, r, N);
    }
    if (accumulate) { for (let j = 0; j < N; j++) O[j] += m[reg + j]; }
    else O.set(m.subarray(reg, reg + N));
  }

  /**
   * Softmax of the N rows of X[N, V] into P; L[n] = log(sum of exponentials) - (X[n, T[n]] -
   * max) for targets T[n] >= 0, else 0.
   */
  softmaxCrossEntropy(
    L: Float32Array,
    P: Float32Array,
    X: Float32Array,
    T: Int32Array,
    N: number,
    V: number,
  ): void {
    if (V === 0) return void L.fill(0, 0, N); // every target is then ignored
    const sd = (V + 3) & ~3;
    const [rows, reg] = this.#rows(sd);
    this.reserve(4 * (reg + 2 * rows + 16));
    const m = this.#f32;
    for (let n = 0; n < N; n += rows) {
      const r = Math.min(rows, N - n), e = n * V;
      if (sd === V) m.set(X.subarray(e, e + r * V), 0);
      else for (let i = 0; i < r; i++) m.set(X.subarray(e + i * V, e + i * V + V), i * sd);
      this.softmaxAt(0, r, V, sd, 0, false, reg);
      if (sd === V) P.set(m.subarray(0, r * V), e);
      else for (let i = 0; i < r; i++) P.set(m.subarray(i * sd, i * sd + V), e + i * V);
      for (let i = 0; i < r; i++) {
        const tg = T[n + i];
        L[n + i] = tg < 0 ? 0 : Math.log(m[reg + 2 * i + 1]) - (X[e + i * V + tg] - m[reg + 2 * i]);
      }
    }
  }

  /**
   * Softmax in place of `rows` rows of T entries, `stride` (a multiple of 4) apart, at element
   * `at` of the memory; causal rows use their first t0 + r + 1 entries; the rest, up to T
   * rounded up to 4, become 0. Each row's maximum and sum of exponentials go to elements
   * `stats + 2r` and `stats + 2r + 1`.
   */
  softmaxAt(
    at: number,
    rows: number,
    T: number,
    stride: number,
    t0: number,
    causal: boolean,
    stats: number,
  ): void {
    this.#x.softmaxRows(4 * at, rows, T, stride, t0, causal ? 1 : 0, 4 * stats);
  }

  /**
   * The causal softmax backward in place: for rows r < rows of T entries, `stride` (a multiple
   * of 4) apart, with a at element `a` and s at element `s` of the memory:
   * s = scale a (s - sum(a s)) on the first t0 + r + 1 entries, 0 on the rest.
   */
  softmaxBackwardAt(
    a: number,
    s: number,
    rows: number,
    T: number,
    stride: number,
    t0: number,
    sc: number,
  ): void {
    this.#x.softmaxBackwardRows(4 * a, 4 * s, rows, T, stride, t0, sc);
  }
}
