/**
 * WebAssembly SIMD folds over a {@link ./arena.ts} memory, for the shared-memory transport:
 * `dst = a op b` and, for two ranks, `a = b = a op b` in one pass (read two streams, write two:
 * the traffic of a plain copy). Generated here byte by byte; one instance per thread and arena.
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

function uleb(out: number[], n: number): void {
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
}

function vec(out: number[], bytes: number[]): void {
  uleb(out, bytes.length);
  out.push(...bytes);
}

function str(out: number[], s: string): void {
  vec(out, [...new TextEncoder().encode(s)]);
}

const I32 = 0x7f, F32 = 0x7d, V128 = 0x7b;
const SIMD = 0xfd;
// Local indices: params first.
const get = (i: number) => [0x20, i], set = (i: number) => [0x21, i];
const load = [SIMD, 0x00, 0x00, 0x00]; // v128.load align=1 offset=0
const store = [SIMD, 0x0b, 0x00, 0x00];
const add = [0x6a]; // i32.add
const i32c = (v: number) => {
  const o = [0x41];
  // small non-negative constants only
  uleb(o, v);
  return o;
};

/** Vector op bytes per dtype and reduction. */
const OPS: Record<string, number[]> = {
  f32sum: [SIMD, 0xe4, 0x01],
  f32max: [SIMD, 0xe9, 0x01],
  f32min: [SIMD, 0xe8, 0x01],
  i32sum: [SIMD, 0xae, 0x01],
  i32max: [SIMD, 0xb8, 0x01],
  i32min: [SIMD, 0xb6, 0x01],
};

/** `for (i = 0; i < nbytes; i += 16) body(i)` with i in local `i`, nbytes in local `n`. */
function loop(i: number, n: number, body: number[]): number[] {
  return [
    0x02,
    0x40, // block
    0x03,
    0x40, // loop
    ...get(i),
    ...get(n),
    0x4f,
    0x0d,
    0x01, // i32.ge_u; br_if 1
    ...body,
    ...get(i),
    ...i32c(16),
    ...add,
    ...set(i),
    0x0c,
    0x00, // br 0
    0x0b,
    0x0b, // end loop, end block
  ];
}

interface Fn {
  name: string;
  params: number[];
  locals: number[];
  body: number[];
}

function functions(): Fn[] {
  const fns: Fn[] = [];
  for (const [key, op] of Object.entries(OPS)) {
    // to(dst, a, b, nbytes): dst = a op b. Locals: 4 = i.
    fns.push({
      name: `${key}_to`,
      params: [I32, I32, I32, I32],
      locals: [I32],
      body: loop(4, 3, [
        ...get(0),
        ...get(4),
        ...add,
        ...get(1),
        ...get(4),
        ...add,
        ...load,
        ...get(2),
        ...get(4),
        ...add,
        ...load,
        ...op,
        ...store,
      ]),
    });
    // both(a, b, nbytes): a = b = a op b. Locals: 3 = i, 4 = t.
    fns.push({
      name: `${key}_both`,
      params: [I32, I32, I32],
      locals: [I32, V128],
      body: loop(3, 2, [
        ...get(0),
        ...get(3),
        ...add,
        ...load,
        ...get(1),
        ...get(3),
        ...add,
        ...load,
        ...op,
        ...set(4),
        ...get(0),
        ...get(3),
        ...add,
        ...get(4),
        ...store,
        ...get(1),
        ...get(3),
        ...add,
        ...get(4),
        ...store,
      ]),
    });
  }
  // f32div(dst, nbytes, k): dst /= k. Locals: 3 = i, 4 = splat(k).
  fns.push({
    name: "f32div",
    params: [I32, I32, F32],
    locals: [I32, V128],
    body: [
      ...get(2),
      SIMD,
      0x13,
      ...set(4), // f32x4.splat
      ...loop(3, 1, [
        ...get(0),
        ...get(3),
        ...add,
        ...get(0),
        ...get(3),
        ...add,
        ...load,
        ...get(4),
        SIMD,
        0xe7,
        0x01, // f32x4.div
        ...store,
      ]),
    ],
  });
  return fns;
}

function moduleBytes(maxPages: number): Uint8Array {
  const fns = functions();
  const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const section = (id: number, body: number[]) => {
    out.push(id);
    vec(out, body);
  };
  const types: number[] = [];
  uleb(types, fns.length);
  for (const f of fns) {
    types.push(0x60);
    vec(types, f.params);
    types.push(0x00);
  }
  section(1, types);
  const imports: number[] = [1];
  str(imports, "m");
  str(imports, "memory");
  imports.push(0x02, 0x03); // memory, limits: shared with maximum
  uleb(imports, 1);
  uleb(imports, maxPages);
  section(2, imports);
  const funcs: number[] = [];
  uleb(funcs, fns.length);
  fns.forEach((_, i) => uleb(funcs, i));
  section(3, funcs);
  const exports: number[] = [];
  uleb(exports, fns.length);
  fns.forEach((f, i) => {
    str(exports, f.name);
    exports.push(0x00);
    uleb(exports, i);
  });
  section(7, exports);
  const code: number[] = [];
  uleb(code, fns.length);
  for (const f of fns) {
    const body: number[] = [];
    uleb(body, f.locals.length);
    for (const t of f.locals) body.push(1, t);
    body.push(...f.body, 0x0b);
    vec(code, body);
  }
  section(10, code);
  return new Uint8Array(out);
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
    const mod = new WebAssembly.Module(moduleBytes(65536) as BufferSource);
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
