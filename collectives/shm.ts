/**
 * The shared-memory transport: ranks are threads (Workers) of one process; each rank stages its
 * data in its own SharedArrayBuffer slot and peers read it in place; Atomics counters order the
 * steps. Build groups with {@linkcode runWorkers} (world.ts) rather than by hand.
 *
 * How an op runs. Every op is a sequence of *units*; a unit writes this rank's slot (one of two
 * halves, alternating, so that a fast rank never overwrites data a slow one still reads), then
 * publishes a *round*: it bumps its step counter and a group-wide arrival counter, and the round
 * is complete once the arrival counter reaches size x step. Then each rank reads its peers'
 * slots. Large all-reduces (and reduces) spend two rounds per unit: each rank reduces its own
 * slice of the chunk straight from its peers' slots (reduce-scatter), publishes, and every rank
 * copies the reduced slices out (all-gather). Small ones spend one round: every rank folds all
 * slots itself. Reductions always fold in rank order 0, 1, ..., n-1, so every rank gets
 * bit-identical results, equal to a serial left-to-right fold.
 *
 * Zero copy: when the buffers of a large all-reduce, reduce, reduce-scatter, all-gather (every
 * rank's) or broadcast (the root's) live on a SharedArrayBuffer (like the trainer's flat
 * buffers), the ranks skip the staging slots: each shares its SharedArrayBuffer with its peers
 * once (a MessagePort message; the peers keep a reference until the group closes) and reads its
 * peers' buffers in place. A last round keeps every buffer untouched until nobody reads it.
 * When every buffer lives in the world's arena ({@link ./arena.ts}, `sharedArray`), the folds
 * run in WebAssembly SIMD, and two ranks fold and write both buffers in a single pass; a world's
 * staging slots live there too, so small reductions fold in SIMD as well.
 *
 * Waiting spins on `Atomics.load` for an adaptive budget, then blocks in `Atomics.wait` for up to
 * 2 ms (a wake-up costs ~10 us; only while no other op of the thread is pending, as it blocks
 * the thread's event loop), then sleeps in `Atomics.waitAsync` (the event loop keeps running),
 * waking at least every 10 ms to check the deadline and the members' liveness words. The timeout
 * of an op counts from the moment it first has to wait. The first round of every op compares an
 * op descriptor (op, count, dtype, reduction, root, sequence number) published by every rank: a
 * mismatch rejects on every rank and leaves the group usable;
 * a timeout or a lost member leaves it failed (later ops reject at once).
 *
 * @module
 */
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
import { finishAvg, reduceTo } from "./reduce.ts";
import { DEAD, EXITED, markAfterExit, ShmLink } from "./_shm_link.ts";
import { ShmChannels } from "./_shm_p2p.ts";
import { currentArena, type SharedArena, type SharedArrayCtor } from "./arena.ts";
import { ArenaFold, arenaFold } from "./_shm_fold.ts";
import {
  ABORT,
  ARRIVED,
  bytesOf,
  CH_STRIDE,
  checkOp,
  checkTimeout,
  CLOSED,
  CTRL_STRIDE,
  type Ctx,
  D_A,
  D_ARENA,
  D_B,
  DESC,
  describe,
  DTYPES,
  FOLD_CHUNK,
  G_WAITERS,
  type OpName,
  OPS,
  overlaps,
  POLL_MS,
  pow2Below,
  REDS,
  STEP,
  sub,
} from "./_shm_layout.ts";

export { ShmLink };
export type { ShmLinkInit } from "./_shm_link.ts";

/** Default bytes per staging half of each rank (each rank has two), up to 8 ranks. */
export const DEFAULT_SLOT_BYTES = 1 << 21;
/** Default bytes per point-to-point chunk (each directed pair has two), up to 8 ranks. */
export const DEFAULT_CHANNEL_BYTES = 1 << 16;
/** Longest time a wait may block the thread in Atomics.wait before it sleeps in waitAsync. */
const SYNC_MS = 2;
/**
 * Ops pending in this thread over all its communicators (a communicator's queue of collectives
 * counts once, as they run one after another; every send and recv counts): a wait blocks the
 * thread only when it is the only one.
 */
let pending = 0;

/**
 * Structured-clonable description of one shared-memory group: post it to every member and build
 * each member's {@linkcode ShmCommunicator} from it.
 */
export interface ShmGroupSpec {
  /** Unique id of this group (keys its messages between ranks). */
  id: string;
  /** Group label used in errors. */
  name: string;
  /** Number of ranks. */
  size: number;
  /** World rank (liveness index) of every group rank. */
  worldRanks: number[];
  /** Control blocks, one per rank. */
  ctrl: SharedArrayBuffer;
  /** Staging slots, one buffer per rank (two halves of `slotBytes`). */
  data: SharedArrayBuffer[];
  /**
   * Where each rank's slots start in its buffer: non-zero when the slots live in the process
   * arena ({@link ./arena.ts}), whose memory every `data` buffer then maps.
   */
  dataOffsets: number[];
  /** Id of the arena holding the slots, or 0. */
  arenaId: number;
  /** Point-to-point channels: control words. */
  chanCtrl: SharedArrayBuffer;
  /** Point-to-point channels: data (two chunks of `chanBytes` per directed pair). */
  chanData: SharedArrayBuffer;
  /** Bytes per staging half. */
  slotBytes: number;
  /** Bytes per point-to-point chunk. */
  chanBytes: number;
}

/** Tuning of a {@linkcode ShmCommunicator}. */
export interface ShmOptions {
  /** Default timeout of every op, in milliseconds. */
  timeoutMs?: number;
  /**
   * Microseconds to spin on `Atomics.load` before sleeping. Default: adaptive, starting at 50
   * (5 when the process runs more ranks than cores), within 1..1000 (1..50): it grows to cover
   * the waits that spinning catches and drops when spinning keeps failing. A wait that outlasts
   * the spin then blocks in `Atomics.wait` for up to 2 ms (when no other op of this thread is
   * pending), then sleeps in `Atomics.waitAsync`.
   */
  spinUs?: number;
  /**
   * Messages up to this many bytes take the one-round path through the staging slots; larger
   * ones reduce-scatter then all-gather, and read SharedArrayBuffer-backed buffers in place.
   * Default 64 KiB.
   */
  smallBytes?: number;
}

/**
 * Allocate the shared buffers of a group of `worldRanks.length` ranks.
 *
 * @param name the group's label
 * @param worldRanks the liveness index of each group rank
 * @param slotBytes bytes per staging half (default {@linkcode DEFAULT_SLOT_BYTES}, less beyond 8
 *   ranks)
 * @param chanBytes bytes per point-to-point chunk (default {@linkcode DEFAULT_CHANNEL_BYTES},
 *   less beyond 8 ranks)
 * @param arena where to put the staging slots, so that small reductions fold in SIMD: an arena
 *   every member maps and that lives as long as the group (a world's own arena, see world.ts);
 *   default: plain SharedArrayBuffers
 * @returns the spec to post to every member
 */
export function createShmGroupSpec(
  name: string,
  worldRanks: number[],
  slotBytes?: number,
  chanBytes?: number,
  arena?: SharedArena,
): ShmGroupSpec {
  const size = worldRanks.length;
  // Beyond 8 ranks the defaults shrink so that a group stays under ~64 MiB of slots and
  // ~16 MiB of channels (channels grow with the square of the size).
  slotBytes ??= Math.min(DEFAULT_SLOT_BYTES, pow2Below((32 << 20) / Math.max(1, size), 1 << 16));
  chanBytes ??= Math.min(
    DEFAULT_CHANNEL_BYTES,
    pow2Below((8 << 20) / Math.max(1, size * size), 1 << 12),
  );
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`A group needs at least one rank, got ${size}`);
  }
  for (const [what, v] of [["slotBytes", slotBytes], ["chanBytes", chanBytes]] as const) {
    if (!Number.isInteger(v) || v < 64 || v % 8 !== 0) {
      throw new RangeError(`${what} must be a multiple of 8 and at least 64, got ${v}`);
    }
  }
  const slots = worldRanks.map(() =>
    arena !== undefined
      ? arena.alloc(Uint8Array, 2 * slotBytes)
      : new Uint8Array(new SharedArrayBuffer(2 * slotBytes))
  );
  return {
    id: crypto.randomUUID(),
    name,
    size,
    worldRanks: worldRanks.slice(),
    ctrl: new SharedArrayBuffer((size + 1) * CTRL_STRIDE * 4),
    data: slots.map((v) => v.buffer as SharedArrayBuffer),
    dataOffsets: slots.map((v) => v.byteOffset),
    arenaId: arena?.id ?? 0,
    chanCtrl: new SharedArrayBuffer(size * size * CH_STRIDE * 4),
    chanData: new SharedArrayBuffer(size > 1 ? size * size * 2 * chanBytes : 8),
    slotBytes,
    chanBytes,
  };
}

/**
 * A {@linkcode Communicator} over SharedArrayBuffer and Atomics for ranks that are threads of one
 * process. Ops on one communicator run one after another in call order (point-to-point ops queue
 * per peer and direction instead, so a `send` and a `recv` can be in flight together).
 */
export class ShmCommunicator implements Communicator {
  /** This rank's index in the group. */
  readonly rank: number;
  /** Number of ranks in the group. */
  readonly size: number;
  /** The group's label. */
  readonly name: string;
  /** Always `"shm"`. */
  readonly transport: string = "shm";
  /** The spec this communicator was built from (to share the group with another thread). */
  readonly spec: ShmGroupSpec;

  #link: ShmLink;
  #ctrl: Int32Array;
  #f32: Float32Array[][];
  #i32: Int32Array[][];
  #u16: Uint16Array[][];
  #slotBytes: number;
  #timeoutMs: number;
  #spinMs: number;
  #spinBaseMs: number;
  #spinFails = 0;
  #spinMinMs: number;
  #spinMaxMs: number;
  #smallBytes: number;
  #step = 0;
  #unit = 0;
  #seq = 0;
  #tail: Promise<void> = Promise.resolve();
  #busy = 0;
  #group: number;
  #slotCache: (CollectiveBuffer | undefined)[] = [];
  #myBufs = new WeakMap<SharedArrayBuffer, number>();
  #nextBufId = 0;
  #peerBufs: Map<number, SharedArrayBuffer>[] = [];
  /** The arena every rank's buffer of the op in flight lives in, if they all do. */
  #opArena: SharedArena | undefined;
  /** The arena the staging slots live in, when this thread maps it. */
  #slotArena: SharedArena | undefined;
  #base: number[];
  #p2pTail = new Map<string, Promise<void>>();
  #channels: ShmChannels;
  #closed = false;
  #broken: CollectiveError | undefined;
  #opts: ShmOptions;

  /**
   * Join a group as `rank`. Every member must build its communicator from the same spec.
   *
   * @param spec the group's shared buffers, from {@linkcode createShmGroupSpec}
   * @param rank this rank's index in the group
   * @param link this thread's liveness words and peer ports
   * @param opts timeouts and tuning
   */
  constructor(spec: ShmGroupSpec, rank: number, link: ShmLink, opts: ShmOptions = {}) {
    if (!Number.isInteger(rank) || rank < 0 || rank >= spec.size) {
      throw new RangeError(`rank ${rank} is out of range for a group of ${spec.size}`);
    }
    this.rank = rank;
    this.size = spec.size;
    this.name = spec.name;
    this.spec = spec;
    this.#link = link;
    this.#opts = opts;
    this.#ctrl = new Int32Array(spec.ctrl);
    this.#group = spec.size * CTRL_STRIDE;
    this.#slotBytes = spec.slotBytes;
    this.#base = spec.dataOffsets;
    const arena = currentArena();
    this.#slotArena = spec.arenaId !== 0 && arena?.id === spec.arenaId ? arena : undefined;
    const halves = (mk: (sab: SharedArrayBuffer, off: number) => unknown) =>
      spec.data.map((sab, p) => [
        mk(sab, spec.dataOffsets[p]!),
        mk(sab, spec.dataOffsets[p]! + spec.slotBytes),
      ]);
    this.#f32 = halves((s, o) => new Float32Array(s, o, spec.slotBytes / 4)) as Float32Array[][];
    this.#i32 = halves((s, o) => new Int32Array(s, o, spec.slotBytes / 4)) as Int32Array[][];
    this.#u16 = halves((s, o) => new Uint16Array(s, o, spec.slotBytes / 2)) as Uint16Array[][];
    this.#timeoutMs = checkTimeout(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const cores = (globalThis.navigator?.hardwareConcurrency ?? 2) || 2;
    const over = link.worldSize > cores;
    const spinUs = opts.spinUs ?? (over ? 5 : 50);
    this.#spinMs = this.#spinBaseMs = spinUs / 1000;
    // Adaptive unless the caller fixed the budget: see #spun and #slept.
    this.#spinMinMs = opts.spinUs !== undefined ? this.#spinMs : 0.001;
    this.#spinMaxMs = opts.spinUs !== undefined ? this.#spinMs : (over ? 50 : 1000) / 1000;
    this.#smallBytes = opts.smallBytes ?? 64 * 1024;
    this.#channels = new ShmChannels(spec, rank, {
      wait: (...a) => this.#wait(...a),
      problem: (ctx, peer) => this.#problem(ctx, peer),
      post: (peer, key, sab) => this.#link.post(spec.worldRanks[peer]!, key, sab),
      receive: async (ctx, peer, key) =>
        await this.#link.receive(
          key,
          spec.worldRanks[peer]!,
          () => this.#problem(ctx, peer),
        ) as SharedArrayBuffer,
    });
  }

  // ---- public ops -------------------------------------------------------------------------

  /** Reduce `buf` element-wise across all ranks; every rank ends with the result. */
  allReduce(
    buf: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts: CollectiveOptions = {},
  ): Promise<void> {
    let dtype: DType, ms: number;
    try {
      dtype = dtypeOf(buf, opts.dtype);
      checkOp(op);
      ms = this.#timeout(opts);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue("allReduce", ms, (ctx) => this.#reduceOp(ctx, buf, op, dtype, -1));
  }

  /** Reduce `buf` across ranks into rank `root`'s `buf`; other ranks' buffers are unchanged. */
  async reduce(
    buf: CollectiveBuffer,
    root: number,
    op: ReduceOp = "sum",
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts.dtype);
    checkOp(op);
    this.#checkRank(root, "root");
    const ms = this.#timeout(opts);
    await this.#enqueue("reduce", ms, (ctx) => this.#reduceOp(ctx, buf, op, dtype, root));
  }

  /** Reduce `input` (size x output.length) and leave chunk `rank` of the result in `output`. */
  async reduceScatter(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = this.#checkPair(input, output, opts, "reduceScatter", "input", "output");
    checkOp(op);
    const ms = this.#timeout(opts);
    await this.#enqueue("reduceScatter", ms, async (ctx) => {
      const m = output.length, n = this.size, r = this.rank;
      const per = Math.max(1, Math.floor(this.#slotBytes / bytesOf(dtype) / n));
      const desc = this.#desc("reduceScatter", m, dtype, op, -1);
      let first = true;
      if (n > 1 && input.byteLength > this.#smallBytes) {
        const peers = await this.#locate(ctx, desc, input, -1);
        first = false;
        if (peers !== null) {
          // Fold block r straight from every rank's input. When output is this rank's own block
          // of input and r >= 2, save each piece first (the fold would overwrite it too early).
          const own = sub(input, r * m, (r + 1) * m);
          const alias = r >= 2 && overlaps(output, own);
          const step = alias ? Math.floor(this.#slotBytes / bytesOf(dtype)) : Math.max(1, m);
          // SIMD when every input and the output live in the arena (and so does the staging
          // slot, when a piece must be saved there).
          const arena = this.#opArena;
          const fold = arena !== undefined && (!alias || this.#slotArena === arena)
            ? arenaFold(arena, dtype, op, output)
            : undefined;
          const to = (d: CollectiveBuffer, x: CollectiveBuffer, y: CollectiveBuffer) =>
            fold !== undefined ? fold.to(d, x, y, op, dtype) : reduceTo(d, x, y, op, dtype);
          for (let s = 0; s < m; s += step) {
            const e = Math.min(m, s + step);
            const dst = sub(output, s, e);
            let mine = sub(own, s, e);
            if (alias) {
              const saved = this.#slot(dtype, r, 0, 0, e - s);
              saved.set(mine);
              mine = saved;
            }
            const src = (p: number) => (p === r ? mine : sub(peers[p]!, r * m + s, r * m + e));
            to(dst, src(0), src(1));
            for (let p = 2; p < n; p++) to(dst, dst, src(p));
            if (op === "avg") {
              fold !== undefined ? fold.finishAvg(dst, n, dtype) : finishAvg(dst, n, dtype);
            }
          }
          await this.#round(ctx, null);
          return;
        }
      }
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per), len = b - a;
        const h = this.#nextHalf();
        const mine = this.#views(dtype, this.rank, h);
        for (let p = 0; p < n; p++) mine.set(sub(input, p * m + a, p * m + b), p * len);
        await this.#round(ctx, first ? desc : null);
        first = false;
        if (len === 0) continue;
        const lo = this.rank * len, hi = lo + len;
        const dst = output.subarray(a, b);
        const src = (p: number) => this.#slot(dtype, p, h, lo, hi);
        if (n === 1) dst.set(src(0));
        else {
          reduceTo(dst, src(0), src(1), op, dtype);
          for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
        }
        if (op === "avg") finishAvg(dst, n, dtype);
      }
    });
  }

  /** Concatenate every rank's `input` in rank order into `output` (size x input.length). */
  async allGather(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = this.#checkPair(output, input, opts, "allGather", "output", "input");
    const ms = this.#timeout(opts);
    await this.#enqueue("allGather", ms, async (ctx) => {
      const m = input.length, n = this.size;
      const per = Math.max(1, Math.floor(this.#slotBytes / bytesOf(dtype)));
      const desc = this.#desc("allGather", m, dtype, null, -1);
      let first = true;
      if (n > 1 && output.byteLength > this.#smallBytes) {
        const peers = await this.#locate(ctx, desc, input, -1);
        first = false;
        if (peers !== null) {
          for (let p = 0; p < n; p++) output.set(peers[p]!, p * m);
          await this.#round(ctx, null);
          return;
        }
      }
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per), len = b - a;
        const h = this.#nextHalf();
        this.#views(dtype, this.rank, h).set(sub(input, a, b));
        await this.#round(ctx, first ? desc : null);
        first = false;
        for (let p = 0; p < n; p++) {
          const src = p === this.rank ? input : this.#views(dtype, p, h);
          const off = p === this.rank ? a : 0;
          output.set(src.subarray(off, off + len), p * m + a);
        }
      }
    });
  }

  /** Copy `buf` of rank `root` into `buf` of every rank. */
  async broadcast(
    buf: CollectiveBuffer,
    root: number,
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts.dtype);
    this.#checkRank(root, "root");
    const ms = this.#timeout(opts);
    await this.#enqueue("broadcast", ms, async (ctx) => {
      const m = buf.length;
      const per = Math.max(1, Math.floor(this.#slotBytes / bytesOf(dtype)));
      const desc = this.#desc("broadcast", m, dtype, null, root);
      let first = true;
      if (this.size > 1 && buf.byteLength > this.#smallBytes) {
        const peers = await this.#locate(ctx, desc, buf, root);
        first = false;
        if (peers !== null) {
          if (this.rank !== root) buf.set(peers[root]!);
          await this.#round(ctx, null);
          return;
        }
      }
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per);
        const h = this.#nextHalf();
        if (this.rank === root) this.#views(dtype, root, h).set(sub(buf, a, b));
        await this.#round(ctx, first ? desc : null);
        first = false;
        if (this.rank !== root) buf.set(this.#slot(dtype, root, h, 0, b - a), a);
      }
    });
  }

  /** Chunk `j` of rank `i`'s `input` lands as chunk `i` of rank `j`'s `output`. */
  async allToAll(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = dtypeOf(input, opts.dtype);
    if (dtypeOf(output, opts.dtype) !== dtype) {
      throw new TypeError(`allToAll: input and output must have the same element type`);
    }
    const n = this.size;
    if (input.length !== output.length || input.length % n !== 0) {
      throw new RangeError(
        `allToAll: input (${input.length}) and output (${output.length}) must have the same ` +
          `length, divisible by the group size ${n}; pad them to a multiple of ${n}`,
      );
    }
    const ms = this.#timeout(opts);
    await this.#enqueue("allToAll", ms, async (ctx) => {
      const m = input.length / n;
      const per = Math.max(1, Math.floor(this.#slotBytes / bytesOf(dtype) / n));
      let first = true;
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per), len = b - a;
        const h = this.#nextHalf();
        const mine = this.#views(dtype, this.rank, h);
        for (let p = 0; p < n; p++) mine.set(sub(input, p * m + a, p * m + b), p * len);
        await this.#round(ctx, first ? this.#desc("allToAll", m, dtype, null, -1) : null);
        first = false;
        const r = this.rank;
        for (let p = 0; p < n; p++) {
          const src = this.#slot(dtype, p, h, r * len, r * len + len);
          output.set(src, p * m + a);
        }
      }
    });
  }

  /** Resolve once every rank of the group has entered the barrier. */
  barrier(opts: CollectiveOptions = {}): Promise<void> {
    let ms: number;
    try {
      ms = this.#timeout(opts);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue("barrier", ms, async (ctx) => {
      this.#nextHalf();
      const w = this.#round(ctx, this.#desc("barrier", 0, "float32", null, -1));
      if (w !== undefined) await w;
    });
  }

  /**
   * Ranks with the same `color` form a new group ordered by `key`, then by rank. A negative
   * color joins no group and resolves to `null`. Collective over this group.
   */
  async split(color: number, key: number = this.rank): Promise<ShmCommunicator | null> {
    if (!Number.isInteger(color) || Math.abs(color) > 0x3fffffff) {
      throw new RangeError(`split: color must be an integer (negative for none), got ${color}`);
    }
    if (!Number.isInteger(key) || Math.abs(key) > 0x3fffffff) {
      throw new RangeError(`split: key must be an integer, got ${key}`);
    }
    const ms = this.#timeoutMs;
    let out: ShmCommunicator | null = null;
    await this.#enqueue("split", ms, async (ctx) => {
      this.#nextHalf();
      const seq = this.#seq;
      const d = this.#desc("split", 0, "float32", null, -1);
      const base = this.rank * CTRL_STRIDE + DESC + (seq & 1) * 8;
      Atomics.store(this.#ctrl, base + D_A, color);
      Atomics.store(this.#ctrl, base + D_B, key);
      await this.#round(ctx, d);
      if (color < 0) return;
      const members: { rank: number; key: number }[] = [];
      for (let p = 0; p < this.size; p++) {
        const pb = p * CTRL_STRIDE + DESC + (seq & 1) * 8;
        if (Atomics.load(this.#ctrl, pb + D_A) === color) {
          members.push({ rank: p, key: Atomics.load(this.#ctrl, pb + D_B) });
        }
      }
      members.sort((x, y) => x.key - y.key || x.rank - y.rank);
      const newRank = members.findIndex((m) => m.rank === this.rank);
      const leader = members[0]!.rank;
      const tag = `${this.spec.id}:split:${seq}:${color}`;
      let spec: ShmGroupSpec;
      if (leader === this.rank) {
        spec = createShmGroupSpec(
          `${this.name}/split(${color})`,
          members.map((m) => this.spec.worldRanks[m.rank]!),
          this.spec.slotBytes,
          this.spec.chanBytes,
          // The world's arena, when this group's slots live there: it outlives every split.
          this.#slotArena,
        );
        for (const m of members.slice(1)) {
          this.#link.post(this.spec.worldRanks[m.rank]!, tag, spec);
        }
      } else {
        spec = await this.#link.receive(
          tag,
          this.spec.worldRanks[leader]!,
          () => this.#problem(ctx, leader),
        ) as ShmGroupSpec;
      }
      out = new ShmCommunicator(spec, newRank, this.#link, this.#opts);
    });
    return out;
  }

  /**
   * Send `buf` to `peer`, matched by the peer's `recv` with the same tag (messages with the same
   * tag match in order) and length. Resolves once the data is in the channel, without waiting
   * for the receiver unless two earlier messages to `peer` are still untaken (messages longer
   * than a chunk, 64 KiB by default, are copied into a buffer of the sender's that the receiver
   * reads; it is posted to the receiver once and reused).
   */
  async send(
    buf: CollectiveBuffer,
    peer: number,
    tag = 0,
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts.dtype);
    this.#checkPeer(peer, tag, "send");
    const ms = this.#timeout(opts);
    await this.#p2p(
      `s${peer}`,
      "send",
      ms,
      (ctx) => this.#channels.send(ctx, buf, dtype, peer, tag),
    );
  }

  /**
   * Receive into `buf` the next message from `peer` sent with `tag`; one with the same tag but
   * another length or dtype rejects as a mismatch. Messages with other tags that arrive first
   * are kept for their own recv.
   */
  async recv(
    buf: CollectiveBuffer,
    peer: number,
    tag = 0,
    opts: CollectiveOptions = {},
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts.dtype);
    this.#checkPeer(peer, tag, "recv");
    const ms = this.#timeout(opts);
    await this.#p2p(
      `r${peer}`,
      "recv",
      ms,
      (ctx) => this.#channels.recv(ctx, buf, dtype, peer, tag),
    );
  }

  /** Leave the group: pending and later ops of this rank reject; peers see the rank as lost. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#peerBufs = [];
      const scratch = this.#scratch;
      this.#scratch = undefined;
      const arena = currentArena();
      if (scratch !== undefined && arena?.owns(scratch)) arena.free(scratch);
      const i = this.rank * CTRL_STRIDE + CLOSED;
      Atomics.store(this.#ctrl, i, 1);
      Atomics.notify(this.#ctrl, this.#group + ARRIVED);
    }
    return Promise.resolve();
  }

  // ---- argument checks ----------------------------------------------------------------------

  #timeout(opts: CollectiveOptions): number {
    return opts.timeoutMs === undefined ? this.#timeoutMs : checkTimeout(opts.timeoutMs);
  }

  #checkRank(r: number, what: string): void {
    if (!Number.isInteger(r) || r < 0 || r >= this.size) {
      throw new RangeError(
        `${what} ${r} is out of range: use 0 <= ${what} < ${this.size} (the group size)`,
      );
    }
  }

  #checkPeer(peer: number, tag: number, op: string): void {
    this.#checkRank(peer, "peer");
    if (peer === this.rank) {
      throw new RangeError(`${op}: peer ${peer} is this rank; pass another rank of the group`);
    }
    if (!Number.isInteger(tag) || tag < 0 || tag > 0x7fffffff) {
      throw new RangeError(`${op}: tag must be an integer in [0, 2^31), got ${tag}`);
    }
  }

  #checkPair(
    big: CollectiveBuffer,
    small: CollectiveBuffer,
    opts: CollectiveOptions,
    op: string,
    bigName: string,
    smallName: string,
  ): DType {
    const dtype = dtypeOf(big, opts.dtype);
    if (dtypeOf(small, opts.dtype) !== dtype) {
      throw new TypeError(`${op}: ${bigName} and ${smallName} must have the same element type`);
    }
    if (big.length !== small.length * this.size) {
      throw new RangeError(
        `${op}: ${bigName} has ${big.length} elements but must have group size x ` +
          `${smallName}.length = ${this.size} x ${small.length} = ${this.size * small.length}`,
      );
    }
    return dtype;
  }

  // ---- machinery --------------------------------------------------------------------------

  #enqueue(op: OpName, ms: number, body: (ctx: Ctx) => Promise<void>): Promise<void> {
    const run = async () => {
      try {
        if (this.#closed) {
          throw new CollectiveError(
            "closed",
            op,
            this.name,
            undefined,
            "the communicator is closed",
          );
        }
        if (this.#broken !== undefined) {
          throw new CollectiveError(
            this.#broken.reason,
            op,
            this.name,
            this.#broken.peer,
            `the group failed earlier (${this.#broken.message}); build a new group`,
          );
        }
        this.#seq++;
        await body({ op, ms, deadline: 0 });
      } catch (e) {
        if (e instanceof CollectiveError && e.reason === "mismatch") {
          // Every rank rejected after the same round, but the ranks may have taken paths that
          // use different numbers of staging units: realign the halves on the shared step count.
          this.#unit = this.#step;
        } else if (e instanceof CollectiveError && this.#broken === undefined) {
          this.#broken = e;
          if ((e.reason === "peer-lost" || e.reason === "timeout") && e.peer !== undefined) {
            // Tell the members still waiting on this rank whom the group lost, so that they
            // fail at once and name the same rank rather than this one.
            Atomics.store(this.#ctrl, this.rank * CTRL_STRIDE + ABORT, e.peer + 1);
            Atomics.notify(this.#ctrl, this.#group + ARRIVED);
          }
        }
        throw e;
      } finally {
        if (--this.#busy === 0) pending--;
      }
    };
    if (this.#busy === 0) pending++;
    // An idle communicator starts the op at once (no promise hop on the latency path).
    const p = this.#busy++ === 0 ? run() : this.#tail.then(run, run);
    this.#tail = p;
    return p;
  }

  #p2p(key: string, op: string, ms: number, body: (ctx: Ctx) => Promise<void>): Promise<void> {
    const run = async () => {
      try {
        if (this.#closed) {
          throw new CollectiveError(
            "closed",
            op,
            this.name,
            undefined,
            "the communicator is closed",
          );
        }
        await body({ op, ms, deadline: 0 });
      } finally {
        pending--;
      }
    };
    pending++;
    const p = (this.#p2pTail.get(key) ?? Promise.resolve()).then(run);
    this.#p2pTail.set(key, p.catch(() => {}));
    return p;
  }

  #nextHalf(): number {
    return this.#unit++ & 1;
  }

  /** Elements [lo, hi) of rank p's staging half h; the last view per slot is reused. */
  #slot(dtype: DType, p: number, h: number, lo: number, hi: number): CollectiveBuffer {
    const k = (DTYPES.indexOf(dtype) * this.size + p) * 2 + h;
    const v = this.#slotCache[k];
    const es = bytesOf(dtype);
    if (
      v !== undefined && v.length === hi - lo &&
      v.byteOffset === this.#base[p]! + h * this.#slotBytes + lo * es
    ) {
      return v;
    }
    const w = this.#views(dtype, p, h).subarray(lo, hi);
    this.#slotCache[k] = w;
    return w;
  }

  #views(dtype: DType, p: number, h: number): CollectiveBuffer {
    return dtype === "float32"
      ? this.#f32[p]![h]!
      : dtype === "int32"
      ? this.#i32[p]![h]!
      : this.#u16[p]![h]!;
  }

  #desc(op: OpName, count: number, dtype: DType, red: ReduceOp | null, root: number): number[] {
    return [
      OPS.indexOf(op),
      count,
      DTYPES.indexOf(dtype),
      red === null ? -1 : REDS.indexOf(red),
      root,
      this.#seq,
    ];
  }

  /** Why rank `p` can no longer take part, if it cannot. */
  #gone(ctx: Ctx, p: number): CollectiveError | undefined {
    const state = this.#link.state(this.spec.worldRanks[p]!);
    if (state === DEAD) {
      return new CollectiveError("peer-lost", ctx.op, this.name, p, "its Worker was terminated");
    }
    if (state === EXITED) {
      return markAfterExit(
        new CollectiveError(
          "peer-lost",
          ctx.op,
          this.name,
          p,
          "its main function returned without joining this op",
        ),
        this.spec.worldRanks[p]!,
      );
    }
    if (Atomics.load(this.#ctrl, p * CTRL_STRIDE + CLOSED) !== 0) {
      return new CollectiveError("peer-lost", ctx.op, this.name, p, "it closed the group");
    }
    return undefined;
  }

  /** Why waiting on `peer` cannot succeed, if it cannot. */
  #problem(ctx: Ctx, peer: number): CollectiveError | undefined {
    if (this.#closed) {
      return new CollectiveError("closed", ctx.op, this.name, undefined, "closed while pending");
    }
    return this.#gone(ctx, peer) ?? this.#late(ctx, peer);
  }

  /**
   * Publish the next round (with the op descriptor when given) and wait for every peer. Returns
   * `undefined` when every peer arrived within the spin budget, else a promise.
   */
  #round(ctx: Ctx, desc: number[] | null): Promise<void> | undefined {
    const me = this.rank * CTRL_STRIDE;
    const ctrl = this.#ctrl;
    if (desc !== null) {
      const base = me + DESC + (this.#seq & 1) * 8;
      for (let i = 0; i < desc.length; i++) Atomics.store(ctrl, base + i, desc[i]!);
    }
    const step = ++this.#step;
    Atomics.store(ctrl, me + STEP, step);
    // One group-wide arrival counter: a waiter sleeps on it once and only the last rank to
    // arrive wakes everybody (no convoy of wake-ups through the ranks one by one).
    const g = this.#group, target = this.size * step;
    if (Atomics.add(ctrl, g + ARRIVED, 1) + 1 >= target) {
      if (Atomics.load(ctrl, g + G_WAITERS) > 0) Atomics.notify(ctrl, g + ARRIVED);
    } else if (Atomics.load(ctrl, g + ARRIVED) < target) {
      const now = performance.now();
      if (ctx.deadline === 0) ctx.deadline = now + ctx.ms;
      const until = now + this.#spinMs;
      for (let i = 1; Atomics.load(ctrl, g + ARRIVED) < target; i++) {
        if ((i & 255) === 0 && performance.now() > until) {
          return this.#roundSlow(ctx, desc, step, now);
        }
      }
      this.#spun(performance.now() - now);
    }
    if (desc !== null) this.#compare(ctx, desc);
    return undefined;
  }

  /** A spin that saw the peer arrive after `ms`: keep a budget that covers such waits. */
  #spun(ms: number): void {
    this.#spinFails = 0;
    if (2 * ms > this.#spinMs) this.#spinMs = Math.min(this.#spinMaxMs, 2 * ms);
  }

  /**
   * A spin that gave up, then slept `waitedMs` in all. A short wait may mean the budget was just
   * too short (a preempted peer, or one still waking from its own sleep): grow it a few times.
   * But if spinning keeps failing, the peer cannot run while this rank spins (they share a core,
   * as on a loaded machine): spin as little as possible (a 1 us spin then Atomics.wait costs
   * ~10 us one way there, a 10 us spin ~20 us), and try growing again every 32 failures.
   */
  #slept(waitedMs: number): void {
    this.#spinFails++;
    if (this.#spinFails >= 32) {
      this.#spinFails = 0;
      this.#spinMs = this.#spinBaseMs;
    } else if (this.#spinFails >= 3 || waitedMs > this.#spinMaxMs) {
      this.#spinMs = this.#spinMinMs;
    } else {
      this.#spinMs = Math.min(this.#spinMaxMs, this.#spinMs * 2);
    }
  }

  async #roundSlow(ctx: Ctx, desc: number[] | null, step: number, t0: number): Promise<void> {
    const g = this.#group;
    await this.#wait(
      ctx,
      this.#ctrl,
      g + ARRIVED,
      this.size * step,
      g + G_WAITERS,
      false,
      () => this.#roundProblem(ctx, step),
    );
    this.#slept(performance.now() - t0);
    if (desc !== null) this.#compare(ctx, desc);
  }

  /** Why a round cannot complete, if it cannot: a member gone before arriving, or the clock. */
  #roundProblem(ctx: Ctx, step: number): CollectiveError | undefined {
    if (this.#closed) {
      return new CollectiveError("closed", ctx.op, this.name, undefined, "closed while pending");
    }
    let late = -1, first: CollectiveError | undefined;
    for (let p = 0; p < this.size; p++) {
      const at = p * CTRL_STRIDE;
      if (p === this.rank || Atomics.load(this.#ctrl, at + STEP) >= step) continue;
      if (late < 0) late = p;
      // A member that gave up on the group names the rank it lost: report that one.
      const abort = Atomics.load(this.#ctrl, at + ABORT);
      const e = abort !== 0
        ? new CollectiveError(
          "peer-lost",
          ctx.op,
          this.name,
          abort - 1,
          `rank ${p} gave up on the group after losing rank ${abort - 1}`,
        )
        : this.#gone(ctx, p);
      if (e === undefined || Atomics.load(this.#ctrl, at + STEP) >= step) continue;
      // A terminated Worker or an abort is the cause; a member that merely returned or closed
      // may have done so because of it, so keep looking.
      if (abort !== 0 || this.#link.state(this.spec.worldRanks[p]!) === DEAD) return e;
      first ??= e;
    }
    return first ?? (late < 0 ? undefined : this.#late(ctx, late));
  }

  #late(ctx: Ctx, peer: number): CollectiveError | undefined {
    const now = performance.now();
    if (ctx.deadline === 0) ctx.deadline = now + ctx.ms;
    if (now <= ctx.deadline) return undefined;
    return new CollectiveError(
      "timeout",
      ctx.op,
      this.name,
      peer,
      `rank ${peer} did not arrive in time (set opts.timeoutMs to wait longer)`,
    );
  }

  #compare(ctx: Ctx, mine: number[]): void {
    const par = (this.#seq & 1) * 8;
    for (let p = 0; p < this.size; p++) {
      if (p === this.rank) continue;
      const base = p * CTRL_STRIDE + DESC + par;
      let same = true;
      for (let i = 0; i < mine.length && same; i++) {
        same = Atomics.load(this.#ctrl, base + i) === mine[i];
      }
      if (same) continue;
      const theirs = mine.map((_, i) => Atomics.load(this.#ctrl, base + i));
      throw new CollectiveError(
        "mismatch",
        ctx.op,
        this.name,
        p,
        `rank ${p} called ${describe(theirs)} while rank ${this.rank} called ${describe(mine)}; ` +
          `every rank must call the same ops in the same order with the same sizes`,
      );
    }
  }

  /**
   * Wait until `arr[idx] >= target`: spin first (when `spin`), then sleep in waitAsync, polling
   * the peer's liveness and the deadline.
   */
  async #wait(
    ctx: Ctx,
    arr: Int32Array,
    idx: number,
    target: number,
    waitersIdx: number,
    spin: boolean,
    check: () => CollectiveError | undefined,
  ): Promise<void> {
    if (Atomics.load(arr, idx) >= target) return;
    const now = performance.now();
    if (ctx.deadline === 0) ctx.deadline = now + ctx.ms;
    if (spin) {
      const until = now + this.#spinMs;
      let gaveUp = false;
      for (let i = 1; Atomics.load(arr, idx) < target; i++) {
        if ((i & 255) === 0 && performance.now() > until) {
          gaveUp = true;
          break;
        }
      }
      if (!gaveUp) {
        this.#spun(performance.now() - now);
        return;
      }
    }
    // Then sleep in Atomics.wait (a wake-up costs ~10 us, against ~15-100 us for waitAsync),
    // but briefly, and only while no other op of this rank is pending: it blocks the event loop.
    // Another op that has just finished may still be settling: give its promises a few turns.
    const syncUntil = performance.now() + SYNC_MS;
    let turns = 0;
    for (;;) {
      const v = Atomics.load(arr, idx);
      if (v >= target) {
        if (spin) this.#slept(performance.now() - now);
        return;
      }
      const err = check();
      if (err !== undefined) {
        if (Atomics.load(arr, idx) >= target) return;
        throw err;
      }
      const t = performance.now();
      if (t < syncUntil && pending > 1 && turns < 8) {
        turns++;
        await null;
        continue;
      }
      if (t < syncUntil && pending <= 1) {
        Atomics.add(arr, waitersIdx, 1);
        try {
          Atomics.wait(arr, idx, v, Math.max(0.01, Math.min(syncUntil, ctx.deadline + 1) - t));
        } finally {
          Atomics.sub(arr, waitersIdx, 1);
        }
        continue;
      }
      const left = Math.max(1, Math.min(POLL_MS, ctx.deadline - performance.now() + 1));
      Atomics.add(arr, waitersIdx, 1);
      try {
        const r = Atomics.waitAsync(arr, idx, v, left);
        if (r.async) await r.value;
      } finally {
        Atomics.sub(arr, waitersIdx, 1);
      }
    }
  }

  async #reduceOp(
    ctx: Ctx,
    buf: CollectiveBuffer,
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const opName: OpName = root < 0 ? "allReduce" : "reduce";
    const n = this.size, m = buf.length, r = this.rank;
    const es = bytesOf(dtype);
    const desc = this.#desc(opName, m, dtype, op, root);
    if (m * es <= this.#smallBytes || n === 1) {
      // One round per chunk: every rank (or the root) folds all slots in rank order.
      const per = Math.floor(this.#slotBytes / es);
      let first = true;
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per);
        const h = this.#nextHalf();
        this.#views(dtype, r, h).set(sub(buf, a, b));
        const w = this.#round(ctx, first ? desc : null);
        if (w !== undefined) await w;
        first = false;
        if (root >= 0 && r !== root) continue;
        const dst = sub(buf, a, b);
        const src = (p: number) => this.#slot(dtype, p, h, 0, b - a);
        // SIMD pays from a few hundred elements (below, the JavaScript loop is cheaper).
        const fold = n > 1 && b - a >= 256 ? arenaFold(this.#slotArena, dtype, op) : undefined;
        if (fold !== undefined) {
          // SIMD over the slots into arena scratch, then one copy out.
          const scratch = this.#arenaScratch(this.#slotArena!, dtype);
          for (let s = 0; s < b - a; s += FOLD_CHUNK) {
            const e = Math.min(b - a, s + FOLD_CHUNK);
            const t = sub(scratch, 0, e - s);
            fold.to(t, sub(src(0), s, e), sub(src(1), s, e), op, dtype);
            for (let p = 2; p < n; p++) fold.to(t, t, sub(src(p), s, e), op, dtype);
            if (op === "avg") fold.finishAvg(t, n, dtype);
            dst.set(t, s);
          }
          continue;
        }
        if (n > 1) {
          reduceTo(dst, src(0), src(1), op, dtype);
          for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
        }
        if (op === "avg") finishAvg(dst, n, dtype);
      }
      return;
    }
    const peers = await this.#locate(ctx, desc, buf, -1);
    if (peers !== null) return this.#reduceInPlace(ctx, buf, peers, op, dtype, root);
    // Two rounds per chunk: reduce-scatter straight from the peers' slots, then all-gather.
    const per = Math.floor(this.#slotBytes / es);
    for (let a = 0; a < m; a += per) {
      const b = Math.min(m, a + per), len = b - a;
      const h = this.#nextHalf();
      this.#views(dtype, r, h).set(sub(buf, a, b));
      await this.#round(ctx, null);
      const lo = Math.floor(r * len / n), hi = Math.floor((r + 1) * len / n);
      if (hi > lo) {
        const dst = this.#slot(dtype, r, h, lo, hi);
        // Rank r >= 2 overwrites its own slot slice before folding it in: read it from buf.
        const src = (p: number) =>
          p === r && r >= 2 ? sub(buf, a + lo, a + hi) : this.#slot(dtype, p, h, lo, hi);
        reduceTo(dst, src(0), src(1), op, dtype);
        for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
        if (op === "avg") finishAvg(dst, n, dtype);
      }
      await this.#round(ctx, null);
      if (root >= 0 && r !== root) continue;
      for (let p = 0; p < n; p++) {
        const plo = Math.floor(p * len / n), phi = Math.floor((p + 1) * len / n);
        if (phi > plo) buf.set(this.#slot(dtype, p, h, plo, phi), a + plo);
      }
    }
  }

  /**
   * Zero-copy all-reduce (or reduce) when every rank's buffer lives on a SharedArrayBuffer its
   * peers know: rank r folds slice r of every rank's buffer, chunk by chunk and in rank order,
   * and writes the result straight into slice r of every rank's buffer (for reduce: of the
   * root's only). Each element is read and then written
   * by its slice's owner alone, so no rank can see a half-reduced value; the last round keeps
   * every buffer untouched until nobody reads or writes it any more.
   */
  async #reduceInPlace(
    ctx: Ctx,
    buf: CollectiveBuffer,
    peers: CollectiveBuffer[],
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const n = this.size, m = buf.length, r = this.rank;
    const lo = Math.floor(r * m / n), hi = Math.floor((r + 1) * m / n);
    const arena = this.#opArena;
    if (arena !== undefined && ArenaFold.supports(dtype, op)) {
      return this.#reduceInArena(ctx, arena, peers, lo, hi, op, dtype, root);
    }
    const chunk = Math.min(Math.floor(this.#slotBytes / bytesOf(dtype)), FOLD_CHUNK);
    // Fold in place into the owner's buffer when it is rank 0 or 1 (an operand of the first
    // step, element by element); a later owner would lose its values before they are folded in.
    const owner = root < 0 ? r : root;
    const inPlace = owner < 2;
    for (let s = lo; s < hi; s += chunk) {
      const e = Math.min(hi, s + chunk);
      const t = inPlace ? sub(peers[owner]!, s, e) : this.#slot(dtype, r, 0, 0, e - s);
      reduceTo(t, sub(peers[0]!, s, e), sub(peers[1]!, s, e), op, dtype);
      for (let p = 2; p < n; p++) reduceTo(t, t, sub(peers[p]!, s, e), op, dtype);
      if (op === "avg") finishAvg(t, n, dtype);
      for (let p = root < 0 ? 0 : root; p < (root < 0 ? n : root + 1); p++) {
        if (!(inPlace && p === owner)) peers[p]!.set(t, s);
      }
    }
    await this.#round(ctx, null);
  }

  /**
   * {@linkcode ShmCommunicator.#reduceInPlace} when every buffer lives in this process's arena:
   * the same slices and order, folded with WebAssembly SIMD. Two ranks of an all-reduce fold
   * and write both buffers in one pass; otherwise the fold runs chunk by chunk into the owner's
   * buffer (ranks 0 and 1) or an arena scratch, which is then copied out.
   */
  async #reduceInArena(
    ctx: Ctx,
    arena: SharedArena,
    peers: CollectiveBuffer[],
    lo: number,
    hi: number,
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const n = this.size;
    const fold = arenaFold(arena, dtype, op)!;
    if (n === 2 && root < 0) {
      if (hi > lo) fold.both(sub(peers[0]!, lo, hi), sub(peers[1]!, lo, hi), op, dtype);
    } else {
      const owner = root < 0 ? this.rank : root;
      const inPlace = owner < 2;
      const chunk = FOLD_CHUNK;
      let scratch: CollectiveBuffer | undefined;
      if (!inPlace) {
        scratch = this.#arenaScratch(arena, dtype);
      }
      for (let s = lo; s < hi; s += chunk) {
        const e = Math.min(hi, s + chunk);
        const t = inPlace ? sub(peers[owner]!, s, e) : sub(scratch!, 0, e - s);
        fold.to(t, sub(peers[0]!, s, e), sub(peers[1]!, s, e), op, dtype);
        for (let p = 2; p < n; p++) fold.to(t, t, sub(peers[p]!, s, e), op, dtype);
        if (op === "avg") fold.finishAvg(t, n, dtype);
        for (let p = root < 0 ? 0 : root; p < (root < 0 ? n : root + 1); p++) {
          if (!(inPlace && p === owner)) peers[p]!.set(t, s);
        }
      }
    }
    await this.#round(ctx, null);
  }

  #scratch: Float32Array | undefined;

  /** FOLD_CHUNK elements of arena scratch for this thread's folds. */
  #arenaScratch(arena: SharedArena, dtype: DType): CollectiveBuffer {
    let s = this.#scratch;
    if (s === undefined || !arena.owns(s)) {
      s = this.#scratch = arena.alloc(Float32Array, FOLD_CHUNK);
      this.#scratchI32 = new Int32Array(s.buffer, s.byteOffset, s.length);
    }
    return dtype === "int32" ? this.#scratchI32! : s;
  }

  #scratchI32: Int32Array | undefined;

  /**
   * First round of an op that may read its peers' buffers in place: publish the descriptor and
   * where `buf` lives (when it is on a SharedArrayBuffer, sharing that buffer with the peers
   * once), and return every rank's buffer as a view (this rank's is `buf`) when the ranks that
   * matter (`only` >= 0: that rank; else all) have one; `null` means: use the staging slots.
   */
  async #locate(
    ctx: Ctx,
    desc: number[],
    buf: CollectiveBuffer,
    only: number,
  ): Promise<CollectiveBuffer[] | null> {
    const n = this.size, r = this.rank;
    const base = r * CTRL_STRIDE + DESC + (this.#seq & 1) * 8;
    let id = 0;
    const sab = buf.buffer;
    const arena = currentArena();
    this.#opArena = undefined;
    if (arena !== undefined && arena.owns(buf) && (only < 0 || only === r)) {
      id = -arena.id; // every rank of the process maps the arena: no need to share the buffer
    } else if (sab instanceof SharedArrayBuffer && (only < 0 || only === r)) {
      id = this.#myBufs.get(sab) ?? 0;
      if (id === 0) {
        id = ++this.#nextBufId;
        this.#myBufs.set(sab, id);
        for (let p = 0; p < n; p++) {
          if (p !== r) this.#link.post(this.spec.worldRanks[p]!, this.#regKey(r, id), sab);
        }
      }
    }
    Atomics.store(this.#ctrl, base + D_A, id);
    Atomics.store(this.#ctrl, base + D_B, buf.byteOffset / buf.BYTES_PER_ELEMENT);
    Atomics.store(this.#ctrl, r * CTRL_STRIDE + D_ARENA + (this.#seq & 1), arena?.id ?? 0);
    await this.#round(ctx, desc);
    const ids: number[] = [], offs: number[] = [];
    // Arena buffers are usable only when every rank maps the same arena (a decision every rank
    // takes from the same published words, so that they all take the same path).
    let sameArena = arena !== undefined;
    for (let p = 0; p < n; p++) {
      const pb = p * CTRL_STRIDE + DESC + (this.#seq & 1) * 8;
      ids.push(Atomics.load(this.#ctrl, pb + D_A));
      offs.push(Atomics.load(this.#ctrl, pb + D_B));
      const a = Atomics.load(this.#ctrl, p * CTRL_STRIDE + D_ARENA + (this.#seq & 1));
      if (a === 0 || a !== Atomics.load(this.#ctrl, D_ARENA + (this.#seq & 1))) sameArena = false;
    }
    const needed = only >= 0 ? [only] : ids.map((_, p) => p);
    if (needed.some((p) => ids[p] === 0 || (ids[p]! < 0 && !sameArena))) return null;
    if (needed.every((p) => ids[p]! < 0) && only < 0) this.#opArena = arena;
    const views: CollectiveBuffer[] = [];
    const Ctor = buf.constructor as unknown as SharedArrayCtor<CollectiveBuffer>;
    for (let p = 0; p < n; p++) {
      if (p === r) views.push(buf);
      else if (!needed.includes(p)) views.push(buf);
      else if (ids[p]! < 0) {
        views.push(arena!.view(Ctor, offs[p]! * buf.BYTES_PER_ELEMENT, buf.length));
      } else {
        const peerSab = await this.#peerBuffer(ctx, p, ids[p]!);
        views.push(new Ctor(peerSab, offs[p]! * buf.BYTES_PER_ELEMENT, buf.length));
      }
    }
    return views;
  }

  #regKey(owner: number, id: number): string {
    return `${this.spec.id}:buf:${owner}:${id}`;
  }

  async #peerBuffer(ctx: Ctx, p: number, id: number): Promise<SharedArrayBuffer> {
    const known = (this.#peerBufs[p] ??= new Map()).get(id);
    if (known !== undefined) return known;
    const sab = await this.#link.receive(
      this.#regKey(p, id),
      this.spec.worldRanks[p]!,
      () => this.#problem(ctx, p),
    ) as SharedArrayBuffer;
    this.#peerBufs[p]!.set(id, sab);
    return sab;
  }
}
