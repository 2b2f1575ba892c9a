// Two views of one backend for the 16-bit suite (ops_test.ts), driven by the same op cases:
//
// - `storage16(be, pick)`: every float tensor a case allocates becomes the 16-bit (or f32)
//   tensor `pick(k)` says, k counting the case's float allocations; the ops run on them.
// - `emulated16(be, pick)`: the same tensors stay f32 but hold only values of their picked
//   type: writes and fills are rounded on the way in, and after every op each float tensor the
//   op may write is rounded in place (through a copy into a 16-bit tensor and back).
//
// The contract says an op on 16-bit tensors computes as the f32 op on the widened values and
// rounds what it stores, so the two must read back the same bits.

import type { Backend, HostArray, Tensor, TensorDType } from "../../kernels/mod.ts";
import { type HalfDType, roundHalf, widenHalf } from "../../kernels/mod.ts";

/** The dtype of a case's k-th float tensor. */
export type Pick = (k: number) => "f32" | HalfDType;

/** Arguments that an op may write, by op. */
const WRITTEN: Record<string, readonly number[]> = {
  matmul: [0],
  sumRows: [0],
  addRows: [0],
  add: [0],
  axpy: [0],
  scale: [0],
  sumSquares: [0],
  embeddingForward: [0],
  embeddingBackward: [0],
  layernormForward: [0, 1, 2],
  layernormBackward: [0, 1, 2],
  geluForward: [0],
  geluBackward: [0],
  dropout: [0],
  attentionForward: [0, 1],
  attentionBackward: [0],
  crossEntropyForward: [0, 1],
  crossEntropyBackward: [0],
  adamw: [0, 2, 3],
};

/** `be` whose float allocations are 16-bit as `pick` says. */
export function storage16(be: Backend, pick: Pick): Backend {
  let k = 0;
  return new Proxy(be, {
    get(target, prop) {
      if (prop === "alloc") {
        return (n: number, dtype: TensorDType = "f32") =>
          target.alloc(n, dtype === "f32" ? pick(k++) : dtype);
      }
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** `be` with f32 tensors that hold only the values of the types `pick` says. */
export function emulated16(be: Backend, pick: Pick): Backend {
  let k = 0;
  const kind = new WeakMap<Tensor, "f32" | HalfDType>();
  const temps = new Map<string, Tensor>();
  const round = (t: Tensor): void => {
    const d = kind.get(t);
    if (d === undefined || d === "f32" || t.length === 0) return;
    const key = `${d}:${t.length}`;
    let tmp = temps.get(key);
    if (tmp === undefined) temps.set(key, tmp = be.alloc(t.length, d));
    be.copy(tmp, t);
    be.copy(t, tmp);
  };
  return new Proxy(be, {
    get(target, prop) {
      switch (prop) {
        case "alloc":
          return (n: number, dtype: TensorDType = "f32") => {
            const t = target.alloc(n, dtype);
            if (dtype === "f32") kind.set(t, pick(k++));
            return t;
          };
        case "view":
          return (t: Tensor, offset: number, length: number) => {
            const v = target.view(t, offset, length), d = kind.get(t);
            if (d !== undefined) kind.set(v, d);
            return v;
          };
        case "write":
          return (t: Tensor, src: HostArray, offset?: number) => {
            const d = kind.get(t);
            if (d === undefined || d === "f32" || src instanceof Int32Array) {
              return target.write(t, src, offset);
            }
            const bits = new Uint16Array(src.length), wide = new Float32Array(src.length);
            roundHalf(d, src, bits);
            widenHalf(d, bits, wide);
            target.write(t, wide, offset);
          };
        case "fill":
          return (t: Tensor, value: number) => {
            target.fill(t, value);
            round(t);
          };
        case "copy":
          return (dst: Tensor, src: Tensor) => {
            target.copy(dst, src);
            round(dst);
          };
      }
      const v = Reflect.get(target, prop);
      if (typeof prop !== "string" || !(prop in WRITTEN)) {
        return typeof v === "function" ? v.bind(target) : v;
      }
      return (...args: unknown[]) => {
        (v as (...a: unknown[]) => void).apply(target, args);
        for (const i of WRITTEN[prop]!) round(args[i] as Tensor);
      };
    },
  });
}
