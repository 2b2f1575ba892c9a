// The Backend contract on WebGPU: argument checks, then one kernel file per op. 16-bit
// arguments are widened into f32 runs of the device's pool by a conversion shader before the
// kernel and rounded back by another after it (half.ts), all on the device.

import type { Backend, HostArray, Tensor, TensorDType } from "../backend.ts";
import { checkedOps } from "../_checks.ts";
import { halfBits, type HalfDType, roundHalf } from "../half.ts";
import { adamw } from "./adamw.ts";
import { attentionBackward, attentionCached, attentionForward } from "./attention.ts";
import { crossEntropyBackward, crossEntropyForward } from "./cross_entropy.ts";
import { type GpuDevice, GpuTensor } from "./device.ts";
import { dropout } from "./dropout.ts";
import { copy16, fill16, narrow, widen, write16 } from "./half.ts";
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

const DTYPES: readonly TensorDType[] = ["f32", "f16", "bf16", "i32"];
const isHalf = (d: TensorDType): d is HalfDType => d === "f16" || d === "bf16";

/** Build the WebGPU {@linkcode Backend} over an open device. */
export function gpuBackend(dev: GpuDevice, description: string): Backend {
  const mm = dev.direct ? matmulDirect : matmul;
  const own = (t: Tensor, op: string, name: string, need: number, dtype?: TensorDType) => {
    if (!(t instanceof GpuTensor) || t.owner !== dev) {
      throw new TypeError(`${op}: ${name} is not a tensor of this WebGPU backend`);
    }
    if (dtype !== undefined && t.dtype !== dtype) {
      throw new TypeError(
        dtype === "f32"
          ? `${op}: ${name} must be a float tensor (f32, f16 or bf16), got an ${t.dtype} tensor`
          : `${op}: ${name} must be an ${dtype} tensor, got an ${t.dtype} tensor`,
      );
    }
    if (t.length < need) {
      throw new RangeError(
        `${op}: ${name} has ${t.length} elements but the sizes given need ${need}`,
      );
    }
    return t;
  };
  const any = (t: Tensor, op: string, name: string) => own(t, op, name, 0);
  const f = (t: Tensor, op: string, name: string, need: number) => own(t, op, name, need, "f32");
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
      if (!DTYPES.includes(dtype)) {
        throw new TypeError(
          `alloc: dtype must be "f32", "f16", "bf16" or "i32", got ${JSON.stringify(dtype)}`,
        );
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
    write(t: Tensor, src: HostArray | Uint16Array, offset = 0): void {
      sizes("write", { offset });
      const g = any(t, "write", "t"), d = g.dtype;
      if (offset + src.length > g.length) {
        throw new RangeError(
          `write: ${src.length} elements at offset ${offset} do not fit a tensor of ${g.length}`,
        );
      }
      const floats = src instanceof Float32Array || src instanceof Float64Array;
      if (d === "i32" ? src instanceof Int32Array : d === "f32" ? floats : false) {
        return dev.write(g, src instanceof Float64Array ? new Float32Array(src) : src, offset);
      }
      if (isHalf(d) && src instanceof Uint16Array) return write16(dev, g, src, offset);
      if (isHalf(d) && floats) {
        const bits = new Uint16Array(src.length);
        roundHalf(d, src, bits);
        return write16(dev, g, bits, offset);
      }
      throw new TypeError(
        `write: an ${d} tensor needs ${
          d === "i32"
            ? "an Int32Array"
            : d === "f32"
            ? "a Float32Array or Float64Array"
            : "a Float32Array or Float64Array (rounded) or a Uint16Array (raw bits)"
        }, got ${src.constructor.name}`,
      );
    },
    read(t: Tensor): Promise<Float32Array | Int32Array> {
      return dev.read(any(t, "read", "t"));
    },
    hostView(t: Tensor): null {
      any(t, "hostView", "t");
      return null;
    },
    fill(t: Tensor, value: number): void {
      const g = any(t, "fill", "t");
      if (isHalf(g.dtype)) fill16(dev, g, halfBits(g.dtype, value));
      else fill(dev, g, value);
    },
    copy(dst: Tensor, src: Tensor): void {
      const d = any(dst, "copy", "dst"), s = any(src, "copy", "src");
      if (d.length !== s.length) {
        throw new RangeError(
          `copy: dst (${d.dtype}[${d.length}]) and src (${s.dtype}[${s.length}]) must have ` +
            `the same length`,
        );
      }
      if (d.dtype !== s.dtype && (d.dtype === "i32" || s.dtype === "i32")) {
        throw new TypeError(
          `copy: cannot copy an ${s.dtype} tensor into an ${d.dtype} one; copy converts ` +
            `between the float dtypes (f32, f16, bf16) only`,
        );
      }
      if (d.length === 0) return;
      dev.check("copy");
      if (d.dtype !== s.dtype) {
        // Conversions: through the f32 scratch pool between the two 16-bit types.
        if (s.dtype === "f32") return narrow(dev, d, s, d.length);
        if (d.dtype === "f32") return widen(dev, d, s, d.length);
        const w = dev.takeScratch(d.length);
        widen(dev, w, s, d.length);
        narrow(dev, d, w, d.length);
        dev.pool.release();
        return;
      }
      if (
        d.buffer === s.buffer && d.offset < s.offset + s.length && s.offset < d.offset + d.length
      ) {
        throw new RangeError("copy: dst and src overlap; copy through a temporary tensor");
      }
      if (isHalf(d.dtype)) copy16(dev, d, s);
      else if (d.buffer === s.buffer) copy(dev, d, s);
      else dev.copyBuffer(d, s);
    },
    dispose(): void {
      dev.dispose();
    },
    scratchBytes(): number {
      return dev.pool.bytes;
    },

    ...checkedOps<GpuTensor, GpuTensor>({
      sizes,
      f,
      ints: (t, op, name, need) => own(t, op, name, need, "i32"),
      widen(t, op, name, need, role) {
        const g = own(t, op, name, need);
        const s = dev.takeScratch(need);
        if (role !== "out") widen(dev, s, g, need);
        return s;
      },
      narrow: (t, s, need) => narrow(dev, t as GpuTensor, s, need),
      release: () => dev.pool.release(),
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
      dropout: (O, X, rows, cols, p, key, rowOffset, colOffset, fullCols) =>
        dropout(dev, O, X, rows, cols, p, key, rowOffset, colOffset, fullCols),
      attentionForward: (O, A, Q, B, T, C, H, drop) =>
        attentionForward(dev, O, A, Q, B, T, C, H, drop),
      attentionCached: (O, K, Q, B, T, past, cap, C, H) =>
        attentionCached(dev, O, K, Q, B, T, past, cap, C, H),
      attentionBackward: (D, G, Q, A, B, T, C, H, drop) =>
        attentionBackward(dev, D, G, Q, A, B, T, C, H, drop),
      crossEntropyForward: (L, P, X, Tg, N, V) => crossEntropyForward(dev, L, P, X, Tg, N, V),
      crossEntropyBackward: (D, P, Tg, dloss, N, V) =>
        crossEntropyBackward(dev, D, P, Tg, dloss, N, V),
      adamw: (W, G, M, V, n, p) => adamw(dev, W, G, M, V, n, p),
    }),
  };
}
