// Rank module for the shm tests: runs every op against a serial reference computed locally
// (every rank can regenerate every other rank's input) and returns the list of failures.
import type { CollectiveBuffer, Communicator, DType, ReduceOp } from "../../../collectives/mod.ts";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  sharedArray,
  type SharedArrayCtor,
} from "../../../collectives/mod.ts";

export interface OpsData {
  sizes: number[];
  dtypes: DType[];
  ops?: string[];
  /**
   * Put the buffers on SharedArrayBuffers (peers then read them in place): `true` for plain
   * ones, `"arena"` for the process arena (SIMD folds), `"mixed"` for the arena on even ranks
   * and plain ones on odd ranks.
   */
  shared?: boolean | "arena" | "mixed";
  /** Sprinkle NaN, -0 and +0 into the inputs (max/min semantics). */
  specials?: boolean;
}

/** A copy of `x` in the process arena. */
function inArena(x: CollectiveBuffer): CollectiveBuffer {
  const y = sharedArray(x.constructor as SharedArrayCtor<CollectiveBuffer>, x.length);
  y.set(x);
  return y;
}

/** A copy of `x` on a SharedArrayBuffer, at a non-zero offset. */
function onShared(x: CollectiveBuffer): CollectiveBuffer {
  const Ctor = x.constructor as new (
    b: SharedArrayBuffer,
    o: number,
    n: number,
  ) => CollectiveBuffer;
  const es = x.BYTES_PER_ELEMENT;
  const y = new Ctor(new SharedArrayBuffer(es * (x.length + 3)), es * 3, x.length);
  y.set(x);
  return y;
}

function value(rank: number, i: number, salt: number): number {
  // Deterministic, varied, with fractions that make float sums order-sensitive.
  const h = Math.imul((rank + 1) * 2654435761 + i * 40503 + salt * 97, 2246822519) >>> 0;
  return ((h % 20001) - 10000) / 64 + (h % 7) / 3;
}

function make(dtype: DType, n: number, rank: number, salt: number): CollectiveBuffer {
  if (dtype === "float32") return Float32Array.from({ length: n }, (_, i) => value(rank, i, salt));
  if (dtype === "int32") {
    return Int32Array.from({ length: n }, (_, i) => Math.round(value(rank, i, salt) * 1e5));
  }
  const enc = dtype === "float16" ? f32ToF16Bits : f32ToBf16Bits;
  return Uint16Array.from({ length: n }, (_, i) => enc(value(rank, i, salt) / 4));
}

function dec(dtype: DType): (v: number) => number {
  return dtype === "float16" ? f16BitsToF32 : dtype === "bfloat16" ? bf16BitsToF32 : (v) => v;
}

function enc(dtype: DType): (v: number) => number {
  return dtype === "float32"
    ? Math.fround
    : dtype === "int32"
    ? (v) => v | 0
    : dtype === "float16"
    ? f32ToF16Bits
    : (v) => f32ToBf16Bits(Math.fround(v));
}

/** Serial left-to-right fold over ranks 0..n-1, rounding after every step like the dtype does. */
function reference(
  dtype: DType,
  op: ReduceOp,
  inputs: CollectiveBuffer[],
  len: number,
): number[] {
  const d = dec(dtype), e = enc(dtype);
  const out: number[] = [];
  for (let i = 0; i < len; i++) {
    let acc = inputs[0]![i]!;
    for (let p = 1; p < inputs.length; p++) {
      const x = d(acc), y = d(inputs[p]![i]!);
      const r = op === "max" ? Math.max(x, y) : op === "min" ? Math.min(x, y) : x + y;
      acc = e(r);
    }
    if (op === "avg" && inputs.length > 1) {
      acc = dtype === "int32" ? Math.trunc(acc / inputs.length) : e(d(acc) / inputs.length);
    }
    out.push(acc);
  }
  return out;
}

function same(a: number, b: number): boolean {
  return a === b || (Number.isNaN(a) && Number.isNaN(b));
}

function check(fails: string[], what: string, got: CollectiveBuffer, want: ArrayLike<number>) {
  if (got.length !== want.length) {
    fails.push(`${what}: length ${got.length} != ${want.length}`);
    return;
  }
  for (let i = 0; i < got.length; i++) {
    if (!same(got[i]!, want[i]!)) {
      fails.push(`${what}: element ${i} is ${got[i]} but the serial reference gives ${want[i]}`);
      return;
    }
  }
}

export async function main(comm: Communicator, data: OpsData): Promise<string[]> {
  const n = comm.size, r = comm.rank;
  const fails: string[] = [];
  const want = (op: string) => data.ops === undefined || data.ops.includes(op);
  const arena = data.shared === "arena" || (data.shared === "mixed" && r % 2 === 0);
  const copy = (x: CollectiveBuffer) => arena ? inArena(x) : data.shared ? onShared(x) : x.slice();
  let salt = 0;
  for (const dtype of data.dtypes) {
    const o = { dtype };
    for (const len of data.sizes) {
      salt++;
      const inputs = Array.from({ length: n }, (_, p) => make(dtype, len, p, salt));
      if (data.specials && dtype === "float32") {
        for (let p = 0; p < n; p++) {
          for (let i = 0; i < len; i++) {
            if (i % 97 === 5 && p === n - 1) inputs[p]![i] = NaN;
            if (i % 89 === 3) inputs[p]![i] = p % 2 === 0 ? -0 : 0;
          }
        }
      }
      const reds: ReduceOp[] = ["sum", "max", "min", "avg"];
      if (want("allReduce")) {
        for (const op of reds) {
          const buf = copy(inputs[r]!);
          await comm.allReduce(buf, op, o);
          check(fails, `allReduce ${op} ${dtype} x${len}`, buf, reference(dtype, op, inputs, len));
        }
      }
      if (want("reduce")) {
        const root = (salt + 1) % n;
        const buf = copy(inputs[r]!);
        await comm.reduce(buf, root, "sum", o);
        const ref = r === root ? reference(dtype, "sum", inputs, len) : inputs[r]!;
        check(fails, `reduce sum ${dtype} x${len} root ${root}`, buf, ref);
      }
      if (want("broadcast")) {
        const root = salt % n;
        const buf = copy(inputs[r]!);
        await comm.broadcast(buf, root, o);
        check(fails, `broadcast ${dtype} x${len} root ${root}`, buf, inputs[root]!);
      }
      if (want("allGather")) {
        const out = make(dtype, len * n, 0, 0).fill(0);
        await comm.allGather(copy(inputs[r]!), out, o);
        const ref: number[] = [];
        for (const x of inputs) for (const v of x) ref.push(v);
        check(fails, `allGather ${dtype} x${len}`, out, ref);
      }
      if (want("reduceScatter")) {
        const big = Array.from({ length: n }, (_, p) => make(dtype, len * n, p, salt + 1000));
        for (const op of ["sum", "max"] as const) {
          const out = make(dtype, len, 0, 0).fill(0);
          await comm.reduceScatter(copy(big[r]!), out, op, o);
          const ref = reference(dtype, op, big, len * n).slice(r * len, (r + 1) * len);
          check(fails, `reduceScatter ${op} ${dtype} x${len}`, out, ref);
        }
      }
      if (want("allToAll")) {
        const big = Array.from({ length: n }, (_, p) => make(dtype, len * n, p, salt + 2000));
        const out = make(dtype, len * n, 0, 0).fill(0);
        await comm.allToAll(big[r]!, out, o);
        const ref: number[] = [];
        for (let p = 0; p < n; p++) {
          for (const v of big[p]!.subarray(r * len, (r + 1) * len)) ref.push(v);
        }
        check(fails, `allToAll ${dtype} x${len}`, out, ref);
      }
      if (want("inPlace")) {
        // reduceScatter into this rank's own block of its input; allGather from this rank's own
        // block of its output.
        const big = Array.from({ length: n }, (_, p) => make(dtype, len * n, p, salt + 3000));
        const mine = copy(big[r]!);
        const block = mine.subarray(r * len, (r + 1) * len);
        await comm.reduceScatter(mine, block, "sum", o);
        const ref = reference(dtype, "sum", big, len * n).slice(r * len, (r + 1) * len);
        check(fails, `reduceScatter in place ${dtype} x${len}`, block, ref);
        const out = copy(make(dtype, len * n, 0, 0).fill(0));
        out.set(inputs[r]!, r * len);
        await comm.allGather(out.subarray(r * len, (r + 1) * len), out, o);
        const cat: number[] = [];
        for (const x of inputs) for (const v of x) cat.push(v);
        check(fails, `allGather in place ${dtype} x${len}`, out, cat);
      }
      if (want("sendRecv") && n > 1) {
        // A ring: send to the right, receive from the left, both in flight at once.
        const right = (r + 1) % n, left = (r + n - 1) % n;
        const got = make(dtype, len, 0, 0).fill(0);
        await Promise.all([
          comm.send(inputs[r]!, right, 7, o),
          comm.recv(got, left, 7, o),
        ]);
        check(fails, `send/recv ${dtype} x${len}`, got, inputs[left]!);
      }
      if (want("barrier")) await comm.barrier();
    }
  }
  return fails;
}
