// The Backend contract on WebGPU: argument checks, then one kernel file per op.

import type { Backend, Tensor, TensorDType } from "../backend.ts";
import { checkedOps } from "../_checks.ts";
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
  const vocab = (op: string, vocabStart: number) => {
    if (!Number.isInteger(vocabStart)) {
      throw new RangeError(`${op}: vocabStart must be an integer, got ${vocabStart}`);
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

    ...checkedOps<GpuTensor, GpuTensor>({
      sizes,
      f,
      ints: (t, op, name, need) => own(t, op, name, need, "i32"),
    }, {
      matmul: (C, A, B, bias, M, N, K, o) =>
        mm(
          dev,
          C,
          A,
          B,
          bias,
          M,
          N,
          K,
          o.transA === true,
          o.transB === true,
          o.accumulate === true,
        ),
      sumRows: (O, X, M, N, accumulate) => sumRows(dev, O, X, M, N, accumulate),
      addRows: (O, R, M, N) => addRows(dev, O, R, M, N),
      add: (O, A, B, n) => add(dev, O, A, B, n),
      axpy: (Y, X, alpha, n) => axpy(dev, Y, X, alpha, n),
      scale: (X, alpha, n) => scale(dev, X, alpha, n),
      sumSquares: (O, X, n, accumulate) => sumSquares(dev, O, X, n, accumulate),
      embeddingForward(O, I, W, N, C, vocabStart) {
        vocab("embeddingForward", vocabStart);
        embeddingForward(dev, O, I, W, N, C, vocabStart);
      },
      embeddingBackward(D, G, I, N, C, vocabStart) {
        vocab("embeddingBackward", vocabStart);
        embeddingBackward(dev, D, G, I, N, C, vocabStart);
      },
      layernormForward: (O, Mu, R, X, Wt, Bs, N, C, eps) =>
        layernormForward(dev, O, Mu, R, X, Wt, Bs, N, C, eps),
      layernormBackward: (DX, DW, DB, G, X, Wt, Mu, R, N, C) =>
        layernormBackward(dev, DX, DW, DB, G, X, Wt, Mu, R, N, C),
      geluForward: (O, X, n) => geluForward(dev, O, X, n),
      geluBackward: (D, X, G, n) => geluBackward(dev, D, X, G, n),
      attentionForward: (O, A, Q, B, T, C, H) => attentionForward(dev, O, A, Q, B, T, C, H),
      attentionBackward: (D, G, Q, A, B, T, C, H) => attentionBackward(dev, D, G, Q, A, B, T, C, H),
      crossEntropyForward: (L, P, X, Tg, N, V) => crossEntropyForward(dev, L, P, X, Tg, N, V),
      crossEntropyBackward: (D, P, Tg, dloss, N, V) =>
        crossEntropyBackward(dev, D, P, Tg, dloss, N, V),
      adamw: (W, G, M, V, n, p) => adamw(dev, W, G, M, V, n, p),
    }),
  };
}
