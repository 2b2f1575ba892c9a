/**
 * The fast CPU backend: matrix products (matmul, the per-head products inside attention, and
 * on the BLAS path the row sums of bias gradients) through a {@linkcode Gemm} chosen at
 * start-up (OpenBLAS through FFI, WebAssembly SIMD, or plain TypeScript); GELU, AdamW,
 * layernorm, the softmax of attention and cross-entropy, row sums and sums of squares through
 * a WebAssembly SIMD module generated at start-up (`_ew_module.ts`, whichever GEMM path runs),
 * the rest (dropout among them) as tight loops over `Float32Array`s. Tensors live on
 * SharedArrayBuffers, so that Workers of one node can read each other's buffers in place
 * ({@linkcode CpuBackend.fromHost} wraps one).
 *
 * 16-bit tensors (`f16`, `bf16`) are `Uint16Array`s of raw bits. An op widens each 16-bit
 * argument it reads into a float32 scratch from a pool that the backend owns (and that only
 * grows: {@linkcode Backend.scratchBytes}), runs the float32 kernel on it and rounds what it
 * wrote back into the 16-bit tensor; ops on float32 tensors alone never touch the pool.
 *
 * @module
 */

import type { AttentionDropout, Backend, Tensor } from "../backend.ts";
import { checkTarget } from "../_checks.ts";
import { dropoutHash, dropoutThreshold } from "../dropout.ts";
import { halfBits, roundHalf, widenHalf } from "../half.ts";
import { hostChecks, hostMemory, hostOps, isHalf } from "../_host.ts";
import { blasLoadError, getBlasThreads, loadBlas, setBlasThreads } from "./blas.ts";
import { type Gemm, tsGemm } from "./gemm.ts";
import { createWasmGemm } from "./wasm_gemm.ts";
import { EwKernels } from "./_ew.ts";

/** Options of {@linkcode createCpuBackend}. */
export interface CpuBackendOptions {
  /**
   * Which matrix-product path: `"blas"` (the system's OpenBLAS/CBLAS/Accelerate), `"wasm"`
   * (WebAssembly SIMD), `"ts"` (plain TypeScript), or `"auto"` (default: the first of those
   * that loads).
   */
  gemm?: "auto" | "blas" | "wasm" | "ts";
  /**
   * OpenBLAS threads. This is one setting per process, shared by all Workers in it; left
   * unchanged when omitted. The WebAssembly and TypeScript paths run on the calling thread.
   */
  threads?: number;
}

/** The CPU backend: a {@linkcode Backend} whose tensors are host arrays. */
export interface CpuBackend extends Backend {
  /** The matrix-product path in use. */
  readonly gemm: Gemm;
  /**
   * Wrap a host array as a tensor without copying (e.g. a view of a SharedArrayBuffer that
   * another Worker allocated). `Float32Array` gives an `f32` tensor, `Int32Array` an `i32` one,
   * `Uint16Array` (raw bits) an `f16` or `bf16` one as `dtype` says.
   */
  fromHost(data: Float32Array | Int32Array | Uint16Array, dtype?: "f16" | "bf16"): Tensor;
  /** The live host array behind `t` (a 16-bit tensor's raw bits). */
  hostView(t: Tensor): Float32Array | Int32Array | Uint16Array;
  /** Bytes held by the pool that widens 16-bit arguments. */
  scratchBytes(): number;
}

function pickGemm(choice: string): { gemm: Gemm; note: string } {
  const blas = () => {
    const g = loadBlas();
    if (!g) return null;
    const v = g.info.config?.match(/^OpenBLAS [\d.]+/)?.[0];
    const core = g.info.corename ? ` (${g.info.corename})` : "";
    return { gemm: g as Gemm, note: `${v ?? g.info.library}${core}` };
  };
  const wasm = () => {
    try {
      return { gemm: createWasmGemm(), note: "WebAssembly SIMD" };
    } catch {
      return null;
    }
  };
  switch (choice) {
    case "auto":
      return blas() ?? wasm() ?? { gemm: tsGemm, note: "plain TypeScript" };
    case "blas": {
      const r = blas();
      if (!r) {
        throw new Error(
          `gemm "blas" was asked for but no BLAS library loads (${blasLoadError()}); ` +
            `install OpenBLAS (Debian: apt install libopenblas0) or use gemm "auto"`,
        );
      }
      return r;
    }
    case "wasm":
      return { gemm: createWasmGemm(), note: "WebAssembly SIMD" };
    case "ts":
      return { gemm: tsGemm, note: "plain TypeScript" };
    default:
      throw new RangeError(
        `gemm must be "auto", "blas", "wasm" or "ts", got ${JSON.stringify(choice)}`,
      );
  }
}

/** Elements per block copied by fill(). */
const FILL = 16384;

/** Rows per block of the attention products (blocks above the diagonal are skipped). */
const RB = 32;

/**
 * Create the CPU backend.
 *
 * @param opts the matrix-product path and OpenBLAS's thread count
 * @returns a {@linkcode CpuBackend} named `"cpu"`; its `description` says which path runs
 * @throws {Error} when `gemm: "blas"` is asked for and no BLAS library loads
 * @throws {RangeError} on an unknown `gemm` or a bad `threads`
 *
 * @example Multiply two matrices on the fastest path available
 * ```ts
 * import { createCpuBackend } from "./backend.ts";
 * const be = createCpuBackend();
 * console.log(be.description); // e.g. "cpu: matmul by OpenBLAS 0.3.21 (Haswell), 1 thread"
 * const a = be.alloc(4), b = be.alloc(4), c = be.alloc(4);
 * be.write(a, new Float32Array([1, 2, 3, 4]));
 * be.write(b, new Float32Array([1, 0, 0, 1]));
 * be.matmul(c, a, b, null, 2, 2, 2);
 * ```
 */
export function createCpuBackend(opts: CpuBackendOptions = {}): CpuBackend {
  const { gemm, note } = pickGemm(opts.gemm ?? "auto");
  if (opts.threads !== undefined) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1) {
      throw new RangeError(`threads must be an integer >= 1, got ${opts.threads}`);
    }
    if (gemm.name === "blas") setBlasThreads(opts.threads);
  }
  const threads = gemm.name === "blas" ? getBlasThreads() : 1;
  const description = `cpu: matmul by ${note}` +
    (threads === null ? "" : `, ${threads} thread${threads === 1 ? "" : "s"}`);
  let rowSums = new Float64Array(0);
  const ew = new EwKernels();
  let ones = new Float32Array(0);
  const fillF32 = new Float32Array(FILL), fillI32 = new Int32Array(FILL), fillValue = [0, 0, 0];
  const fillU16 = new Uint16Array(FILL);
  let mask = new Float32Array(0); // attention dropout factors of one head
  // bf16 from and to float32 in the element-wise module's SIMD (the same bits as half.ts).
  const checks = hostChecks<Float32Array>("cpu", Float32Array, {
      widen(dtype, bits, out) {
        if (dtype !== "bf16" || !(out instanceof Float32Array) || out.length < bits.length) {
          return widenHalf(dtype, bits, out);
        }
        ew.widenBf16(bits, out);
      },
      round(dtype, src, out, offset = 0) {
        const n = src.length;
        if (
          dtype !== "bf16" || !(src instanceof Float32Array) || !Number.isInteger(offset) ||
          offset < 0 || offset + n > out.length
        ) {
          return roundHalf(dtype, src, out, offset);
        }
        ew.roundBf16(src, out, offset);
      },
    }),
    { arr } = checks;
  // The factors of one head's probabilities under attention dropout into mask[t * T + u], u <= t.
  const maskHead = (d: AttentionDropout, T: number, b: number, h: number): Float32Array => {
    if (mask.length < T * T) mask = new Float32Array(T * T);
    const m = mask, key = d.key, thr = dropoutThreshold(d.p), s = 1 / (1 - d.p);
    const g0 = ((d.seqOffset + b) * d.heads + d.headOffset + h) * T * T;
    for (let t = 0; t < T; t++) {
      const r = t * T, g = g0 + r;
      for (let u = 0; u <= t; u++) m[r + u] = dropoutHash(key, g + u) >= thr ? s : 0;
    }
    return m;
  };

  // One head's causal attention in two halves. `headScores`: the probabilities of T query rows
  // at Q[q0 + t qs] (positions past..past+T-1) against past + T keys at KV[k0 + u ks], in the
  // kernels' memory at element 0 in rows sd apart (past + T rounded up to 4; returned), the
  // row statistics after them. `headValues`: those probabilities times the values at
  // KV[v0 + u ks], into O[o0 + t C]. Each block of rows is multiplied only up to its last column.
  const headScores = (
    Q: Float32Array,
    q0: number,
    qs: number,
    KV: Float32Array,
    k0: number,
    ks: number,
    T: number,
    past: number,
    hs: number,
  ): number => {
    const n = past + T, sd = (n + 3) & ~3, sc = 1 / Math.sqrt(hs);
    ew.reserve(4 * (T * sd + 16 + 2 * T + 16));
    const S = ew.view;
    for (let r0 = 0; r0 < T; r0 += RB) {
      const r1 = Math.min(T, r0 + RB);
      gemm.sgemm(
        false,
        true,
        r1 - r0,
        past + r1,
        hs,
        sc,
        Q,
        q0 + r0 * qs,
        qs,
        KV,
        k0,
        ks,
        0,
        S,
        r0 * sd,
        sd,
      );
    }
    ew.softmaxAt(0, T, n, sd, past, true, T * sd + 16);
    return sd;
  };
  const headValues = (
    O: Float32Array,
    o0: number,
    C: number,
    KV: Float32Array,
    v0: number,
    ks: number,
    T: number,
    past: number,
    hs: number,
    sd: number,
  ): void => {
    const S = ew.view;
    for (let r0 = 0; r0 < T; r0 += RB) {
      const r1 = Math.min(T, r0 + RB);
      gemm.sgemm(
        false,
        false,
        r1 - r0,
        hs,
        past + r1,
        1,
        S,
        r0 * sd,
        sd,
        KV,
        v0,
        ks,
        0,
        O,
        o0 + r0 * C,
        C,
      );
    }
  };

  return {
    name: "cpu",
    description,
    gemm,

    ...hostMemory(checks, (length, dtype) => {
      if (isHalf(dtype)) return new Uint16Array(new SharedArrayBuffer(2 * length));
      const buf = new SharedArrayBuffer(4 * length);
      return dtype === "f32" ? new Float32Array(buf) : new Int32Array(buf);
    }),
    fromHost(data: Float32Array | Int32Array | Uint16Array, dtype?: "f16" | "bf16"): Tensor {
      if (data instanceof Uint16Array) {
        if (dtype !== "f16" && dtype !== "bf16") {
          throw new TypeError(
            `fromHost: a Uint16Array holds 16-bit floats: pass dtype "f16" or "bf16", got ${
              JSON.stringify(dtype)
            }`,
          );
        }
        return checks.wrap(data, dtype);
      }
      if (dtype !== undefined) {
        throw new TypeError(`fromHost: dtype ${JSON.stringify(dtype)} needs a Uint16Array`);
      }
      if (data instanceof Float32Array) return checks.wrap(data, "f32");
      if (data instanceof Int32Array) return checks.wrap(data, "i32");
      throw new TypeError("fromHost: data must be a Float32Array, an Int32Array or a Uint16Array");
    },
    fill(t: Tensor, value: number): void {
      const a = arr(t, "fill", "t", 0), d = t.dtype;
      if (isHalf(d)) value = halfBits(d, value);
      if (a.length < 4 * FILL) return void a.fill(value);
      // fill() on a shared buffer stores element by element; copying a filled block is faster.
      const k = d === "f32" ? 0 : d === "i32" ? 1 : 2;
      const block = k === 0 ? fillF32 : k === 1 ? fillI32 : fillU16;
      if (!Object.is(fillValue[k], value)) {
        block.fill(value);
        fillValue[k] = value;
      }
      for (let i = 0; i < a.length; i += FILL) {
        (a as Float32Array).set(i + FILL <= a.length ? block : block.subarray(0, a.length - i), i);
      }
    },
    ...hostOps(checks, {
      matmul(C, A, B, bi, M, N, K, o) {
        let beta = o.accumulate ? 1 : 0;
        if (bi !== null) {
          for (let i = 0; i < M; i++) {
            const r = i * N;
            if (beta === 0) C.set(bi.subarray(0, N), r);
            else for (let j = 0; j < N; j++) C[r + j] += bi[j];
          }
          beta = 1;
        }
        gemm.sgemm(
          !!o.transA,
          !!o.transB,
          M,
          N,
          K,
          1,
          A,
          0,
          o.transA ? M : K,
          B,
          0,
          o.transB ? K : N,
          beta,
          C,
          0,
          N,
        );
      },
      sumRows(O, X, M, N, accumulate) {
        if (gemm.name === "blas" && M > 0 && N > 0) {
          // ones[1,M] @ inp[M,N]: BLAS reads the rows in place.
          if (ones.length < M) ones = new Float32Array(M).fill(1);
          gemm.sgemm(false, false, 1, N, M, 1, ones, 0, M, X, 0, N, accumulate ? 1 : 0, O, 0, N);
          return;
        }
        if (N % 4 === 0 && N > 0) return ew.sumRows(O, X, M, N, accumulate);
        if (rowSums.length < N) rowSums = new Float64Array(N);
        const s = rowSums;
        s.fill(0, 0, N);
        for (let i = 0; i < M; i++) {
          const r = i * N;
          for (let j = 0; j < N; j++) s[j] += X[r + j];
        }
        for (let j = 0; j < N; j++) O[j] = accumulate ? O[j] + s[j] : s[j];
      },
      add(O, A, B, n) {
        ew.addScaled(O, A, B, n, 1, 1);
      },
      axpy(Y, X, alpha, n) {
        ew.addScaled(Y, Y, X, n, 1, alpha);
      },
      sumSquares(O, X, n, accumulate) {
        const s = ew.sumSquares(X, n);
        O[0] = accumulate ? O[0] + s : s;
      },

      layernormForward(O, Mu, R, X, Wt, Bs, N, C, eps) {
        if (C % 4 === 0 && C > 0) return ew.layernormForward(O, Mu, R, X, Wt, Bs, N, C, eps);
        for (let n = 0; n < N; n++) {
          const x0 = n * C;
          let m = 0;
          for (let c = 0; c < C; c++) m += X[x0 + c];
          m /= C;
          let v = 0;
          for (let c = 0; c < C; c++) {
            const d = X[x0 + c] - m;
            v += d * d;
          }
          const r = 1 / Math.sqrt(v / C + eps);
          for (let c = 0; c < C; c++) O[x0 + c] = (X[x0 + c] - m) * r * Wt[c] + Bs[c];
          Mu[n] = m;
          R[n] = r;
        }
      },
      layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C) {
        if (C % 4 === 0 && C > 0) return ew.layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C);
        for (let n = 0; n < N; n++) {
          const x0 = n * C, m = Mu[n], r = R[n];
          let gMean = 0, gxMean = 0;
          for (let c = 0; c < C; c++) {
            const g = G[x0 + c] * Wt[c];
            gMean += g;
            gxMean += g * (X[x0 + c] - m) * r;
          }
          gMean /= C;
          gxMean /= C;
          for (let c = 0; c < C; c++) {
            const xhat = (X[x0 + c] - m) * r, go = G[x0 + c];
            DX[x0 + c] += r * (go * Wt[c] - gMean - xhat * gxMean);
            DW[c] += go * xhat;
            DB[c] += go;
          }
        }
      },
      geluForward(O, X, n) {
        ew.geluForward(O, X, n);
      },
      geluBackward(D, X, G, n) {
        ew.geluBackward(D, X, G, n);
      },
      dropout(O, X, rows, cols, p, key, rowOffset, colOffset, fullCols) {
        if (p === 0) {
          if (O !== X) O.set(X.subarray(0, rows * cols));
          return;
        }
        const thr = dropoutThreshold(p), q = 1 - p;
        for (let r = 0; r < rows; r++) {
          const o = r * cols, g = (rowOffset + r) * fullCols + colOffset;
          for (let c = 0; c < cols; c++) {
            // (The quotient before the test keeps the branch short; a dropped NaN still gives 0.)
            const v = X[o + c] / q;
            O[o + c] = dropoutHash(key, g + c) >= thr ? v : 0;
          }
        }
      },

      attentionForward(O, A, Q, B, T, C, H, drop) {
        const hs = C / H, C3 = 3 * C, TT = T * T;
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            const q0 = b * T * C3 + h * hs, a0 = (b * H + h) * TT;
            const sd = headScores(Q, q0, C3, Q, q0 + C, C3, T, 0, hs), S = ew.view;
            if (sd === T) A.set(S.subarray(0, TT), a0);
            else for (let t = 0; t < T; t++) A.set(S.subarray(t * sd, t * sd + T), a0 + t * T);
            if (drop !== undefined) {
              // The output takes the kept probabilities, scaled; att keeps them all.
              const m = maskHead(drop, T, b, h);
              for (let t = 0; t < T; t++) {
                const r = t * sd, mr = t * T;
                for (let u = 0; u <= t; u++) S[r + u] *= m[mr + u];
              }
            }
            headValues(O, b * T * C + h * hs, C, Q, q0 + 2 * C, C3, T, 0, hs, sd);
          }
        }
      },
      attentionCached(O, K, Q, B, T, past, cap, C, H) {
        const hs = C / H, C2 = 2 * C, C3 = 3 * C;
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < T; t++) {
            const q = (b * T + t) * C3;
            K.set(Q.subarray(q + C, q + C3), (b * cap + past + t) * C2);
          }
        }
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            const q0 = b * T * C3 + h * hs, k0 = b * cap * C2 + h * hs;
            const sd = headScores(Q, q0, C3, K, k0, C2, T, past, hs);
            headValues(O, b * T * C + h * hs, C, K, k0 + C, C2, T, past, hs, sd);
          }
        }
      },
      attentionBackward(D, G, Q, A, B, T, C, H, drop) {
        const hs = C / H, C3 = 3 * C, sc = 1 / Math.sqrt(hs), TT = T * T;
        // In the kernels' memory, rows padded to a multiple of 4: the head's probabilities at
        // element 0, its score gradients at element sOff. Products skip the zero blocks above
        // the diagonal.
        const sd = (T + 3) & ~3, sOff = T * sd + 16;
        ew.reserve(4 * (2 * sOff + 16));
        const W = ew.view;
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            const q0 = b * T * C3 + h * hs, a0 = (b * H + h) * TT, g0 = b * T * C + h * hs;
            const k0 = q0 + C, v0 = q0 + 2 * C;
            // With dropout (factors m), out = (att * m) V: the kept probabilities go to element
            // 0 for dV, and datt is multiplied by m before the softmax.
            const m = drop === undefined ? null : maskHead(drop, T, b, h);
            if (m !== null) {
              for (let t = 0; t < T; t++) {
                const r = t * sd, a = a0 + t * T, mr = t * T;
                for (let u = 0; u <= t; u++) W[r + u] = A[a + u] * m[mr + u];
                W.fill(0, r + t + 1, r + T);
              }
            }
            for (let r0 = 0; r0 < T; r0 += RB) {
              const r1 = Math.min(T, r0 + RB), n = r1 - r0, g = g0 + r0 * C;
              // datt = dout_h V^T (rows r0..r1, columns up to r1).
              gemm.sgemm(false, true, n, r1, hs, 1, G, g, C, Q, v0, C3, 0, W, sOff + r0 * sd, sd);
              // dV[r0..r1] += att[r0.., r0..r1]^T dout_h[r0..] (the kept probabilities with
              // dropout).
              if (m === null) {
                const a = a0 + r0 * T + r0;
                gemm.sgemm(true, false, n, hs, T - r0, 1, A, a, T, G, g, C, 1, D, v0 + r0 * C3, C3);
              } else {
                const a = r0 * sd + r0;
                gemm.sgemm(
                  true,
                  false,
                  n,
                  hs,
                  T - r0,
                  1,
                  W,
                  a,
                  sd,
                  G,
                  g,
                  C,
                  1,
                  D,
                  v0 + r0 * C3,
                  C3,
                );
              }
            }
            if (m !== null) {
              for (let t = 0; t < T; t++) {
                const r = sOff + t * sd, mr = t * T;
                for (let u = 0; u <= t; u++) W[r + u] *= m[mr + u];
              }
            }
            // Through the softmax: dpre = scale * att * (datt - rowsum(att * datt)).
            if (sd === T) W.set(A.subarray(a0, a0 + TT), 0);
            else for (let t = 0; t < T; t++) W.set(A.subarray(a0 + t * T, a0 + t * T + T), t * sd);
            ew.softmaxBackwardAt(0, sOff, T, T, sd, 0, sc);
            for (let r0 = 0; r0 < T; r0 += RB) {
              const r1 = Math.min(T, r0 + RB), n = r1 - r0, s = sOff + r0 * sd;
              // dQ[r0..r1] += dpre[r0..r1, ..r1] K; dK[r0..r1] += dpre[r0.., r0..r1]^T Q[r0..].
              gemm.sgemm(false, false, n, hs, r1, 1, W, s, sd, Q, k0, C3, 1, D, q0 + r0 * C3, C3);
              const q = q0 + r0 * C3;
              gemm.sgemm(
                true,
                false,
                n,
                hs,
                T - r0,
                1,
                W,
                s + r0,
                sd,
                Q,
                q,
                C3,
                1,
                D,
                k0 + r0 * C3,
                C3,
              );
            }
          }
        }
      },

      crossEntropyForward(L, P, X, Tg, N, V) {
        const op = "crossEntropyForward";
        for (let n = 0; n < N; n++) checkTarget(op, Tg[n], n, V);
        ew.softmaxCrossEntropy(L, P, X, Tg, N, V);
      },
      crossEntropyBackward(D, P, Tg, dloss, N, V) {
        const op = "crossEntropyBackward";
        for (let n = 0; n < N; n++) {
          const tg = Tg[n], r = n * V;
          checkTarget(op, tg, n, V);
          if (tg < 0) continue;
          for (let j = 0; j < V; j++) D[r + j] += P[r + j] * dloss;
          D[r + tg] -= dloss;
        }
      },

      adamw(W, G, Mm, Vv, n, p) {
        ew.adamw(W, G, Mm, Vv, n, p);
      },
    }),
  };
}
