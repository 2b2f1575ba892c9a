/**
 * A portable single-precision GEMM in WebAssembly SIMD (f32x4, fused multiply-add through
 * relaxed SIMD where the engine validates it). The Wasm module is generated at start-up from
 * TypeScript (see `_wasm_gemm_module.ts`); nothing prebuilt.
 *
 * Structure (GotoBLAS): C is worked on in blocks of NC = 2048 columns and MB = 1920 rows, held
 * in Wasm memory padded to whole tiles (beta applied on the way in; with beta = 0 the first
 * product block overwrites it). For each block of KC = 256 steps of the inner dimension, op(B)
 * is packed into NR = 8-column panels; for each block of MC = 120 rows, op(A), scaled by alpha,
 * is packed into MR-row panels and the macro-kernel adds every MR x 8 tile of the product, held
 * in f32x4 accumulators, into C's block. MR is 6 with FMA (twelve accumulators) and 4 without.
 * Packing absorbs the transposes and leading dimensions, so the micro-kernel sees one layout.
 * Wasm memory grows to about 18 MiB at most and is kept.
 *
 * @module
 */

import { buildGemmModule, hasRelaxedSimd } from "./_wasm_gemm_module.ts";
import { checkGemmArgs, type Gemm } from "./gemm.ts";

export type { Gemm } from "./gemm.ts";

/**
 * Rows of the register tile: 6 x 8 fills the 15 usable xmm registers with FMA; without FMA,
 * each multiply needs a temporary register, and 4 x 8 avoids spills.
 */
const MR_FMA = 6;
const MR_MULADD = 4;
const NR = 8;
const KC = 256;
const MC = 120;
const NC = 2048;
/** Rows of C per chunk, a multiple of MC. */
const MB = 16 * MC;
const PAGE = 65536;

type Macro = (
  a: number,
  b: number,
  c: number,
  mp: number,
  np: number,
  kc: number,
  ldc: number,
  add: number,
) => void;

class SimdGemm implements Gemm {
  readonly name = "wasm";
  /** Whether the micro-kernel uses fused multiply-add (`f32x4.relaxed_madd`). */
  readonly fma: boolean;
  #memory: WebAssembly.Memory;
  #macro: Macro;
  #f32: Float32Array;
  #mr: number;

  constructor(fma: boolean) {
    this.fma = fma;
    this.#mr = fma ? MR_FMA : MR_MULADD;
    const bytes = buildGemmModule({ mr: this.#mr, nr: NR, unroll: 8, fma });
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), {});
    this.#memory = instance.exports.memory as WebAssembly.Memory;
    this.#macro = instance.exports.macro as Macro;
    this.#f32 = new Float32Array(this.#memory.buffer);
  }

  /** Grows the Wasm memory to at least `bytes` and returns a float view of all of it. */
  #view(bytes: number): Float32Array {
    const have = this.#memory.buffer.byteLength;
    if (bytes > have) this.#memory.grow(Math.ceil((bytes - have) / PAGE));
    if (this.#f32.buffer !== this.#memory.buffer) this.#f32 = new Float32Array(this.#memory.buffer);
    return this.#f32;
  }

  sgemm(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Float32Array,
    offA: number,
    lda: number,
    B: Float32Array,
    offB: number,
    ldb: number,
    beta: number,
    C: Float32Array,
    offC: number,
    ldc: number,
  ): void {
    checkGemmArgs(transA, transB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
    if (M === 0 || N === 0) return;
    const mr = this.#mr;
    const aBase = 0;
    const bBase = aBase + MC * KC;
    for (let jc = 0; jc < N; jc += NC) {
      const nc = Math.min(NC, N - jc);
      const np = Math.ceil(nc / NR);
      const ldw = np * NR;
      const cBase = bBase + KC * ldw;
      // C is worked on in chunks of MB rows, which bounds the Wasm memory.
      for (let i0 = 0; i0 < M; i0 += MB) {
        const mb = Math.min(MB, M - i0);
        const w = this.#view((cBase + Math.ceil(mb / mr) * mr * ldw) * 4);
        const c0 = offC + i0 * ldc + jc;
        // Row blocks of equal size (at most MC), so that no block is left with a few rows.
        const mcb = Math.ceil(Math.ceil(mb / Math.ceil(mb / MC)) / mr) * mr;
        // With beta = 0, the first block of the inner dimension overwrites C's block.
        const overwrite = beta === 0 && alpha !== 0 && K > 0;
        if (!overwrite) loadC(w, cBase, ldw, C, c0, ldc, mb, nc, beta);
        for (let pc = 0; alpha !== 0 && pc < K; pc += KC) {
          const kc = Math.min(KC, K - pc);
          packB(w, bBase, B, transB, offB, ldb, pc, kc, jc, nc);
          for (let ic = 0; ic < mb; ic += mcb) {
            const mc = Math.min(mcb, mb - ic);
            packA(w, aBase, mr, A, transA, offA, lda, i0 + ic, mc, pc, kc, alpha);
            const cp = (cBase + ic * ldw) * 4;
            const add = overwrite && pc === 0 ? 0 : 1;
            this.#macro(aBase * 4, bBase * 4, cp, Math.ceil(mc / mr), np, kc, ldw * 4, add);
          }
        }
        storeC(w, cBase, ldw, C, c0, ldc, mb, nc);
      }
    }
  }
}

/** w[base + i*ldw + j] = beta * C[off + i*ldc + j] (0 when beta is 0, whatever C holds). */
function loadC(
  w: Float32Array,
  base: number,
  ldw: number,
  C: Float32Array,
  off: number,
  ldc: number,
  M: number,
  nc: number,
  beta: number,
): void {
  if (beta === 0) {
    w.fill(0, base, base + M * ldw);
    return;
  }
  if (beta === 1 && ldw === nc && ldc === nc) {
    w.set(C.subarray(off, off + M * nc), base);
    return;
  }
  for (let i = 0; i < M; i++) {
    const d = base + i * ldw, s = off + i * ldc;
    if (beta === 1) w.set(C.subarray(s, s + nc), d);
    else for (let j = 0; j < nc; j++) w[d + j] = beta * C[s + j];
  }
}

/** C[off + i*ldc + j] = w[base + i*ldw + j]. */
function storeC(
  w: Float32Array,
  base: number,
  ldw: number,
  C: Float32Array,
  off: number,
  ldc: number,
  M: number,
  nc: number,
): void {
  if (ldw === nc && ldc === nc) {
    C.set(w.subarray(base, base + M * nc), off);
    return;
  }
  for (let i = 0; i < M; i++) {
    const d = base + i * ldw;
    C.set(w.subarray(d, d + nc), off + i * ldc);
  }
}

/** Packs op(B)[pc:pc+kc, jc:jc+nc] into NR-column panels at w[base], zero-padded. */
function packB(
  w: Float32Array,
  base: number,
  B: Float32Array,
  trans: boolean,
  off: number,
  ld: number,
  pc: number,
  kc: number,
  jc: number,
  nc: number,
): void {
  // op(B)[k, j] = B[off + k*ld + j]: full panels row by row, each row of B read in one pass.
  const full = trans ? 0 : Math.floor(nc / NR);
  for (let k = 0, s = off + pc * ld + jc; k < kc && full > 0; k++, s += ld) {
    for (let p = 0, t = s, d = base + k * NR; p < full; p++, t += NR, d += NR * kc) {
      w[d] = B[t];
      w[d + 1] = B[t + 1];
      w[d + 2] = B[t + 2];
      w[d + 3] = B[t + 3];
      w[d + 4] = B[t + 4];
      w[d + 5] = B[t + 5];
      w[d + 6] = B[t + 6];
      w[d + 7] = B[t + 7];
    }
  }
  for (let j0 = full * NR; j0 < nc; j0 += NR) {
    const cols = Math.min(NR, nc - j0);
    const panel = base + j0 * kc;
    if (!trans) {
      // The last, partial panel: op(B)[k, j] = B[off + k*ld + j].
      let s = off + pc * ld + jc + j0;
      for (let k = 0; k < kc; k++, s += ld) {
        const d = panel + k * NR;
        for (let c = 0; c < cols; c++) w[d + c] = B[s + c];
        for (let c = cols; c < NR; c++) w[d + c] = 0;
      }
    } else if (cols === NR) {
      // op(B)[k, j] = B[off + j*ld + k]: eight rows of B, read along k.
      const s0 = off + (jc + j0) * ld + pc, s1 = s0 + ld, s2 = s1 + ld, s3 = s2 + ld;
      const s4 = s3 + ld, s5 = s4 + ld, s6 = s5 + ld, s7 = s6 + ld;
      for (let k = 0, d = panel; k < kc; k++, d += NR) {
        w[d] = B[s0 + k];
        w[d + 1] = B[s1 + k];
        w[d + 2] = B[s2 + k];
        w[d + 3] = B[s3 + k];
        w[d + 4] = B[s4 + k];
        w[d + 5] = B[s5 + k];
        w[d + 6] = B[s6 + k];
        w[d + 7] = B[s7 + k];
      }
    } else {
      for (let c = 0; c < cols; c++) {
        const s = off + (jc + j0 + c) * ld + pc;
        for (let k = 0; k < kc; k++) w[panel + k * NR + c] = B[s + k];
      }
      for (let c = cols; c < NR; c++) {
        for (let k = 0; k < kc; k++) w[panel + k * NR + c] = 0;
      }
    }
  }
}

/** Packs alpha * op(A)[ic:ic+mc, pc:pc+kc] into MR-row panels at w[base], zero-padded
 * (fast paths for MR = 6). */
function packA(
  w: Float32Array,
  base: number,
  MR: number,
  A: Float32Array,
  trans: boolean,
  off: number,
  ld: number,
  ic: number,
  mc: number,
  pc: number,
  kc: number,
  alpha: number,
): void {
  // op(A)[i, k] = A[off + k*ld + i] with MR = 6: full panels row by row, each row of A read
  // in one pass.
  const full = trans && MR === 6 ? Math.floor(mc / 6) : 0;
  for (let k = 0, s = off + pc * ld + ic; k < kc && full > 0; k++, s += ld) {
    for (let p = 0, t = s, d = base + k * 6; p < full; p++, t += 6, d += 6 * kc) {
      w[d] = alpha * A[t];
      w[d + 1] = alpha * A[t + 1];
      w[d + 2] = alpha * A[t + 2];
      w[d + 3] = alpha * A[t + 3];
      w[d + 4] = alpha * A[t + 4];
      w[d + 5] = alpha * A[t + 5];
    }
  }
  for (let i0 = full * MR; i0 < mc; i0 += MR) {
    const rows = Math.min(MR, mc - i0);
    const panel = base + i0 * kc;
    if (rows === 6 && MR === 6 && !trans) {
      // op(A)[i, k] = A[off + i*ld + k]: six rows of A, read along k.
      const s0 = off + (ic + i0) * ld + pc, s1 = s0 + ld, s2 = s1 + ld, s3 = s2 + ld;
      const s4 = s3 + ld, s5 = s4 + ld;
      for (let k = 0, d = panel; k < kc; k++, d += MR) {
        w[d] = alpha * A[s0 + k];
        w[d + 1] = alpha * A[s1 + k];
        w[d + 2] = alpha * A[s2 + k];
        w[d + 3] = alpha * A[s3 + k];
        w[d + 4] = alpha * A[s4 + k];
        w[d + 5] = alpha * A[s5 + k];
      }
    } else {
      // Other panels: op(A)[i, k] = A[off + i*si + k*sk], rows past the edge are zero.
      const si = trans ? 1 : ld, sk = trans ? ld : 1;
      for (let r = 0; r < MR; r++) {
        const s = off + (ic + i0 + r) * si + pc * sk;
        for (let k = 0; k < kc; k++) w[panel + k * MR + r] = r < rows ? alpha * A[s + k * sk] : 0;
      }
    }
  }
}

const cache = new Map<boolean, SimdGemm>();

/** Options of {@linkcode createWasmGemm}. */
export interface WasmGemmOptions {
  /**
   * Use fused multiply-add (`f32x4.relaxed_madd`). Default: when the engine validates it.
   * `true` on an engine without relaxed SIMD is a RangeError.
   */
  fma?: boolean;
}

/**
 * The WebAssembly SIMD GEMM, compiled on first use and cached (one instance per choice of
 * instructions). Uses `f32x4.relaxed_madd` when the engine validates it, otherwise
 * `f32x4.mul` + `f32x4.add`.
 *
 * @param options instruction choice (for tests and benchmarks; the default is the fastest)
 * @returns a {@linkcode Gemm} named `"wasm"`, with `fma` telling which instructions it uses
 * @example Multiply two 2x2 matrices
 * ```ts
 * import { createWasmGemm } from "./wasm_gemm.ts";
 * const C = new Float32Array(4);
 * createWasmGemm().sgemm(false, false, 2, 2, 2, 1, new Float32Array([1, 2, 3, 4]), 0, 2,
 *   new Float32Array([1, 0, 0, 1]), 0, 2, 0, C, 0, 2);
 * // C is now [1, 2, 3, 4]
 * ```
 */
export function createWasmGemm(
  options: WasmGemmOptions = {},
): Gemm & { readonly fma: boolean } {
  const relaxed = hasRelaxedSimd();
  const fma = options.fma ?? relaxed;
  if (fma && !relaxed) {
    throw new RangeError(
      "createWasmGemm: fma needs relaxed SIMD (f32x4.relaxed_madd), which this engine lacks; " +
        "pass fma: false",
    );
  }
  let g = cache.get(fma);
  if (!g) cache.set(fma, g = new SimdGemm(fma));
  return g;
}
