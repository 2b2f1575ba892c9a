/**
 * The reference backend: plain, obviously-correct TypeScript for every op of the
 * {@linkcode Backend} contract. Tensors are host arrays; sums are taken in float64. It is the
 * truth that every other backend is tested against, and with `precision: "f64"` it stores
 * floats as `Float64Array`s so that gradients can be checked by finite differences.
 *
 * 16-bit tensors (`f16`, `bf16`) are `Uint16Array`s of raw bits; an op widens the 16-bit
 * arguments it reads into scratch of its float storage (float32, or float64 with
 * `precision: "f64"`), and rounds what it wrote back, once, from that storage.
 *
 * @module
 */

import type { AttentionDropout, Backend } from "./backend.ts";
import { checkTarget } from "./_checks.ts";
import { dropoutHash, dropoutThreshold } from "./dropout.ts";
import { type Floats, hostChecks, hostMemory, hostOps, isHalf } from "./_host.ts";

/** Options of {@linkcode createReferenceBackend}. */
export interface ReferenceBackendOptions {
  /** Storage of `f32` tensors: `"f32"` (default) as `Float32Array`, `"f64"` as `Float64Array`. */
  precision?: "f32" | "f64";
}

const GELU_K = Math.sqrt(2 / Math.PI);

/**
 * The factor of probability (b, h, t, u) under attention dropout: 1 / (1 - p) if kept, else 0.
 */
function keep(d: AttentionDropout, T: number, b: number, h: number, t: number, u: number): number {
  const g = (((d.seqOffset + b) * d.heads + d.headOffset + h) * T + t) * T + u;
  return dropoutHash(d.key, g) >= dropoutThreshold(d.p) ? 1 / (1 - d.p) : 0;
}

/**
 * Create the reference backend.
 *
 * @param opts `precision: "f64"` stores `f32` tensors as `Float64Array`s (for gradient checks)
 * @returns a {@linkcode Backend} named `"reference"`
 *
 * @example Multiply two matrices
 * ```ts
 * import { createReferenceBackend } from "./reference.ts";
 * const be = createReferenceBackend();
 * const a = be.alloc(4), b = be.alloc(4), c = be.alloc(4);
 * be.write(a, new Float32Array([1, 2, 3, 4]));
 * be.write(b, new Float32Array([1, 0, 0, 1]));
 * be.matmul(c, a, b, null, 2, 2, 2);
 * console.log(await be.read(c)); // Float32Array [1, 2, 3, 4]
 * ```
 */
export function createReferenceBackend(opts: ReferenceBackendOptions = {}): Backend {
  const precision = opts.precision ?? "f32";
  if (precision !== "f32" && precision !== "f64") {
    throw new RangeError(`precision must be "f32" or "f64", got ${JSON.stringify(precision)}`);
  }
  const Float = precision === "f64" ? Float64Array : Float32Array;
  const checks = hostChecks<Floats>("reference", Float);

  return {
    name: "reference",
    description: `reference: plain TypeScript, ${precision} storage`,

    ...hostMemory(
      checks,
      (length, dtype) =>
        dtype === "f32"
          ? new Float(length)
          : isHalf(dtype)
          ? new Uint16Array(length)
          : new Int32Array(length),
    ),
    ...hostOps(checks, {
      matmul(C, A, Bm, bi, M, N, K, o) {
        for (let i = 0; i < M; i++) {
          for (let j = 0; j < N; j++) {
            let s = bi === null ? 0 : bi[j];
            for (let k = 0; k < K; k++) {
              const x = o.transA ? A[k * M + i] : A[i * K + k];
              const y = o.transB ? Bm[j * K + k] : Bm[k * N + j];
              s += x * y;
            }
            C[i * N + j] = o.accumulate ? C[i * N + j] + s : s;
          }
        }
      },
      sumRows(O, X, M, N, accumulate) {
        for (let j = 0; j < N; j++) {
          let s = 0;
          for (let i = 0; i < M; i++) s += X[i * N + j];
          O[j] = accumulate ? O[j] + s : s;
        }
      },
      add(O, A, B, n) {
        for (let i = 0; i < n; i++) O[i] = A[i] + B[i];
      },
      axpy(Y, X, alpha, n) {
        for (let i = 0; i < n; i++) Y[i] += alpha * X[i];
      },
      sumSquares(O, X, n, accumulate) {
        let s = 0;
        for (let i = 0; i < n; i++) s += X[i] * X[i];
        O[0] = accumulate ? O[0] + s : s;
      },

      layernormForward(O, Mu, R, X, Wt, Bs, N, C, eps) {
        for (let n = 0; n < N; n++) {
          let m = 0;
          for (let c = 0; c < C; c++) m += X[n * C + c];
          m /= C;
          let v = 0;
          for (let c = 0; c < C; c++) v += (X[n * C + c] - m) ** 2;
          v /= C;
          const r = 1 / Math.sqrt(v + eps);
          for (let c = 0; c < C; c++) O[n * C + c] = (X[n * C + c] - m) * r * Wt[c] + Bs[c];
          Mu[n] = m;
          R[n] = r;
        }
      },
      layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C) {
        for (let n = 0; n < N; n++) {
          // With xhat = (x - mean) * rstd and g = dout * w:
          // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
          let gMean = 0, gxMean = 0;
          for (let c = 0; c < C; c++) {
            const xhat = (X[n * C + c] - Mu[n]) * R[n];
            const g = G[n * C + c] * Wt[c];
            gMean += g;
            gxMean += g * xhat;
          }
          gMean /= C;
          gxMean /= C;
          for (let c = 0; c < C; c++) {
            const xhat = (X[n * C + c] - Mu[n]) * R[n];
            const g = G[n * C + c] * Wt[c];
            DX[n * C + c] += R[n] * (g - gMean - xhat * gxMean);
            DW[c] += G[n * C + c] * xhat;
            DB[c] += G[n * C + c];
          }
        }
      },
      geluForward(O, X, n) {
        for (let i = 0; i < n; i++) {
          const x = X[i];
          O[i] = 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
        }
      },
      geluBackward(D, X, G, n) {
        for (let i = 0; i < n; i++) {
          const x = X[i];
          const u = GELU_K * (x + 0.044715 * x * x * x);
          const th = Math.tanh(u);
          const du = GELU_K * (1 + 3 * 0.044715 * x * x);
          const d = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du;
          D[i] += d * G[i];
        }
      },
      dropout(O, X, rows, cols, p, key, rowOffset, colOffset, fullCols) {
        const t = dropoutThreshold(p);
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < cols; c++) {
            const g = (rowOffset + r) * fullCols + colOffset + c;
            O[r * cols + c] = dropoutHash(key, g) >= t ? X[r * cols + c] / (1 - p) : 0;
          }
        }
      },

      attentionForward(O, A, Q, B, T, C, H, drop) {
        const hs = C / H, sc = 1 / Math.sqrt(hs);
        const q = (b: number, t: number, h: number, i: number) =>
          Q[(b * T + t) * 3 * C + h * hs + i];
        const k = (b: number, t: number, h: number, i: number) =>
          Q[(b * T + t) * 3 * C + C + h * hs + i];
        const v = (b: number, t: number, h: number, i: number) =>
          Q[(b * T + t) * 3 * C + 2 * C + h * hs + i];
        const row = new Float64Array(T);
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            for (let t = 0; t < T; t++) {
              let max = -Infinity;
              for (let u = 0; u <= t; u++) {
                let s = 0;
                for (let i = 0; i < hs; i++) s += q(b, t, h, i) * k(b, u, h, i);
                row[u] = s * sc;
                if (row[u] > max) max = row[u];
              }
              let z = 0;
              for (let u = 0; u <= t; u++) {
                row[u] = Math.exp(row[u] - max);
                z += row[u];
              }
              const base = ((b * H + h) * T + t) * T;
              for (let u = 0; u < T; u++) A[base + u] = u <= t ? row[u] / z : 0;
              // With dropout, out uses the kept probabilities scaled by 1 / (1 - p).
              if (drop !== undefined) {
                for (let u = 0; u <= t; u++) row[u] = keep(drop, T, b, h, t, u);
              }
              for (let i = 0; i < hs; i++) {
                let s = 0;
                for (let u = 0; u <= t; u++) {
                  s += (drop === undefined ? A[base + u] : A[base + u] * row[u]) * v(b, u, h, i);
                }
                O[(b * T + t) * C + h * hs + i] = s;
              }
            }
          }
        }
      },
      attentionCached(O, K, Q, B, T, past, cap, C, H) {
        const hs = C / H, C2 = 2 * C, C3 = 3 * C, sc = 1 / Math.sqrt(hs);
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < T; t++) {
            const q = (b * T + t) * C3, at = (b * cap + past + t) * C2;
            K.set(Q.subarray(q + C, q + C3), at);
          }
        }
        const s = new Float64Array(past + T);
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < T; t++) {
            const n = past + t + 1, q0 = (b * T + t) * C3, o0 = (b * T + t) * C;
            for (let h = 0; h < H; h++) {
              let max = -Infinity;
              for (let u = 0; u < n; u++) {
                const k0 = (b * cap + u) * C2 + h * hs;
                let d = 0;
                for (let i = 0; i < hs; i++) d += Q[q0 + h * hs + i] * K[k0 + i];
                s[u] = d * sc;
                if (s[u] > max) max = s[u];
              }
              let z = 0;
              for (let u = 0; u < n; u++) z += s[u] = Math.exp(s[u] - max);
              for (let i = 0; i < hs; i++) {
                let acc = 0;
                for (let u = 0; u < n; u++) acc += s[u] * K[(b * cap + u) * C2 + C + h * hs + i];
                O[o0 + h * hs + i] = acc / z;
              }
            }
          }
        }
      },
      attentionBackward(D, G, Q, A, B, T, C, H, drop) {
        const hs = C / H, sc = 1 / Math.sqrt(hs);
        const at = (b: number, t: number, h: number, i: number) => (b * T + t) * 3 * C + h * hs + i;
        const datt = new Float64Array(T), m = new Float64Array(T).fill(1);
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            for (let t = 0; t < T; t++) {
              const base = ((b * H + h) * T + t) * T;
              // out[t] = sum_u att[t,u] m[u] v[u], m[u] the dropout factor (1 without dropout):
              // datt[u] = m[u] dout[t] . v[u]; dv[u] += att[t,u] m[u] dout[t].
              if (drop !== undefined) {
                for (let u = 0; u <= t; u++) m[u] = keep(drop, T, b, h, t, u);
              }
              for (let u = 0; u <= t; u++) {
                let s = 0;
                const pu = drop === undefined ? A[base + u] : A[base + u] * m[u];
                for (let i = 0; i < hs; i++) {
                  const g = G[(b * T + t) * C + h * hs + i];
                  s += g * Q[at(b, u, h, i) + 2 * C];
                  D[at(b, u, h, i) + 2 * C] += pu * g;
                }
                datt[u] = drop === undefined ? s : s * m[u];
              }
              // Softmax: dpre[u] = att[u] * (datt[u] - sum_w att[w] datt[w]).
              let dot = 0;
              for (let u = 0; u <= t; u++) dot += A[base + u] * datt[u];
              for (let u = 0; u <= t; u++) {
                const dpre = A[base + u] * (datt[u] - dot) * sc;
                for (let i = 0; i < hs; i++) {
                  D[at(b, t, h, i)] += dpre * Q[at(b, u, h, i) + C];
                  D[at(b, u, h, i) + C] += dpre * Q[at(b, t, h, i)];
                }
              }
            }
          }
        }
      },

      crossEntropyForward(L, P, X, Tg, N, V) {
        const op = "crossEntropyForward";
        for (let n = 0; n < N; n++) {
          checkTarget(op, Tg[n], n, V);
          let max = -Infinity;
          for (let j = 0; j < V; j++) max = Math.max(max, X[n * V + j]);
          let z = 0;
          for (let j = 0; j < V; j++) z += Math.exp(X[n * V + j] - max);
          for (let j = 0; j < V; j++) P[n * V + j] = Math.exp(X[n * V + j] - max) / z;
          const tg = Tg[n];
          L[n] = tg < 0 ? 0 : -(X[n * V + tg] - max - Math.log(z));
        }
      },
      crossEntropyBackward(D, P, Tg, dloss, N, V) {
        const op = "crossEntropyBackward";
        for (let n = 0; n < N; n++) {
          checkTarget(op, Tg[n], n, V);
          if (Tg[n] < 0) continue;
          for (let j = 0; j < V; j++) {
            D[n * V + j] += (P[n * V + j] - (j === Tg[n] ? 1 : 0)) * dloss;
          }
        }
      },

      adamw(W, G, Mm, Vv, n, p) {
        const c1 = 1 - p.beta1 ** p.step, c2 = 1 - p.beta2 ** p.step;
        for (let i = 0; i < n; i++) {
          Mm[i] = p.beta1 * Mm[i] + (1 - p.beta1) * G[i];
          Vv[i] = p.beta2 * Vv[i] + (1 - p.beta2) * G[i] * G[i];
          const mhat = Mm[i] / c1, vhat = Vv[i] / c2;
          W[i] -= p.lr * (mhat / (Math.sqrt(vhat) + p.eps) + p.weightDecay * W[i]);
        }
      },
    }),
  };
}
