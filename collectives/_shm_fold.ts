/**
 * WebAssembly SIMD folds over a {@link ./arena.ts} memory, for the shared-memory transport:
 * `dst = a op b` and, for two ranks, `a = b = a op b` in one pass (read two streams, write two:
 * the traffic of a plain copy). Generated at start-up with the encoder of `wasm/encode.ts`; one
 * instance per thread and arena.
 *
 * Results equal the JavaScript folds of reduce.ts bit for bit: a float32 add, max, min or divide
 * computed in double and rounded once to float32 equals the float32 operation, and
 * `f32x4.max`/`min` follow `Math.max`/`min` (NaN wins, -0 < +0).
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { finishAvg, reduceTo } from "./reduce.ts";
import type { SharedArena } from "./arena.ts";
import { Code, F32, I32, ModuleBuilder, V128 } from "../wasm/encode.ts";

/** Vector op per dtype and reduction. */
const OPS: Record<string, (c: Code) => Code> = {
  f32sum: (c) => c.f32x4Add(),
  f32max: (c) => c.f32x4Max(),
  f32min: (c) => c.f32x4Min(),
  i32sum: (c) => c.i32x4Add(),
  i32max: (c) => c.i32x4MaxS(),
  i32min: (c) => c.i32x4MinS(),
};

/** `v128.load` of the vector at local `base` plus local `i`, with no alignment hint. */
const load = (c: Code, base: number, i: number) => c.get(base).get(i).add().v128Load(0, 0);

/** `for (i = 0; i < nbytes; i += 16) body()` with i in local `i`, nbytes in local `n`. */
function loop(c: Code, i: number, n: number, body: () => void): Code {
  c.block().loop().get(i).get(n).geU().brIf(1);
  body();
  return c.get(i).i32(16).add().set(i).br(0).end().end();
}

function moduleBytes(maxPages: number): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder().importMemory("m", "memory", {
    initial: 1,
    maximum: maxPages,
    shared: true,
  });
  for (const [key, op] of Object.entries(OPS)) {
    // to(dst, a, b, nbytes): dst = a op b. Locals: 4 = i.
    const to = new Code();
    loop(to, 4, 3, () => {
      to.get(0).get(4).add();
      op(load(load(to, 1, 4), 2, 4)).v128Store(0, 0);
    });
    m.add({ exportName: `${key}_to`, params: [I32, I32, I32, I32], locals: [I32], body: to.bytes });
    // both(a, b, nbytes): a = b = a op b. Locals: 3 = i, 4 = t.
    const both = new Code();
    loop(both, 3, 2, () => {
      op(load(load(both, 0, 3), 1, 3)).set(4);
      both.get(0).get(3).add().get(4).v128Store(0, 0);
      both.get(1).get(3).add().get(4).v128Store(0, 0);
    });
    m.add({
      exportName: `${key}_both`,
      params: [I32, I32, I32],
      locals: [I32, V128],
      body: both.bytes,
    });
  }
  // f32div(dst, nbytes, k): dst /= k. Locals: 3 = i, 4 = splat(k).
  const div = new Code().get(2).f32x4Splat().set(4);
  loop(div, 3, 1, () => {
    div.get(0).get(3).add();
    load(div, 0, 3).get(4).f32x4Div().v128Store(0, 0);
  });
  m.add({ exportName: "f32div", params: [I32, I32, F32], locals: [I32, V128], body: div.bytes });
  return m.bytes();
}

type To = (dst: number, a: number, b: number, nbytes: number) => void;
type Both = (a: number, b: number, nbytes: number) => void;

const folds = new WeakMap<SharedArena, ArenaFold>();

/**
 * This thread's folds over `arena`, when `views` all lie in it and the dtype and reduction run in
 * SIMD; else undefined (the caller folds with reduce.ts).
 */
export function arenaFold(
  arena: SharedArena | undefined,
  dtype: DType,
  op: ReduceOp,
  ...views: CollectiveBuffer[]
): ArenaFold | undefined {
  if (arena === undefined || !ArenaFold.supports(dtype, op)) return undefined;
  for (const v of views) if (!arena.owns(v)) return undefined;
  let f = folds.get(arena);
  if (f === undefined) folds.set(arena, f = new ArenaFold(arena));
  return f;
}

/** SIMD folds over one arena, for one thread. */
export class ArenaFold {
  #to: Record<string, To>;
  #both: Record<string, Both>;
  #div: (dst: number, nbytes: number, k: number) => void;

  constructor(arena: SharedArena) {
    // An import declared with the largest maximum accepts every arena.
    const mod = new WebAssembly.Module(moduleBytes(65536));
    const inst = new WebAssembly.Instance(mod, { m: { memory: arena.memory } });
    const ex = inst.exports as Record<string, unknown>;
    this.#to = {};
    this.#both = {};
    for (const key of Object.keys(OPS)) {
      this.#to[key] = ex[`${key}_to`] as To;
      this.#both[key] = ex[`${key}_both`] as Both;
    }
    this.#div = ex.f32div as (dst: number, nbytes: number, k: number) => void;
  }

  /** Whether this dtype and reduction run in SIMD (else the caller uses reduce.ts). */
  static supports(dtype: DType, op: ReduceOp): boolean {
    return dtype === "float32" || (dtype === "int32" && op !== "avg");
  }

  /**
   * `dst = a op b` element-wise (`"avg"` adds), for views on the arena of equal length; `dst`
   * may alias `a` or `b` element for element.
   */
  to(dst: CollectiveBuffer, a: CollectiveBuffer, b: CollectiveBuffer, op: ReduceOp, dtype: DType) {
    const n = dst.length, v = n & ~3;
    const key = (dtype === "int32" ? "i32" : "f32") + (op === "avg" ? "sum" : op);
    if (v > 0) this.#to[key]!(dst.byteOffset, a.byteOffset, b.byteOffset, v * 4);
    if (v < n) reduceTo(dst.subarray(v), a.subarray(v), b.subarray(v), op, dtype);
  }

  /** `a = b = a op b` (for `"avg"` over two ranks: divided by 2) in one pass. */
  both(a: CollectiveBuffer, b: CollectiveBuffer, op: ReduceOp, dtype: DType) {
    const n = a.length, v = n & ~3;
    const key = (dtype === "int32" ? "i32" : "f32") + (op === "avg" ? "sum" : op);
    if (op === "avg") {
      this.to(a, a, b, op, dtype);
      this.finishAvg(a, 2, dtype);
      b.set(a);
      return;
    }
    if (v > 0) this.#both[key]!(a.byteOffset, b.byteOffset, v * 4);
    if (v < n) {
      const at = a.subarray(v);
      reduceTo(at, at, b.subarray(v), op, dtype);
      b.set(at, v);
    }
  }

  /** Divide by `size` (float32 in SIMD; int32 truncates in JavaScript). */
  finishAvg(buf: CollectiveBuffer, size: number, dtype: DType) {
    if (dtype !== "float32" || size === 1) return finishAvg(buf, size, dtype);
    const n = buf.length, v = n & ~3;
    if (v > 0) this.#div(buf.byteOffset, v * 4, size);
    if (v < n) finishAvg(buf.subarray(v), size, dtype);
  }
}
