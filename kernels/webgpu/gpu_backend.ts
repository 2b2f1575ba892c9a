// The Backend contract on WebGPU: argument checks, then one kernel file per op.

import type { AdamWParams, Backend, MatmulOptions, Tensor, TensorDType } from "../backend.ts";
import { adamw } from "./adamw.ts";
import { attentionBackward, attentionForward } from "./attention.ts";
import { crossEntropyBackward, crossEntropyForward } from "./cross_entropy.ts";
import { type GpuDevice, GpuTensor } from "./device.ts";
import { add, addRows, axpy, copy, fill, scale } from "./elementwise.ts";
import { embeddingBackward, embeddingForward } from "./embedding.ts";
import { geluBackward, geluForward } from "./gelu.ts";
import { layernormBackward, layernormForward } from "./layernorm.ts";
import { matmul } from "./matmul.ts";
import { matmulDirect } from "./matmul_direct.ts";
import { sumRows, sumSquares } from "./reduce.ts";

function sizes(op: string, s: Record<string, number>): void {
  for (const [k, v] of Object.entries(s)) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
      throw new RangeError(`${op}: ${k} must be a non-negative integer below 2^32, got ${v}`);
    }
  }
}

/** Build the WebGPU {@linkcode Backend} over an open device. */
export function gpuBackend(dev: GpuDevice, description: string): Backend {
  const mm = dev.direct ? matmulDirect : matmul;
  const own = (t: Tensor, op: string, name: string, need: number, dtype: TensorDType = "f32") => {
    if (!(t instanceof GpuTensor) || t.owner !== dev) {
      throw new TypeError(`${op}: ${name} is not a tensor of this WebGPU backend`);
    }
    if (t.dtype !== dtype) throw new TypeError(`${op}: ${name} must be an ${dtype} tensor`);
    if (t.length < need) {
      throw new RangeError(
        `${op}: ${name} has ${t.length} elements but the sizes given need ${need}`,
      );
    }
    return t;
  };
  const any = (t: Tensor, op: string, name: string) => own(t, op, name, 0, t.dtype);
  const f = own;
  const heads = (op: string, B: number, T: number, C: number, H: number) => {
    sizes(op, { B, T, C, H });
    if (H === 0 || C % H !== 0) {
      throw new RangeError(`${op}: C (${C}) must be a multiple of the number of heads H (${H})`);
    }
  };

  return {
    name: "webgpu",
    description,

    alloc(length: number, dtype: TensorDType = "f32"): Tensor {
      sizes("alloc", { length });
      if (dtype !== "f32" && dtype !== "i32") {
        throw new TypeError(`alloc: dtype must be "f32" or "i32", got ${JSON.stringify(dtype)}`);
      }
      return dev.alloc(length, dtype);
    },
    view(t: Tensor, offset: number, length: number): Tensor {
      sizes("view", { offset, length });
      const g = any(t, "view", "t");
      if (offset + length > g.length) {
        throw new RangeError(
          `view: elements [${offset}, ${offset + length}) are outside a tensor of ${g.length}`,
        );
      }
      return new GpuTensor(dev, g.buffer, g.offset + offset, length, g.dtype);
    },
    write(t: Tensor, src: Float32Array | Int32Array | Float64Array, offset = 0): void {
      sizes("write", { offset });
      const g = any(t, "write", "t");
      if (offset + src.length > g.length) {
        throw new RangeError(
          `write: ${src.length} elements at offset ${offset} do not fit a tensor of ${g.length}`,
        );
      }
      if ((g.dtype === "i32") !== (src instanceof Int32Array)) {
        throw new TypeError(
          `write: an ${g.dtype} tensor needs ${
            g.dtype === "i32" ? "an Int32Array" : "a Float32Array"
          }, got ${src.constructor.name}`,
        );
      }
      dev.write(g, src instanceof Float64Array ? new Float32Array(src) : src, offset);
    },
    read(t: Tensor): Promise<Float32Array | Int32Array> {
      return dev.read(any(t, "read", "t"));
    },
    hostView(t: Tensor): null {
      any(t, "hostView", "t");
      return null;
    },
    fill(t: Tensor, value: number): void {
      fill(dev, any(t, "fill", "t"), value);
    },
    copy(dst: Tensor, src: Tensor): void {
      const d = any(dst, "copy", "dst"), s = any(src, "copy", "src");
      if (d.length !== s.length || d.dtype !== s.dtype) {
        throw new RangeError(
          `copy: dst (${d.dtype}[${d.length}]) and src (${s.dtype}[${s.length}]) must match`,
        );
      }
      if (d.length === 0) return;
      if (d.buffer === s.buffer) {
        if (d.offset < s.offset + s.length && s.offset < d.offset + d.length) {
          throw new RangeError("copy: dst and src overlap; copy through a temporary tensor");
        }
        copy(dev, d, s);
      } else {
        dev.copyBuffer(d, s);
      }
    },
    dispose(): void {
      dev.dispose();
    },

    matmul(
      out: Tensor,
      a: Tensor,
      b: Tensor,
      bias: Tensor | null,
      M: number,
      N: number,
      K: number,
      o: MatmulOptions = {},
    ): void {
      const op = "matmul";
      sizes(op, { M, N, K });
      mm(
        dev,
        f(out, op, "out", M * N),
        f(a, op, "a", M * K),
        f(b, op, "b", K * N),
        bias === null ? null : f(bias, op, "bias", N),
        M,
        N,
        K,
        o.transA === true,
        o.transB === true,
        o.accumulate === true,
      );
    },
    sumRows(out: Tensor, inp: Tensor, M: number, N: number, accumulate = false): void {
      const op = "sumRows";
      sizes(op, { M, N });
      sumRows(dev, f(out, op, "out", N), f(inp, op, "inp", M * N), M, N, accumulate);
    },
    addRows(out: Tensor, row: Tensor, M: number, N: number): void {
      const op = "addRows";
      sizes(op, { M, N });
      addRows(dev, f(out, op, "out", M * N), f(row, op, "row", N), M, N);
    },
    add(out: Tensor, a: Tensor, b: Tensor, n: number): void {
      sizes("add", { n });
      add(dev, f(out, "add", "out", n), f(a, "add", "a", n), f(b, "add", "b", n), n);
    },
    axpy(y: Tensor, x: Tensor, alpha: number, n: number): void {
      sizes("axpy", { n });
      axpy(dev, f(y, "axpy", "y", n), f(x, "axpy", "x", n), alpha, n);
    },
    scale(x: Tensor, alpha: number, n: number): void {
      sizes("scale", { n });
      scale(dev, f(x, "scale", "x", n), alpha, n);
    },
    sumSquares(out: Tensor, x: Tensor, n: number, accumulate = false): void {
      const op = "sumSquares";
      sizes(op, { n });
      sumSquares(dev, f(out, op, "out", 1), f(x, op, "x", n), n, accumulate);
    },

    embeddingForward(
      out: Tensor,
      idx: Tensor,
      table: Tensor,
      N: number,
      C: number,
      vocabStart = 0,
    ): void {
      const op = "embeddingForward";
      sizes(op, { N, C });
      if (!Number.isInteger(vocabStart)) {
        throw new RangeError(`${op}: vocabStart must be an integer, got ${vocabStart}`);
      }
      embeddingForward(
        dev,
        f(out, op, "out", N * C),
        own(idx, op, "idx", N, "i32"),
        f(table, op, "table", 0),
        N,
        C,
        vocabStart,
      );
    },
    embeddingBackward(
      dtable: Tensor,
      dout: Tensor,
      idx: Tensor,
      N: number,
      C: number,
      vocabStart = 0,
    ): void {
      const op = "embeddingBackward";
      sizes(op, { N, C });
      if (!Number.isInteger(vocabStart)) {
        throw new RangeError(`${op}: vocabStart must be an integer, got ${vocabStart}`);
      }
      embeddingBackward(
        dev,
        f(dtable, op, "dtable", 0),
        f(dout, op, "dout", N * C),
        own(idx, op, "idx", N, "i32"),
        N,
        C,
        vocabStart,
      );
    },

    layernormForward(
      out: Tensor,
      mean: Tensor,
      rstd: Tensor,
      inp: Tensor,
      w: Tensor,
      b: Tensor,
      N: number,
      C: number,
      eps = 1e-5,
    ): void {
      const op = "layernormForward";
      sizes(op, { N, C });
      layernormForward(
        dev,
        f(out, op, "out", N * C),
        f(mean, op, "mean", N),
        f(rstd, op, "rstd", N),
        f(inp, op, "inp", N * C),
        f(w, op, "w", C),
        f(b, op, "b", C),
        N,
        C,
        eps,
      );
    },
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
    ): void {
      const op = "layernormBackward";
      sizes(op, { N, C });
      layernormBackward(
        dev,
        f(dinp, op, "dinp", N * C),
        f(dw, op, "dw", C),
        f(db, op, "db", C),
        f(dout, op, "dout", N * C),
        f(inp, op, "inp", N * C),
        f(w, op, "w", C),
        f(mean, op, "mean", N),
        f(rstd, op, "rstd", N),
        N,
        C,
      );
    },
    geluForward(out: Tensor, inp: Tensor, n: number): void {
      const op = "geluForward";
      sizes(op, { n });
      geluForward(dev, f(out, op, "out", n), f(inp, op, "inp", n), n);
    },
    geluBackward(dinp: Tensor, inp: Tensor, dout: Tensor, n: number): void {
      const op = "geluBackward";
      sizes(op, { n });
      geluBackward(dev, f(dinp, op, "dinp", n), f(inp, op, "inp", n), f(dout, op, "dout", n), n);
    },

    attentionForward(
      out: Tensor,
      att: Tensor,
      qkv: Tensor,
      B: number,
      T: number,
      C: number,
      H: number,
    ): void {
      const op = "attentionForward";
      heads(op, B, T, C, H);
      attentionForward(
        dev,
        f(out, op, "out", B * T * C),
        f(att, op, "att", B * H * T * T),
        f(qkv, op, "qkv", B * T * 3 * C),
        B,
        T,
        C,
        H,
      );
    },
    attentionBackward(
      dqkv: Tensor,
      dout: Tensor,
      qkv: Tensor,
      att: Tensor,
      B: number,
      T: number,
      C: number,
      H: number,
    ): void {
      const op = "attentionBackward";
      heads(op, B, T, C, H);
      attentionBackward(
        dev,
        f(dqkv, op, "dqkv", B * T * 3 * C),
        f(dout, op, "dout", B * T * C),
        f(qkv, op, "qkv", B * T * 3 * C),
        f(att, op, "att", B * H * T * T),
        B,
        T,
        C,
        H,
      );
    },

    crossEntropyForward(
      losses: Tensor,
      probs: Tensor,
      logits: Tensor,
      targets: Tensor,
      N: number,
      V: number,
    ): void {
      const op = "crossEntropyForward";
      sizes(op, { N, V });
      crossEntropyForward(
        dev,
        f(losses, op, "losses", N),
        f(probs, op, "probs", N * V),
        f(logits, op, "logits", N * V),
        own(targets, op, "targets", N, "i32"),
        N,
        V,
      );
    },
    crossEntropyBackward(
      dlogits: Tensor,
      probs: Tensor,
      targets: Tensor,
      dloss: number,
      N: number,
      V: number,
    ): void {
      const op = "crossEntropyBackward";
      sizes(op, { N, V });
      crossEntropyBackward(
        dev,
        f(dlogits, op, "dlogits", N * V),
        f(probs, op, "probs", N * V),
        own(targets, op, "targets", N, "i32"),
        dloss,
        N,
        V,
      );
    },

    adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, n: number, p: AdamWParams): void {
      const op = "adamw";
      sizes(op, { n });
      if (!Number.isInteger(p.step) || p.step < 1) {
        throw new RangeError(`adamw: step must be an integer >= 1 (1-based), got ${p.step}`);
      }
      for (const k of ["lr", "beta1", "beta2", "eps", "weightDecay"] as const) {
        if (!Number.isFinite(p[k])) throw new RangeError(`adamw: ${k} must be finite, got ${p[k]}`);
      }
      adamw(
        dev,
        f(param, op, "param", n),
        f(grad, op, "grad", n),
        f(m, op, "m", n),
        f(v, op, "v", n),
        n,
        p,
      );
    },
  };
}
