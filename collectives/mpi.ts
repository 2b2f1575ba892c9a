/**
 * A {@linkcode Communicator} over the system's MPI library (Open MPI's `libmpi.so.40`) through
 * Deno's FFI, for clusters whose MPI already drives the fast network (InfiniBand, RoCE,
 * Omni-Path): start the ranks with `mpirun`, call {@linkcode connectMpi} in each.
 *
 * ```sh
 * mpirun -np 2 deno run -A train.ts            # train.ts picks this transport under mpirun
 * deno test -A tests/collectives/mpi_test.ts   # starts its rank programs under mpirun
 * ```
 *
 * How it waits. Every op is MPI's non-blocking call (`MPI_Iallreduce`, `MPI_Ibcast`,
 * `MPI_Isend`, `MPI_Ibarrier`, ...) polled with `MPI_Test` from the JavaScript thread: a spin of
 * 50 us right after the call (a small op is usually done by then), then one test per turn of
 * the event loop (a `MessageChannel` message, a few microseconds), so timers, I/O and other
 * ops keep running while an op is in flight; after a second with nothing completing, a test
 * burst every millisecond. Open MPI makes progress only inside MPI calls, so an op moves while
 * the event loop turns, not during a long synchronous computation (like the TCP transport).
 * The alternative, the blocking call (`MPI_Allreduce`) run on a separate thread by FFI's
 * `nonblocking: true`, was measured against it with bench/_mpi_wait.ts (2 ranks on a 2-core
 * machine shared with other work, Open MPI 4.1.4 over shared memory; medians of 3 interleaved
 * rounds, us per float32 all-reduce):
 *
 * | size   | polled, libnbc's ring | polled, libnbc's default | on an FFI thread | blocking |
 * | ------ | --------------------- | ------------------------ | ---------------- | -------- |
 * | 4 KiB  | 6.3                   | 9.4                      | 9.4              | 3.2      |
 * | 64 KiB | 22.5                  | 28.8                     | 25.6             | 20.8     |
 * | 1 MiB  | 163                   | 363                      | 177              | 161      |
 * | 16 MiB | 2374                  | 5695                     | 3054             | 2309     |
 *
 * ("blocking" is `MPI_Allreduce` on the JavaScript thread, which freezes the event loop: the
 * floor.) Polling is the faster of the two that keep the event loop free, at every size, once
 * Open MPI's non-blocking all-reduce (libnbc) runs its ring: its own choice with fewer than 4
 * ranks, a binomial tree, is 2.4x slower for large messages. So all-reduces of more than
 * 64 KiB, and all of them with 2 ranks, set libnbc's `coll_libnbc_iallreduce_algorithm` to the
 * ring for the call (through MPI's tools interface, `MPI_T_cvar_write`); setting
 * `OMPI_MCA_coll_libnbc_iallreduce_algorithm` yourself (or `mpirun --mca`) turns that off.
 * A call blocked on a thread also could not time out (MPI cannot cancel it, MPI cannot be
 * finalized while a thread is inside it, and the pending call keeps the process alive), and
 * needs `MPI_THREAD_MULTIPLE`.
 *
 * Semantics, as the other transports:
 * - Argument checks and their errors are those of the TCP transport. Tags go up to the
 *   library's `MPI_TAG_UB` (2^31 - 1 with Open MPI's default ob1 layer).
 * - Float16 and bfloat16 sums are computed in float32 (each rank's values widened, summed by
 *   MPI, rounded back once); max and min of every float type run on order-preserving integer
 *   keys, so they propagate NaN and order -0 below +0 like `Math.max`/`Math.min` (MPI's own
 *   float max does neither). `"avg"` sums, then divides (see {@linkcode finishAvg}). MPI picks
 *   the reduction order; every rank gets the same bits, though not necessarily those of the
 *   TCP transport's order.
 * - `send` copies its buffer and resolves at once (the peer need not be receiving yet); a
 *   `recv` whose message has another length or element type rejects with `"mismatch"` (and
 *   the group stays usable). Each message travels as a 16-byte header then the payload, with
 *   the same tag.
 * - An op that does not complete within its timeout rejects with a `"timeout"`
 *   {@linkcode CollectiveError} naming the op (and the peer, for `recv`). MPI cannot cancel a
 *   collective: it stays posted inside MPI (its buffer may still be written if the late ranks
 *   arrive), the group is failed and rejects every later op at once, and a pending `recv` is
 *   cancelled. Other groups (the world after a sub-group failed, or the reverse) keep working.
 *   `close()` of the world still finalizes MPI; `mpirun` then ends the job normally once
 *   every rank has closed.
 * - A rank that dies makes `mpirun` end the whole job, so ops see no `"peer-lost"`. MPI does
 *   not check that the ranks of a collective agree on its op and size: where they differ, a
 *   rank sees a `"mismatch"` when MPI reports a truncated message, a timeout, or (the rank
 *   with the longer buffer) wrong values past the others' length.
 * - `split` waits for the whole group in a polled barrier, then calls `MPI_Comm_split` (a
 *   blocking call, but every rank is then already calling it); the group's collectives issued
 *   meanwhile are held back, so every rank starts them in the same order.
 *
 * Running under `mpirun` in a container as root needs `--allow-run-as-root` (or
 * `OMPI_ALLOW_RUN_AS_ROOT=1` and `OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`) and, with more ranks than
 * cores, `--oversubscribe`.
 *
 * @module
 */
import { checkGatherShape, checkOp, checkScatterShape, checkTimeout, sameType } from "./_args.ts";
import {
  type CollectiveBuffer,
  CollectiveError,
  type CollectiveOptions,
  type Communicator,
  DEFAULT_TIMEOUT_MS,
  type DType,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";
import { f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, finishAvg } from "./reduce.ts";
import {
  addressOf,
  handleAt,
  loadMpi,
  MPI_ERR_IN_STATUS,
  MPI_ERR_TRUNCATE,
  MPI_IN_PLACE,
  MPI_SUCCESS,
  MPI_TAG_UB,
  MPI_THREAD_FUNNELED,
  MPI_UNDEFINED,
  mpiErrorString,
  type MpiLib,
  mpiLibraryVersion,
  promoteGlobal,
  STATUS_BYTES,
  STATUS_ERROR,
} from "./_mpi_ffi.ts";

export { MpiLoadError } from "./_mpi_ffi.ts";

/** Options of {@linkcode connectMpi}. */
export interface MpiOptions {
  /** Default timeout of every op, in milliseconds; default {@linkcode DEFAULT_TIMEOUT_MS}. */
  opTimeoutMs?: number;
  /**
   * The MPI library to load: a file name the dynamic linker finds or a path. Default: the
   * `LOOM_MPI_LIBRARY` environment variable, else `libmpi.so.40` (Open MPI 3 to 5).
   */
  library?: string;
}

/**
 * Whether {@linkcode connectMpi} can load MPI here: FFI is permitted and an Open MPI
 * `libmpi` loads. It does not start MPI, and says nothing of `mpirun`.
 *
 * @example Choose the transport
 * ```ts ignore
 * import { connectMpi, launchedByMpirun, mpiAvailable } from "./mpi.ts";
 * if (launchedByMpirun(Deno.env.toObject()) && mpiAvailable()) {
 *   const world = await connectMpi();
 *   console.log(world.rank, world.size);
 *   await world.close();
 * }
 * ```
 *
 * @param library as {@linkcode MpiOptions.library}
 * @returns true when the library loads
 */
export function mpiAvailable(library?: string): boolean {
  try {
    loadMpi(library);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether this process was started by an MPI launcher: Open MPI's `mpirun` sets
 * `OMPI_COMM_WORLD_RANK`, PMIx launchers (`srun --mpi=pmix`, `prterun`) `PMIX_RANK`.
 *
 * @param env the environment, e.g. `Deno.env.toObject()`
 * @returns true when one of them is set
 */
export function launchedByMpirun(env: Record<string, string | undefined>): boolean {
  return env.OMPI_COMM_WORLD_RANK !== undefined || env.PMIX_RANK !== undefined;
}

/**
 * Start MPI in this process (`MPI_Init_thread`, once per process) and return the world's
 * communicator (group name `"world"`, transport `"mpi"`); its `close()` finalizes MPI, which
 * cannot start again in the same process. Run under `mpirun`; started without it, Open MPI
 * makes a world of one rank.
 *
 * @example
 * ```ts ignore
 * // mpirun -np 2 deno run -A example.ts
 * import { connectMpi } from "./mpi.ts";
 * const world = await connectMpi();
 * const x = new Float32Array([world.rank + 1]);
 * await world.allReduce(x); // x[0] === 3 on both ranks
 * await world.close();
 * ```
 *
 * @param opts the library and the default timeout
 * @returns the world communicator
 * @throws {MpiLoadError} when `libmpi` cannot be loaded (the message names what to install)
 */
export function connectMpi(opts: MpiOptions = {}): Promise<Communicator> {
  try {
    return Promise.resolve(start(opts));
  } catch (e) {
    return Promise.reject(e);
  }
}

// ---- the process's MPI session: the library, its handles, the progress loop ----------------

/** A small op that is not done after this spin waits with the event loop free. */
const SPIN_MS = 0.05;
/** With no op completing for this long, the loop tests in bursts once a millisecond. */
const BUSY_MS = 1000;
/** The length of such a burst. */
const BURST_MS = 0.2;
/** The message channel that schedules the loop closes after being unused this long. */
const IDLE_CLOSE_MS = 1000;
/** The MCA variable of Open MPI's non-blocking all-reduce algorithm (libnbc). */
const NBC_ALLREDUCE_VAR = "coll_libnbc_iallreduce_algorithm";
/** Its values: libnbc's own choice (a binomial tree with fewer than 4 ranks), and the ring. */
const NBC_DEFAULT = 0, NBC_RING = 1;
/** All-reduces above this size (and all of them with 2 ranks) take libnbc's ring. */
const RING_ABOVE_BYTES = 64 * 1024;
/** Magic number of a point-to-point header ("LOOM"). */
const P2P_MAGIC = 0x4c4f4f4d;
const DTYPES: readonly DType[] = ["float32", "int32", "float16", "bfloat16"];

/** An op in flight: its MPI requests, what to do when they finish, and its promise. */
interface Op {
  comm: MpiComm;
  name: string;
  /** Call number within the group (collectives), else 0. */
  seq: number;
  peer: number | undefined;
  timeoutMs: number;
  deadline: number;
  collective: boolean;
  /** A split: the group's later collectives wait until it is done. */
  gates: boolean;
  reqs: BigUint64Array;
  statuses: Uint8Array | null;
  /** Buffers MPI reads or writes until the requests complete. */
  keep: unknown[];
  posted: boolean;
  done: boolean;
  /** Receives are cancelled when the op fails. */
  cancel: boolean;
  post(reqs: BigUint64Array): number;
  finish(statuses: Uint8Array | null): unknown;
  /** The error for a failed MPI completion (default: from the code). */
  failure?(code: number, statuses: Uint8Array | null): CollectiveError;
  resolve(value: unknown): void;
  reject(e: unknown): void;
}

/** What {@linkcode MpiComm} settles before an op: its name, number, deadline. */
interface OpBase {
  name: string;
  seq: number;
  timeoutMs: number;
  deadline: number;
  collective: boolean;
}

/** Requests nobody waits for: buffered sends (keep the loop awake) and abandoned ops. */
interface Loose {
  reqs: BigUint64Array;
  keep: unknown[];
  onError?: (code: number) => void;
}

class Session {
  readonly lib: MpiLib;
  readonly library: string;
  readonly version: string;
  readonly timeoutMs: number;
  readonly tagUb: number;
  readonly ownsInit: boolean;
  finalized = false;
  readonly comms = new Set<MpiComm>();
  readonly active: Op[] = [];
  readonly sends: Loose[] = [];
  readonly abandoned: Loose[] = [];
  readonly types: Record<DType | "int16", Deno.PointerValue>;
  readonly requestNull: bigint;
  readonly commNull: bigint;
  #flag = new Int32Array(1);
  #lastProgress = 0;
  #token = 0;
  #scheduled: "micro" | "channel" | "timer" | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #channel: MessageChannel | null = null;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  /** The tools-interface handle of {@linkcode NBC_ALLREDUCE_VAR}, and the value last set. */
  #algo: { handle: BigUint64Array; current: number } | null;

  constructor(
    lib: MpiLib,
    library: string,
    timeoutMs: number,
    tagUb: number,
    ownsInit: boolean,
  ) {
    this.lib = lib;
    this.library = library;
    this.version = mpiLibraryVersion(lib);
    this.timeoutMs = timeoutMs;
    this.tagUb = tagUb;
    this.ownsInit = ownsInit;
    this.types = {
      float32: lib.ompi_mpi_float,
      int32: lib.ompi_mpi_int32_t,
      float16: lib.ompi_mpi_uint16_t,
      bfloat16: lib.ompi_mpi_uint16_t,
      int16: lib.ompi_mpi_int16_t,
    };
    this.requestNull = BigInt(Deno.UnsafePointer.value(lib.ompi_request_null));
    this.commNull = BigInt(Deno.UnsafePointer.value(lib.ompi_mpi_comm_null));
    this.#algo = this.#tuning();
  }

  /**
   * A handle to set libnbc's all-reduce algorithm per call, unless the user chose one
   * (`OMPI_MCA_coll_libnbc_iallreduce_algorithm`, or `mpirun --mca`) or the library lacks it.
   */
  #tuning(): { handle: BigUint64Array; current: number } | null {
    const lib = this.lib;
    try {
      if (Deno.env.get(`OMPI_MCA_${NBC_ALLREDUCE_VAR}`) !== undefined) return null;
    } catch {
      return null; // no permission to read the environment: leave MPI's defaults alone
    }
    if (
      lib.MPI_T_init_thread === null || lib.MPI_T_cvar_get_index === null ||
      lib.MPI_T_cvar_handle_alloc === null || lib.MPI_T_cvar_write === null ||
      lib.MPI_T_finalize === null
    ) return null;
    if (lib.MPI_T_init_thread(MPI_THREAD_FUNNELED, new Int32Array(1)) !== MPI_SUCCESS) return null;
    const index = new Int32Array(1), count = new Int32Array(1), handle = new BigUint64Array(1);
    const name = new TextEncoder().encode(NBC_ALLREDUCE_VAR + "\0");
    if (
      lib.MPI_T_cvar_get_index(name, index) !== MPI_SUCCESS ||
      lib.MPI_T_cvar_handle_alloc(index[0]!, null, handle, count) !== MPI_SUCCESS ||
      count[0] !== 1
    ) {
      lib.MPI_T_finalize();
      return null;
    }
    return { handle, current: -1 };
  }

  /**
   * Before an all-reduce of `bytes` in a group of `size`: libnbc's ring for large messages and
   * pairs (its default binomial tree is 2.4x slower at 16 MiB here), its own choice otherwise.
   * Every rank makes the same choice for the same call.
   */
  chooseAllReduce(bytes: number, size: number): void {
    const a = this.#algo;
    if (a === null) return;
    const want = size === 2 || bytes > RING_ABOVE_BYTES ? NBC_RING : NBC_DEFAULT;
    if (want === a.current) return;
    if (this.lib.MPI_T_cvar_write!(handleAt(a.handle), new Int32Array([want])) === MPI_SUCCESS) {
      a.current = want;
    }
  }

  /** Release the tools interface (before finalizing MPI). */
  endTuning(): void {
    if (this.#algo === null) return;
    this.lib.MPI_T_cvar_handle_free?.(this.#algo.handle);
    this.lib.MPI_T_finalize?.();
    this.#algo = null;
  }

  /** -1 while pending; else MPI's return code (0 when done without error). */
  test(reqs: BigUint64Array, statuses: Uint8Array | null): number {
    const flag = this.#flag;
    flag[0] = 0;
    const rc = reqs.length === 1
      ? this.lib.MPI_Test(reqs, flag, statuses)
      : this.lib.MPI_Testall(reqs.length, reqs, flag, statuses);
    if (rc !== MPI_SUCCESS) return rc;
    return flag[0] !== 0 ? 0 : -1;
  }

  /** Cancel every request of `reqs` that is still pending (receives only, in MPI). */
  cancelPending(reqs: BigUint64Array): void {
    for (let i = 0; i < reqs.length; i++) {
      if (reqs[i] !== this.requestNull && reqs[i] !== 0n) {
        this.lib.MPI_Cancel(reqs.subarray(i, i + 1));
      }
    }
  }

  /** Start an op: post it (unless a split holds its group's collectives back) and wake up. */
  add(op: Op): void {
    this.active.push(op);
    this.wake();
  }

  /** Note activity and make sure the loop runs soon. */
  wake(): void {
    this.#lastProgress = performance.now();
    if (this.#scheduled === "micro" || this.#scheduled === "channel") return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#scheduled = "micro";
    const token = ++this.#token;
    queueMicrotask(() => {
      if (token === this.#token) this.#tick(SPIN_MS);
    });
  }

  #awake(): boolean {
    return this.active.length > 0 || this.sends.length > 0;
  }

  /** Test everything once; true when something completed. */
  #pass(): boolean {
    let finished: [Op, number][] | null = null;
    const active = this.active;
    for (let i = 0; i < active.length; i++) {
      const op = active[i]!;
      if (!op.posted || op.done) continue;
      const rc = this.test(op.reqs, op.statuses);
      if (rc >= 0) (finished ??= []).push([op, rc]);
    }
    let progressed = finished !== null;
    // Completing an op may fail others of its group: only once the scan is over.
    if (finished !== null) { for (const [op, rc] of finished) op.comm.complete(op, rc); }
    for (const list of [this.sends, this.abandoned]) {
      for (let i = 0; i < list.length; i++) {
        const l = list[i]!;
        const rc = this.test(l.reqs, null);
        if (rc < 0) continue;
        progressed = true;
        list.splice(i--, 1);
        if (rc !== MPI_SUCCESS) l.onError?.(rc);
      }
    }
    return progressed;
  }

  #tick(budgetMs: number): void {
    this.#scheduled = null;
    if (this.finalized) return;
    const t0 = performance.now();
    let now = t0;
    do {
      if (this.#pass()) this.#lastProgress = performance.now();
      if (!this.#awake()) break;
      now = performance.now();
    } while (now - t0 < budgetMs);
    this.#deadlines(now);
    if (!this.#awake()) {
      this.#idle();
      return;
    }
    const token = ++this.#token;
    if (now - this.#lastProgress > BUSY_MS) {
      this.#scheduled = "timer";
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        if (token === this.#token) this.#tick(BURST_MS);
      }, 1);
      return;
    }
    this.#scheduled = "channel";
    this.#port().postMessage(token);
  }

  #deadlines(now: number): void {
    for (const op of [...this.active]) {
      if (!op.done && now > op.deadline) op.comm.timedOut(op);
    }
  }

  #port(): MessagePort {
    if (this.#idleTimer !== undefined) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
    }
    if (this.#channel === null) {
      const ch = new MessageChannel();
      ch.port1.onmessage = (e: MessageEvent<number>) => {
        if (e.data === this.#token) this.#tick(0);
      };
      this.#channel = ch;
    }
    return this.#channel.port2;
  }

  #idle(): void {
    if (this.#channel === null || this.#idleTimer !== undefined) return;
    const t = setTimeout(() => {
      this.#idleTimer = undefined;
      if (!this.#awake()) this.closeChannel();
    }, IDLE_CLOSE_MS);
    Deno.unrefTimer(t);
    this.#idleTimer = t;
  }

  closeChannel(): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#token++;
    this.#scheduled = null;
    if (this.#channel !== null) {
      this.#channel.port1.close();
      this.#channel.port2.close();
      this.#channel = null;
    }
  }

  /** Wait (polling) until every buffered send has completed, or `ms` passed. */
  async drainSends(ms: number): Promise<void> {
    const end = performance.now() + ms;
    while (this.sends.length > 0 && performance.now() < end) {
      this.#pass();
      await new Promise((res) => setTimeout(res, 0));
    }
  }
}

let session: Session | undefined;
/** Set once this process has finalized MPI. */
let finalizedHere = false;

function start(opts: MpiOptions): Communicator {
  const timeoutMs = opts.opTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  checkTimeout(timeoutMs);
  if (finalizedHere) {
    throw new Error(
      "connectMpi: MPI was finalized in this process (the world was closed) and cannot start " +
        "again: connect once per process and keep the world open",
    );
  }
  if (session !== undefined) {
    throw new Error(
      "connectMpi: MPI is already running in this process: use the world it returned " +
        "(split it for sub-groups)",
    );
  }
  const { lib, path } = loadMpi(opts.library);
  const flag = new Int32Array(1);
  lib.MPI_Finalized(flag);
  if (flag[0] !== 0) {
    throw new Error("connectMpi: MPI was already finalized in this process by other code");
  }
  lib.MPI_Initialized(flag);
  const ownsInit = flag[0] === 0;
  if (ownsInit) {
    promoteGlobal(path);
    const provided = new Int32Array(1);
    const rc = lib.MPI_Init_thread(null, null, MPI_THREAD_FUNNELED, provided);
    if (rc !== MPI_SUCCESS) {
      throw new Error(`connectMpi: MPI_Init_thread failed: ${mpiErrorString(lib, rc)}`);
    }
  }
  const world = lib.ompi_mpi_comm_world;
  lib.MPI_Comm_set_errhandler(world, lib.ompi_mpi_errors_return);
  // A communicator of our own, so that other MPI users in this process never match our ops.
  const slot = new BigUint64Array(1);
  must(lib, lib.MPI_Comm_dup(world, slot), "MPI_Comm_dup");
  const handle = handleAt(slot);
  lib.MPI_Comm_set_errhandler(handle, lib.ompi_mpi_errors_return);
  const value = new BigUint64Array(1);
  const tagUb = lib.MPI_Comm_get_attr(handle, MPI_TAG_UB, value, flag) === MPI_SUCCESS &&
      flag[0] !== 0 && value[0] !== 0n
    ? new Deno.UnsafePointerView(handleAt(value)!).getInt32()
    : 32767;
  session = new Session(lib, path, timeoutMs, tagUb, ownsInit);
  const [rank, size] = rankAndSize(lib, handle);
  return new MpiComm(session, slot, "world", rank, size, true);
}

function must(lib: MpiLib, rc: number, what: string): void {
  if (rc !== MPI_SUCCESS) throw new Error(`${what} failed: ${mpiErrorString(lib, rc)}`);
}

function rankAndSize(lib: MpiLib, handle: Deno.PointerValue): [number, number] {
  const r = new Int32Array(1), n = new Int32Array(1);
  must(lib, lib.MPI_Comm_rank(handle, r), "MPI_Comm_rank");
  must(lib, lib.MPI_Comm_size(handle, n), "MPI_Comm_size");
  return [r[0]!, n[0]!];
}

// ---- element conversions ---------------------------------------------------------------------

let f16Table: Float32Array | undefined;

/** Float16 bits to float32, through a table of all 65536 values. */
function widenF16(src: Uint16Array, dst: Float32Array): void {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  const t = f16Table;
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]!]!;
}

/** Bfloat16 bits to float32: the high half of the float32's bits. */
function widenBf16(src: Uint16Array, dst: Float32Array): void {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
}

function widen(src: Uint16Array, dtype: DType): Float32Array {
  const out = new Float32Array(src.length);
  if (dtype === "float16") widenF16(src, out);
  else widenBf16(src, out);
  return out;
}

/** Round float32 values to float16 or bfloat16 bits (nearest even). */
function narrow(src: Float32Array, dst: Uint16Array, dtype: DType): void {
  const f = dtype === "float16" ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < src.length; i++) dst[i] = f(src[i]!);
}

/**
 * Float32 bits to integer keys whose signed order is the float order (-0 below +0), NaN mapped
 * to the key that wins the op (the largest for max, the smallest for min). `dst` may alias
 * `src`.
 */
function keys32(src: Int32Array, dst: Int32Array, op: ReduceOp): void {
  const nan = op === "max" ? 0x7fffffff : -0x80000000;
  for (let i = 0; i < src.length; i++) {
    const b = src[i]!;
    dst[i] = (b & 0x7fffffff) > 0x7f800000 ? nan : b < 0 ? b ^ 0x7fffffff : b;
  }
}

/** Undo {@linkcode keys32} in place (`f` views the same memory as `keys`). */
function unkeys32(keys: Int32Array, f: Float32Array, op: ReduceOp): void {
  const nan = op === "max" ? 0x7fffffff : -0x80000000;
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    if (k === nan) f[i] = NaN;
    else keys[i] = k < 0 ? k ^ 0x7fffffff : k;
  }
}

/** As {@linkcode keys32} for float16 or bfloat16 bits. */
function keys16(src: Uint16Array, dst: Int16Array, op: ReduceOp, dtype: DType): void {
  const nan = op === "max" ? 0x7fff : -0x8000;
  const inf = dtype === "float16" ? 0x7c00 : 0x7f80;
  for (let i = 0; i < src.length; i++) {
    const h = src[i]!;
    dst[i] = (h & 0x7fff) > inf ? nan : (h & 0x8000) !== 0 ? h ^ 0x7fff : h;
  }
}

/** Undo {@linkcode keys16} in place; NaN becomes the dtype's quiet NaN, as the reducers give. */
function unkeys16(keys: Int16Array, out: Uint16Array, op: ReduceOp, dtype: DType): void {
  const nan = op === "max" ? 0x7fff : -0x8000;
  const qnan = dtype === "float16" ? 0x7e00 : 0x7fc0;
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    out[i] = k === nan ? qnan : k < 0 ? (k ^ 0x7fff) & 0xffff : k;
  }
}

/** A typed array of any element type, as MPI sees it. */
type Buf = CollectiveBuffer | Int16Array;

function i32(b: Buf): Int32Array {
  return new Int32Array(b.buffer, b.byteOffset, b.length);
}

function i16(b: Buf): Int16Array {
  return new Int16Array(b.buffer, b.byteOffset, b.length);
}

/**
 * How a reduction runs in MPI: the datatype and op MPI sees, the buffer it reduces (the
 * caller's, or a widened or keyed copy) and how the result comes back.
 */
interface Lowered {
  type: DType | "int16";
  op: "sum" | "max" | "min";
  /** What MPI reduces: the input itself, or a converted copy. */
  data: Buf;
  /** The result, converted back, into `out` (a no-op when MPI wrote `out` directly). */
  back(result: Buf, out: CollectiveBuffer): void;
  /** True when `data` is a private copy (the caller's input stays untouched). */
  copy: boolean;
}

/**
 * Lower a reduction of `input`. With `inPlace`, conversions may write `input` itself (an
 * all-reduce's buffer is its output); otherwise the input is left as it is.
 */
function lower(input: CollectiveBuffer, op: ReduceOp, dtype: DType, inPlace: boolean): Lowered {
  const mop = op === "avg" ? "sum" : op;
  const none = () => {};
  if (dtype === "int32" || (dtype === "float32" && (op === "sum" || op === "avg"))) {
    return { type: dtype, op: mop, data: input, back: none, copy: false };
  }
  if (dtype === "float32") {
    const keys = inPlace ? i32(input) : new Int32Array(input.length);
    keys32(i32(input), keys, op);
    return {
      type: "int32",
      op: mop,
      data: keys,
      back: (result, out) => unkeys32(i32(result), out as Float32Array, op),
      copy: !inPlace,
    };
  }
  if (op === "sum" || op === "avg") {
    return {
      type: "float32",
      op: "sum",
      data: widen(input as Uint16Array, dtype),
      back: (result, out) => narrow(result as Float32Array, out as Uint16Array, dtype),
      copy: true,
    };
  }
  const keys = inPlace ? i16(input) : new Int16Array(input.length);
  keys16(input as Uint16Array, keys, op, dtype);
  return {
    type: "int16",
    op: mop,
    data: keys,
    back: (result, out) => unkeys16(i16(result), out as Uint16Array, op, dtype),
    copy: !inPlace,
  };
}

/** A buffer of `lowered`'s representation for `n` results. */
function resultLike(l: Lowered, n: number): Buf {
  if (l.type === "float32") return new Float32Array(n);
  if (l.type === "int16") return new Uint16Array(n);
  return new Int32Array(n);
}

// ---- argument checks of MPI's own ----------------------------------------------------------

const MAX_COUNT = 0x7fffffff;

function checkCount(n: number, op: string): void {
  if (n > MAX_COUNT) {
    throw new RangeError(
      `${op}: ${n} elements exceed MPI's count limit of 2^31 - 1: split the buffer`,
    );
  }
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength &&
    b.byteOffset < a.byteOffset + a.byteLength;
}

// ---- the communicator ------------------------------------------------------------------------

/** A group of ranks over one MPI communicator. */
class MpiComm implements Communicator {
  readonly transport = "mpi";
  readonly rank: number;
  readonly size: number;
  readonly name: string;
  readonly #s: Session;
  readonly #slot: BigUint64Array;
  readonly #handle: Deno.PointerValue;
  readonly #world: boolean;
  #seq = 0;
  #broken: CollectiveError | undefined;
  #closed = false;
  /** While a split is in flight: the group's collectives issued meanwhile, in call order. */
  #held: Op[] | null = null;

  constructor(
    s: Session,
    slot: BigUint64Array,
    name: string,
    rank: number,
    size: number,
    world: boolean,
  ) {
    this.#s = s;
    this.#slot = slot;
    this.#handle = handleAt(slot);
    this.name = name;
    this.rank = rank;
    this.size = size;
    this.#world = world;
    s.comms.add(this);
  }

  // ---- machinery -------------------------------------------------------------------------

  /** The checks every op runs first (after its arguments'), its number and its deadline. */
  #begin(name: string, opts: CollectiveOptions | undefined, collective: boolean): OpBase {
    const timeoutMs = opts?.timeoutMs ?? this.#s.timeoutMs;
    checkTimeout(timeoutMs);
    if (this.#closed || this.#s.finalized) {
      throw new CollectiveError("closed", name, this.name, undefined, "the group was closed");
    }
    if (this.#broken) {
      throw new CollectiveError(
        this.#broken.reason,
        name,
        this.name,
        this.#broken.peer,
        `the group failed earlier and cannot be used: ${this.#broken.message}`,
      );
    }
    return {
      name,
      seq: collective ? ++this.#seq : 0,
      timeoutMs,
      deadline: performance.now() + timeoutMs,
      collective,
    };
  }

  /** Make an op, post it (or hold it behind a split), and return its promise. */
  #submit<T>(
    base: OpBase,
    spec: {
      reqs?: number;
      statuses?: boolean;
      keep: unknown[];
      peer?: number;
      cancel?: boolean;
      gates?: boolean;
      post(reqs: BigUint64Array): number;
      finish(statuses: Uint8Array | null): T;
      failure?(code: number, statuses: Uint8Array | null): CollectiveError;
    },
  ): Promise<T> {
    const k = spec.reqs ?? 1;
    let resolve!: (v: unknown) => void, reject!: (e: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res as (v: unknown) => void;
      reject = rej;
    });
    const op: Op = {
      comm: this,
      ...base,
      peer: spec.peer,
      gates: spec.gates ?? false,
      reqs: new BigUint64Array(k),
      statuses: spec.statuses ? new Uint8Array(STATUS_BYTES * k) : null,
      keep: spec.keep,
      posted: false,
      done: false,
      cancel: spec.cancel ?? false,
      post: spec.post,
      finish: spec.finish,
      failure: spec.failure,
      resolve,
      reject,
    };
    this.#s.add(op);
    if (op.collective && this.#held !== null) this.#held.push(op);
    else this.#post(op);
    return promise;
  }

  #post(op: Op): void {
    const rc = op.post(op.reqs);
    if (rc !== MPI_SUCCESS) {
      op.posted = false;
      this.#fail(op, this.#mpiError(op, rc, null));
      return;
    }
    op.posted = true;
    if (op.gates) this.#held = [];
  }

  /** A split finished: post what it held back, in order, up to the next split. */
  #release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    while (held.length > 0) {
      const op = held.shift()!;
      if (op.done) continue;
      this.#post(op);
      if (this.#held !== null) {
        (this.#held as Op[]).push(...held);
        return;
      }
    }
  }

  /** The error for an MPI return code. */
  #mpiError(op: Op, code: number, statuses: Uint8Array | null): CollectiveError {
    if (op.failure !== undefined) return op.failure(code, statuses);
    return this.#codeError(op.name, op.peer, code, statuses);
  }

  #codeError(
    name: string,
    peer: number | undefined,
    code: number,
    statuses: Uint8Array | null,
  ): CollectiveError {
    if (code === MPI_ERR_IN_STATUS && statuses !== null) {
      const v = new DataView(statuses.buffer, statuses.byteOffset, statuses.byteLength);
      for (let o = 0; o < statuses.length; o += STATUS_BYTES) {
        const c = v.getInt32(o + STATUS_ERROR, true);
        if (c !== MPI_SUCCESS) {
          code = c;
          break;
        }
      }
    }
    const text = mpiErrorString(this.#s.lib, code);
    if (code === MPI_ERR_TRUNCATE) {
      return new CollectiveError(
        "mismatch",
        name,
        this.name,
        peer,
        `${text}: a rank sent more than this rank expected: every rank must call the same ops ` +
          `in the same order with the same sizes`,
      );
    }
    return new CollectiveError("protocol", name, this.name, peer, text);
  }

  /** The loop saw `op`'s requests complete with return code `rc`. */
  complete(op: Op, rc: number): void {
    if (op.done) return;
    let value: unknown;
    try {
      if (rc !== MPI_SUCCESS) throw this.#mpiError(op, rc, op.statuses);
      value = op.finish(op.statuses);
    } catch (e) {
      const err = e instanceof CollectiveError
        ? e
        : new CollectiveError("protocol", op.name, this.name, op.peer, String(e));
      // A receive of the wrong length took the whole message: the group stays usable.
      this.#fail(op, err, false, !(op.name === "recv" && err.reason === "mismatch"));
      return;
    }
    this.#settle(op);
    op.resolve(value);
  }

  #settle(op: Op): void {
    op.done = true;
    const a = this.#s.active;
    const i = a.indexOf(op);
    if (i >= 0) a.splice(i, 1);
  }

  /**
   * Fail `op` with `e`: requests still inside MPI are cancelled (receives) or left to finish
   * on their own, their buffers kept alive; the group is failed for good.
   */
  #fail(op: Op, e: CollectiveError, pending = true, breaks = true): void {
    if (op.done) return;
    this.#settle(op);
    if (pending && op.posted) {
      if (op.cancel) this.#s.cancelPending(op.reqs);
      this.#s.abandoned.push({ reqs: op.reqs, keep: op.keep });
    }
    op.reject(e);
    if (breaks) this.#breakWith(e);
  }

  /** The group fails for good: every pending op and every later one reject with `e`. */
  #breakWith(e: CollectiveError): void {
    if (e.reason !== "closed") this.#broken ??= e;
    for (const op of [...this.#s.active]) if (op.comm === this && !op.done) this.#fail(op, e);
    this.#held = null;
  }

  /** The loop saw `op`'s deadline pass. */
  timedOut(op: Op): void {
    const who = op.peer === undefined ? "" : `, waiting for rank ${op.peer}`;
    const call = op.seq > 0 ? `call #${op.seq}${who}` : `${op.name}${who}`;
    const fate = op.collective
      ? "MPI cannot cancel a collective: it stays posted, its buffer may still be written, " +
        "and this group rejects every later op"
      : "the receive was cancelled and this group rejects every later op";
    this.#fail(
      op,
      new CollectiveError(
        "timeout",
        op.name,
        this.name,
        op.peer,
        `no result within ${op.timeoutMs} ms (${call}): a rank died, stalled or called a ` +
          `different op; ${fate}`,
      ),
    );
  }

  #checkRank(x: number, op: string, what: string): void {
    if (!Number.isInteger(x) || x < 0 || x >= this.size) {
      throw new RangeError(
        `${op}: ${what} ${x} is out of range for group "${this.name}" of ${this.size} ranks: ` +
          `use 0 <= ${what} < ${this.size}`,
      );
    }
  }

  #checkPeer(peer: number, op: string): void {
    this.#checkRank(peer, op, "peer");
    if (peer === this.rank) {
      throw new RangeError(`${op}: peer ${peer} is this rank; send to another rank`);
    }
  }

  #checkTag(tag: number): void {
    const ub = Math.min(this.#s.tagUb, 0x7fffffff);
    if (!Number.isInteger(tag) || tag < 0 || tag > ub) {
      throw new RangeError(
        `tag must be an integer in 0..${ub === 0x7fffffff ? "2^31-1" : ub}, got ${tag}` +
          (ub < 0x7fffffff ? ` (this MPI's MPI_TAG_UB is ${ub})` : ""),
      );
    }
  }

  #t(d: DType | "int16"): Deno.PointerValue {
    return this.#s.types[d];
  }

  // ---- the Communicator ----------------------------------------------------------------

  /** See {@linkcode Communicator.allReduce}. */
  allReduce(
    buf: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    try {
      const dtype = dtypeOf(buf, opts?.dtype);
      checkOp(op);
      checkCount(buf.length, "allReduce");
      const base = this.#begin("allReduce", opts, true);
      const l = lower(buf, op, dtype, true);
      const lib = this.#s.lib, h = this.#handle, n = buf.length;
      return this.#submit(base, {
        keep: [buf, l.data],
        post: (reqs) => {
          this.#s.chooseAllReduce(l.data.byteLength, this.size);
          return lib.MPI_Iallreduce(
            MPI_IN_PLACE,
            addressOf(l.data),
            n,
            this.#t(l.type),
            this.#mpiOp(l.op),
            h,
            reqs,
          );
        },
        finish: () => {
          l.back(l.data, buf);
          if (op === "avg") finishAvg(buf, this.size, dtype);
        },
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #mpiOp(op: "sum" | "max" | "min"): Deno.PointerValue {
    const lib = this.#s.lib;
    return op === "sum"
      ? lib.ompi_mpi_op_sum
      : op === "max"
      ? lib.ompi_mpi_op_max
      : lib.ompi_mpi_op_min;
  }

  /** See {@linkcode Communicator.reduceScatter}. */
  async reduceScatter(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(input, opts?.dtype);
    sameType(input, output, "reduceScatter");
    checkOp(op);
    const m = output.length;
    checkScatterShape(input, m, this.size);
    checkCount(input.length, "reduceScatter");
    const base = this.#begin("reduceScatter", opts, true);
    // MPI wants distinct send and receive buffers: copy an input that overlaps the output.
    const src = overlaps(input, output) ? input.slice() : input;
    const l = lower(src, op, dtype, src !== input);
    // Native results land in `output`; converted ones in a buffer of their own representation,
    // except keys, which have the output's width and land in it directly.
    const into = l.type === dtype || (l.type === "int32" && dtype === "float32") ||
        (l.type === "int16" && dtype !== "float32" && dtype !== "int32")
      ? output
      : resultLike(l, m);
    const lib = this.#s.lib, h = this.#handle;
    await this.#submit(base, {
      keep: [input, output, src, l.data, into],
      post: (reqs) =>
        lib.MPI_Ireduce_scatter_block(
          addressOf(l.data),
          addressOf(into),
          m,
          this.#t(l.type),
          this.#mpiOp(l.op),
          h,
          reqs,
        ),
      finish: () => {
        l.back(into, output);
        if (op === "avg") finishAvg(output, this.size, dtype);
      },
    });
  }

  /** See {@linkcode Communicator.allGather}. */
  async allGather(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(input, opts?.dtype);
    sameType(input, output, "allGather");
    const m = input.length;
    checkGatherShape(output, m, this.size);
    checkCount(output.length, "allGather");
    const base = this.#begin("allGather", opts, true);
    const lib = this.#s.lib, h = this.#handle;
    await this.#submit(base, {
      keep: [output],
      post: (reqs) => {
        // In place: this rank's part goes to its slot first (any overlap of input and output
        // is then harmless).
        output.set(input as Float32Array, this.rank * m);
        return lib.MPI_Iallgather(
          MPI_IN_PLACE,
          0,
          this.#t(dtype),
          addressOf(output),
          m,
          this.#t(dtype),
          h,
          reqs,
        );
      },
      finish: () => {},
    });
  }

  /** See {@linkcode Communicator.broadcast}. */
  async broadcast(buf: CollectiveBuffer, root: number, opts?: CollectiveOptions): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkRank(root, "broadcast", "root");
    checkCount(buf.length, "broadcast");
    const base = this.#begin("broadcast", opts, true);
    const lib = this.#s.lib, h = this.#handle;
    await this.#submit(base, {
      keep: [buf],
      post: (reqs) => lib.MPI_Ibcast(addressOf(buf), buf.length, this.#t(dtype), root, h, reqs),
      finish: () => {},
    });
  }

  /** See {@linkcode Communicator.reduce}. */
  async reduce(
    buf: CollectiveBuffer,
    root: number,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    checkOp(op);
    this.#checkRank(root, "reduce", "root");
    checkCount(buf.length, "reduce");
    const base = this.#begin("reduce", opts, true);
    const isRoot = this.rank === root;
    // The root reduces in place; the others send their values and keep `buf` unchanged.
    const l = lower(buf, op, dtype, isRoot);
    const lib = this.#s.lib, h = this.#handle, n = buf.length;
    await this.#submit(base, {
      keep: [buf, l.data],
      post: (reqs) =>
        lib.MPI_Ireduce(
          isRoot ? MPI_IN_PLACE : addressOf(l.data),
          isRoot ? addressOf(l.data) : null,
          n,
          this.#t(l.type),
          this.#mpiOp(l.op),
          root,
          h,
          reqs,
        ),
      finish: () => {
        if (!isRoot) return;
        l.back(l.data, buf);
        if (op === "avg") finishAvg(buf, this.size, dtype);
      },
    });
  }

  /** See {@linkcode Communicator.allToAll}. */
  async allToAll(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(input, opts?.dtype);
    sameType(input, output, "allToAll");
    const n = this.size;
    if (input.length !== output.length || input.length % n !== 0) {
      throw new RangeError(
        `allToAll: input (${input.length}) and output (${output.length}) must have the same ` +
          `length, divisible by the group size ${n}: pad both to a multiple of ${n}`,
      );
    }
    if (input.buffer === output.buffer) {
      throw new RangeError("allToAll: input and output must not share memory: use two buffers");
    }
    checkCount(input.length, "allToAll");
    const base = this.#begin("allToAll", opts, true);
    const m = input.length / n;
    const lib = this.#s.lib, h = this.#handle, t = this.#t(dtype);
    await this.#submit(base, {
      keep: [input, output],
      post: (reqs) => lib.MPI_Ialltoall(addressOf(input), m, t, addressOf(output), m, t, h, reqs),
      finish: () => {},
    });
  }

  /**
   * See {@linkcode Communicator.send}. The buffer is copied and the send resolves at once;
   * MPI delivers the copy when the peer receives it.
   */
  send(
    buf: CollectiveBuffer,
    peer: number,
    tag = 0,
    opts?: CollectiveOptions,
  ): Promise<void> {
    try {
      this.#send(buf, peer, tag, opts);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #send(buf: CollectiveBuffer, peer: number, tag: number, opts?: CollectiveOptions): void {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkPeer(peer, "send");
    this.#checkTag(tag);
    checkCount(buf.length, "send");
    this.#begin("send", opts, false);
    const s = this.#s, lib = s.lib, h = this.#handle;
    const head = new Int32Array([P2P_MAGIC, DTYPES.indexOf(dtype), buf.length, 0]);
    const copy = buf.slice();
    const reqs = new BigUint64Array(2);
    let rc = lib.MPI_Isend(addressOf(head), 4, s.types.int32, peer, tag, h, reqs.subarray(0, 1));
    if (rc === MPI_SUCCESS) {
      rc = lib.MPI_Isend(
        addressOf(copy),
        copy.length,
        this.#t(dtype),
        peer,
        tag,
        h,
        reqs.subarray(1),
      );
    }
    if (rc !== MPI_SUCCESS) {
      const e = this.#codeError("send", peer, rc, null);
      this.#breakWith(e);
      throw e;
    }
    s.sends.push({
      reqs,
      keep: [head, copy],
      onError: (code) => this.#breakWith(this.#codeError("send", peer, code, null)),
    });
    s.wake();
  }

  /** See {@linkcode Communicator.recv}. */
  async recv(
    buf: CollectiveBuffer,
    peer: number,
    tag = 0,
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkPeer(peer, "recv");
    this.#checkTag(tag);
    checkCount(buf.length, "recv");
    const base = this.#begin("recv", opts, false);
    const s = this.#s, lib = s.lib, h = this.#handle;
    const head = new Int32Array(4);
    const mismatch = (): CollectiveError | undefined => {
      if (head[0] !== P2P_MAGIC) return undefined;
      if (head[2] === buf.length && DTYPES[head[1]!] === dtype) return undefined;
      return new CollectiveError(
        "mismatch",
        "recv",
        this.name,
        peer,
        `recv with tag ${tag} expected ${buf.length} ${dtype} but rank ${peer} sent ${head[2]} ` +
          `${DTYPES[head[1]!] ?? "?"} with that tag: matching send and recv must agree`,
      );
    };
    await this.#submit(base, {
      reqs: 2,
      statuses: true,
      keep: [head, buf],
      peer,
      cancel: true,
      post: (reqs) => {
        const rc = lib.MPI_Irecv(
          addressOf(head),
          4,
          s.types.int32,
          peer,
          tag,
          h,
          reqs.subarray(0, 1),
        );
        if (rc !== MPI_SUCCESS) return rc;
        return lib.MPI_Irecv(
          addressOf(buf),
          buf.length,
          this.#t(dtype),
          peer,
          tag,
          h,
          reqs.subarray(1),
        );
      },
      finish: () => {
        const e = mismatch();
        if (e !== undefined) throw e;
        if (head[0] !== P2P_MAGIC) {
          throw new CollectiveError(
            "protocol",
            "recv",
            this.name,
            peer,
            `the message with tag ${tag} from rank ${peer} has no Loom header: another MPI ` +
              `user sent it`,
          );
        }
      },
      failure: (code, statuses) => mismatch() ?? this.#codeError("recv", peer, code, statuses),
    });
  }

  /** See {@linkcode Communicator.barrier}. */
  async barrier(opts?: CollectiveOptions): Promise<void> {
    const base = this.#begin("barrier", opts, true);
    const lib = this.#s.lib, h = this.#handle;
    await this.#submit(base, {
      keep: [],
      post: (reqs) => lib.MPI_Ibarrier(h, reqs),
      finish: () => {},
    });
  }

  /**
   * See {@linkcode Communicator.split}: a polled barrier over the group, then `MPI_Comm_split`
   * (ordered by `key`, then by rank).
   */
  async split(color: number, key = 0): Promise<Communicator | null> {
    if (!Number.isInteger(color) || !Number.isInteger(key) || Math.abs(color) > 2 ** 31 - 1) {
      throw new RangeError(`split: color and key must be 32-bit integers, got ${color}, ${key}`);
    }
    if (Math.abs(key) > 2 ** 31 - 1) {
      throw new RangeError(`split: color and key must be 32-bit integers, got ${color}, ${key}`);
    }
    const base = this.#begin("split", undefined, true);
    const s = this.#s, lib = s.lib, h = this.#handle;
    return await this.#submit(base, {
      keep: [],
      gates: true,
      post: (reqs) => lib.MPI_Ibarrier(h, reqs),
      finish: (): MpiComm | null => {
        // Every rank of the group has entered split() and calls this now.
        const slot = new BigUint64Array(1);
        const rc = lib.MPI_Comm_split(h, color < 0 ? MPI_UNDEFINED : color | 0, key | 0, slot);
        this.#release();
        if (rc !== MPI_SUCCESS) throw this.#codeError("split", undefined, rc, null);
        if (slot[0] === s.commNull || slot[0] === 0n) return null;
        const [rank, size] = rankAndSize(lib, handleAt(slot));
        return new MpiComm(s, slot, `${this.name}/split(${color})`, rank, size, false);
      },
    });
  }

  /**
   * See {@linkcode Communicator.close}. Closing a sub-group frees its MPI communicator;
   * closing the world closes every group, waits (up to the default timeout) for buffered sends
   * to be delivered, and finalizes MPI, which waits for every rank to close.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#held = null;
    for (const op of [...this.#s.active]) {
      if (op.comm === this && !op.done) {
        this.#fail(
          op,
          new CollectiveError("closed", op.name, this.name, undefined, "group closed"),
        );
      }
    }
    const s = this.#s;
    s.comms.delete(this);
    if (!this.#world) {
      if (!s.finalized) s.lib.MPI_Comm_free(this.#slot);
      return;
    }
    for (const c of [...s.comms]) await c.close();
    await s.drainSends(s.timeoutMs);
    s.closeChannel();
    s.endTuning();
    s.finalized = true;
    session = undefined;
    if (s.ownsInit) {
      finalizedHere = true;
      s.lib.MPI_Finalize();
    }
  }
}
