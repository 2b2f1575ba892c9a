/**
 * The Communicator contract shared by every transport (shared memory, TCP, hierarchical),
 * the error a caller is meant to catch, and the argument checks every transport runs first.
 *
 * @module
 */

/** Reduction applied element-wise by {@linkcode Communicator.allReduce} and friends. */
export type ReduceOp = "sum" | "max" | "min" | "avg";

/**
 * Element type of a collective buffer. Float16 and bfloat16 travel as `Uint16Array` and are
 * reduced in float32 precision, then rounded back (round to nearest even).
 */
export type DType = "float32" | "int32" | "float16" | "bfloat16";

/** Any buffer a collective accepts. A `Uint16Array` needs `dtype` "float16" or "bfloat16". */
export type CollectiveBuffer = Float32Array | Int32Array | Uint16Array;

/** Options accepted by every collective. */
export interface CollectiveOptions {
  /** Milliseconds before the op rejects with a {@linkcode CollectiveError}; default 30 000. */
  timeoutMs?: number;
  /** Element type; inferred from the array type except for `Uint16Array` (required there). */
  dtype?: DType;
}

/** Default timeout for every collective, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * A group of ranks that run collectives together. Every op returns a Promise; every rank of the
 * group must call the same ops in the same order with matching sizes. When a peer dies, stalls
 * or calls something else, every pending op rejects with a {@linkcode CollectiveError}.
 */
export interface Communicator {
  /** This rank's index in the group, 0 <= rank < size. */
  readonly rank: number;
  /** Number of ranks in the group. */
  readonly size: number;
  /** Human-readable group label used in errors, e.g. `"world"` or `"world/split(1)"`. */
  readonly name: string;
  /** Name of the transport: `"shm"`, `"tcp"`, `"hierarchical"`, `"mpi"` or `"solo"`. */
  readonly transport: string;

  /** Reduce `buf` element-wise across all ranks; every rank ends with the result in `buf`. */
  allReduce(buf: CollectiveBuffer, op?: ReduceOp, opts?: CollectiveOptions): Promise<void>;
  /**
   * Reduce `input` (length `size * output.length`) across ranks and leave chunk `rank` of the
   * result in `output`.
   */
  reduceScatter(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    op?: ReduceOp,
    opts?: CollectiveOptions,
  ): Promise<void>;
  /** Concatenate every rank's `input` in rank order into `output` (length `size * input.length`). */
  allGather(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void>;
  /** Copy `buf` of rank `root` into `buf` of every rank. */
  broadcast(buf: CollectiveBuffer, root: number, opts?: CollectiveOptions): Promise<void>;
  /** Reduce `buf` across ranks into `buf` of rank `root`; other ranks' `buf` is left unchanged. */
  reduce(
    buf: CollectiveBuffer,
    root: number,
    op?: ReduceOp,
    opts?: CollectiveOptions,
  ): Promise<void>;
  /**
   * Chunk `j` of rank `i`'s `input` lands as chunk `i` of rank `j`'s `output`. Both have the same
   * length, divisible by `size`.
   */
  allToAll(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void>;
  /** Send `buf` to `peer`; matched by a `recv` on `peer` with the same tag and length. */
  send(buf: CollectiveBuffer, peer: number, tag?: number, opts?: CollectiveOptions): Promise<void>;
  /** Receive into `buf` from `peer` the message sent with the same tag. */
  recv(buf: CollectiveBuffer, peer: number, tag?: number, opts?: CollectiveOptions): Promise<void>;
  /** Resolve once every rank of the group has entered the barrier. */
  barrier(opts?: CollectiveOptions): Promise<void>;
  /**
   * Collective over the whole group: ranks with the same `color` form a new group, ordered by
   * `key` (then by old rank). A negative color returns `null` (the rank joins no group).
   */
  split(color: number, key?: number): Promise<Communicator | null>;
  /** Release the group's resources. Pending ops reject. */
  close(): Promise<void>;
}

/** Why a collective failed. */
export type CollectiveFailure = "timeout" | "peer-lost" | "mismatch" | "closed" | "protocol";

/**
 * A collective that could not complete: a peer died, stalled past the timeout, or called a
 * different op or size. Raised on every surviving rank, naming the op, group and lost rank.
 */
export class CollectiveError extends Error {
  /** The op that failed, e.g. `"allReduce"`. */
  readonly op: string;
  /** The group's name. */
  readonly group: string;
  /** The rank (in the group) that was lost or mismatched, when known. */
  readonly peer: number | undefined;
  /** What went wrong. */
  readonly reason: CollectiveFailure;

  /**
   * Build the error; the message names the op, the group, the reason and the rank.
   *
   * @param reason what went wrong
   * @param op the op that failed
   * @param group the group's name
   * @param peer the rank that was lost or mismatched, when known
   * @param detail extra words for the message
   */
  constructor(
    reason: CollectiveFailure,
    op: string,
    group: string,
    peer: number | undefined,
    detail: string,
  ) {
    const who = peer === undefined ? "" : ` (rank ${peer})`;
    super(`${op} on group "${group}" failed: ${reason}${who}: ${detail}`);
    this.name = "CollectiveError";
    this.op = op;
    this.group = group;
    this.peer = peer;
    this.reason = reason;
  }
}

/**
 * Resolve the dtype of a buffer, throwing a `TypeError` that says how to fix a missing one.
 *
 * @param buf the buffer
 * @param dtype the dtype the caller gave, if any
 * @returns the buffer's element type
 */
export function dtypeOf(buf: CollectiveBuffer, dtype?: DType): DType {
  if (buf instanceof Float32Array) {
    if (dtype !== undefined && dtype !== "float32") {
      throw new TypeError(
        `dtype "${dtype}" does not match a Float32Array: pass "float32" or omit it`,
      );
    }
    return "float32";
  }
  if (buf instanceof Int32Array) {
    if (dtype !== undefined && dtype !== "int32") {
      throw new TypeError(`dtype "${dtype}" does not match an Int32Array: pass "int32" or omit it`);
    }
    return "int32";
  }
  if (buf instanceof Uint16Array) {
    if (dtype !== "float16" && dtype !== "bfloat16") {
      throw new TypeError(
        `A Uint16Array needs { dtype: "float16" } or { dtype: "bfloat16" } to say what it holds`,
      );
    }
    return dtype;
  }
  throw new TypeError(
    `Unsupported buffer type ${
      (buf as object)?.constructor?.name
    }: use Float32Array, Int32Array, or Uint16Array with a dtype`,
  );
}
