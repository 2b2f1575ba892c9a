/**
 * Layout of a shared-memory group's control words, the op context, and small helpers shared by
 * shm.ts and its point-to-point channels.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";

export const CTRL_STRIDE = 32; // int32 words per rank: 128 bytes, no false sharing between ranks
export const STEP = 0;
export const CLOSED = 2;
/** 1 + the rank this rank's group failed on (it will take part in no further round), or 0. */
export const ABORT = 3;
export const DESC = 8; // two descriptors of 8 words, by op parity
/** Two words (by op parity): the id of the arena the rank's thread maps, or 0. */
export const D_ARENA = 24;
// After the rank blocks, one group block: the arrival counter every round adds to.
export const ARRIVED = 0;
export const G_WAITERS = 1;
export const D_OP = 0, D_COUNT = 1, D_DTYPE = 2, D_RED = 3, D_ROOT = 4, D_SEQ = 5, D_A = 6, D_B = 7;

export const CH_STRIDE = 16; // int32 words per directed channel
export const C_SENT = 0, C_ACK = 1, C_SWAIT = 2, C_RWAIT = 3, C_HDR = 8; // 2 x [msg, tag, len, dtype]

export const POLL_MS = 10;
/** Elements folded per step of an in-place reduction: the scratch stays in cache. */
export const FOLD_CHUNK = 1 << 15;

export const OPS = [
  "barrier",
  "allReduce",
  "reduceScatter",
  "allGather",
  "broadcast",
  "reduce",
  "allToAll",
  "split",
] as const;
export type OpName = typeof OPS[number];
export const DTYPES: DType[] = ["float32", "int32", "float16", "bfloat16"];
export const REDS: ReduceOp[] = ["sum", "max", "min", "avg"];

/** One op in flight. */
export interface Ctx {
  op: string;
  /** Timeout in ms; the clock starts when the op first has to wait (reading it costs ~0.4 us). */
  ms: number;
  /** performance.now() deadline, 0 until the op first waits. */
  deadline: number;
}

/** Largest power of two <= x, at least `floor`. */
export function pow2Below(x: number, floor: number): number {
  return Math.max(floor, 2 ** Math.floor(Math.log2(Math.max(1, x))));
}

export function overlaps(x: CollectiveBuffer, y: CollectiveBuffer): boolean {
  return x.buffer === y.buffer && x.byteOffset < y.byteOffset + y.byteLength &&
    y.byteOffset < x.byteOffset + x.byteLength;
}

export function sub(buf: CollectiveBuffer, a: number, b: number): CollectiveBuffer {
  return a === 0 && b === buf.length ? buf : buf.subarray(a, b);
}

export function describe(d: number[]): string {
  const op = OPS[d[D_OP]!] ?? `op#${d[D_OP]}`;
  const red = d[D_RED]! >= 0 ? ` ${REDS[d[D_RED]!]}` : "";
  const root = d[D_ROOT]! >= 0 ? ` root ${d[D_ROOT]}` : "";
  return `${op}${red} of ${d[D_COUNT]} ${DTYPES[d[D_DTYPE]!] ?? "?"}${root} (op #${d[D_SEQ]})`;
}

export function bytesOf(dtype: DType): number {
  return dtype === "float32" || dtype === "int32" ? 4 : 2;
}

export function checkOp(op: ReduceOp): void {
  if (!REDS.includes(op)) {
    throw new TypeError(`Unknown reduce op "${op}": use "sum", "max", "min" or "avg"`);
  }
}

export function checkTimeout(ms: number): number {
  if (typeof ms !== "number" || !(ms > 0)) {
    throw new RangeError(`timeoutMs must be a positive number of milliseconds, got ${ms}`);
  }
  return ms;
}
