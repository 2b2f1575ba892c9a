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
 * The pieces, a file each: the group's shared memory ({@link ./_shm_group.ts}), the op
 * lifecycle ({@link ./_shm_op.ts}), rounds and waits ({@link ./_shm_wait.ts}), fault handling
 * ({@link ./_shm_faults.ts}), the staging slots ({@link ./_shm_slots.ts}), buffers read in
 * place ({@link ./_shm_peer_buffers.ts}), the reductions ({@link ./_shm_reduce.ts}), the ops
 * that move data ({@link ./_shm_move.ts}) and the point-to-point channels
 * ({@link ./_shm_p2p.ts}). This file holds the communicator that composes them: argument
 * checks, the op descriptor, split and close.
 *
 * @module
 */
import {
  type CollectiveBuffer,
  type CollectiveOptions,
  type Communicator,
  DEFAULT_TIMEOUT_MS,
  type DType,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";
import { ShmLink } from "./_shm_link.ts";
import { createShmGroupSpec, type ShmGroupSpec } from "./_shm_group.ts";
import { ShmChannels } from "./_shm_p2p.ts";
import { ShmFaults } from "./_shm_faults.ts";
import { ShmRounds } from "./_shm_wait.ts";
import { ShmOps } from "./_shm_op.ts";
import { ShmSlots } from "./_shm_slots.ts";
import { ShmPeerBuffers } from "./_shm_peer_buffers.ts";
import { ShmReduce } from "./_shm_reduce.ts";
import { ShmMoves } from "./_shm_move.ts";
import { currentArena } from "./arena.ts";
import {
  checkOp,
  checkTimeout,
  CTRL_STRIDE,
  D_A,
  D_B,
  DESC,
  DTYPES,
  type OpName,
  OPS,
  REDS,
} from "./_shm_layout.ts";

export { ShmLink };
export {
  createShmGroupSpec,
  DEFAULT_CHANNEL_BYTES,
  DEFAULT_SLOT_BYTES,
  type ShmGroupSpec,
} from "./_shm_group.ts";
export type { ShmLinkInit } from "./_shm_link.ts";

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
  #timeoutMs: number;
  #smallBytes: number;
  #opts: ShmOptions;
  /** Liveness, deadlines and agreement. */
  #faults: ShmFaults;
  /** Rounds and the waits under them. */
  #rounds: ShmRounds;
  /** The op lifecycle. */
  #ops: ShmOps;
  /** The staging slots. */
  #slots: ShmSlots;
  /** Buffers read in place. */
  #buffers: ShmPeerBuffers;
  /** All-reduce, reduce and reduce-scatter. */
  #reduce: ShmReduce;
  /** All-gather, broadcast and all-to-all. */
  #moves: ShmMoves;
  #channels: ShmChannels;

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
    this.#timeoutMs = checkTimeout(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.#smallBytes = opts.smallBytes ?? 64 * 1024;
    this.#faults = new ShmFaults(this.#ctrl, rank, spec.size, spec.name, link, spec.worldRanks);
    this.#rounds = new ShmRounds(this.#ctrl, this.#faults, {
      spinUs: opts.spinUs,
      worldSize: link.worldSize,
    });
    this.#slots = new ShmSlots(spec);
    this.#ops = new ShmOps(this.#faults, this.#rounds, this.#slots);
    this.#buffers = new ShmPeerBuffers(this.#ctrl, spec, link, this.#rounds, this.#faults);
    const parts = [
      rank,
      spec.size,
      this.#smallBytes,
      this.#slots,
      this.#rounds,
      this.#buffers,
    ] as const;
    this.#reduce = new ShmReduce(...parts);
    this.#moves = new ShmMoves(...parts);
    this.#channels = new ShmChannels(spec, rank, {
      wait: (...a) => this.#rounds.wait(...a),
      problem: (ctx, peer) => this.#faults.problem(ctx, peer),
      post: (peer, key, sab) => this.#link.post(spec.worldRanks[peer]!, key, sab),
      receive: async (ctx, peer, key) =>
        await this.#link.receive(
          key,
          spec.worldRanks[peer]!,
          () => this.#faults.problem(ctx, peer),
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
    return this.#ops.enqueue("allReduce", ms, (ctx) => {
      const desc = this.#desc("allReduce", buf.length, dtype, op, -1);
      return this.#reduce.reduce(ctx, desc, buf, op, dtype, -1);
    });
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
    await this.#ops.enqueue("reduce", ms, (ctx) => {
      const desc = this.#desc("reduce", buf.length, dtype, op, root);
      return this.#reduce.reduce(ctx, desc, buf, op, dtype, root);
    });
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
    await this.#ops.enqueue("reduceScatter", ms, (ctx) => {
      const desc = this.#desc("reduceScatter", output.length, dtype, op, -1);
      return this.#reduce.reduceScatter(ctx, desc, input, output, op, dtype);
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
    await this.#ops.enqueue("allGather", ms, (ctx) => {
      const desc = this.#desc("allGather", input.length, dtype, null, -1);
      return this.#moves.allGather(ctx, desc, input, output, dtype);
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
    await this.#ops.enqueue("broadcast", ms, (ctx) => {
      const desc = this.#desc("broadcast", buf.length, dtype, null, root);
      return this.#moves.broadcast(ctx, desc, buf, root, dtype);
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
    await this.#ops.enqueue("allToAll", ms, (ctx) => {
      const desc = this.#desc("allToAll", input.length / this.size, dtype, null, -1);
      return this.#moves.allToAll(ctx, desc, input, output, dtype);
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
    return this.#ops.enqueue("barrier", ms, async (ctx) => {
      this.#slots.nextHalf();
      const w = this.#rounds.round(ctx, this.#desc("barrier", 0, "float32", null, -1));
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
    await this.#ops.enqueue("split", ms, async (ctx) => {
      this.#slots.nextHalf();
      const seq = this.#ops.seq;
      const d = this.#desc("split", 0, "float32", null, -1);
      const base = this.rank * CTRL_STRIDE + DESC + (seq & 1) * 8;
      Atomics.store(this.#ctrl, base + D_A, color);
      Atomics.store(this.#ctrl, base + D_B, key);
      await this.#rounds.round(ctx, d);
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
          this.#slots.arena,
        );
        for (const m of members.slice(1)) {
          this.#link.post(this.spec.worldRanks[m.rank]!, tag, spec);
        }
      } else {
        spec = await this.#link.receive(
          tag,
          this.spec.worldRanks[leader]!,
          () => this.#faults.problem(ctx, leader),
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
    await this.#ops.p2p(
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
    await this.#ops.p2p(
      `r${peer}`,
      "recv",
      ms,
      (ctx) => this.#channels.recv(ctx, buf, dtype, peer, tag),
    );
  }

  /** Leave the group: pending and later ops of this rank reject; peers see the rank as lost. */
  close(): Promise<void> {
    if (!this.#faults.closed) {
      this.#buffers.close();
      this.#reduce.close(currentArena());
      this.#faults.close();
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

  // ---- the op descriptor -------------------------------------------------------------------

  /** What every rank publishes in an op's first round, for the others to compare. */
  #desc(op: OpName, count: number, dtype: DType, red: ReduceOp | null, root: number): number[] {
    return [
      OPS.indexOf(op),
      count,
      DTYPES.indexOf(dtype),
      red === null ? -1 : REDS.indexOf(red),
      root,
      this.#ops.seq,
    ];
  }
}
