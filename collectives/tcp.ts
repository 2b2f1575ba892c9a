/**
 * A {@linkcode Communicator} over TCP between processes and nodes: a full mesh of connections
 * built by {@linkcode rendezvous}, length-prefixed frames ({@link ./frame.ts}), the ring for
 * large messages ({@link ./_ring.ts}) and recursive doubling ({@link ./_recursive_doubling.ts})
 * or a direct exchange ({@link ./_direct.ts}) for small ones, chosen by {@link ./algorithms.ts}
 * and run over the group's frames ({@link ./_tcp_exchange.ts}). Small all-reduces and barriers
 * take lanes when every pair of the group has one ({@link ./_tcp_lane.ts}: an extra connection
 * per pair driven through libc by FFI, ~15 us instead of ~50 us for 4 KiB on loopback). Rings
 * over arena buffers ({@link ./arena.ts}) receive into arena scratch and fold in WebAssembly
 * SIMD.
 *
 * Faults: every op has a deadline; when a peer's socket closes or errors, every pending op of
 * every group containing that peer rejects with a {@linkcode CollectiveError} naming the lost
 * rank. Each frame carries the op, element count, dtype, reduce op and root, so ranks that call
 * different things see a `"mismatch"` error. A rank that fails an op tells the rest of the group
 * (an abort frame), and a group that has failed rejects every later op ({@link ./_tcp_faults.ts},
 * around each op's life in {@link ./_tcp_op.ts}); so does a rank that loses a peer, so that ranks
 * which only see it leave name the rank that died. `LOOM_NET_FAULT` drops or delays the
 * connection from one rank to another, for tests ({@link ./_net_fault.ts} has the grammar):
 * `drop:1-2@40`, `delay:0-1:5`.
 *
 * @module
 */
import {
  checkGatherShape,
  checkOp,
  checkScatterShape,
  checkTag,
  checkTimeout,
  sameType,
} from "./_args.ts";
import {
  type CollectiveBuffer,
  type CollectiveOptions,
  type Communicator,
  DEFAULT_TIMEOUT_MS,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";
import { finishAvg } from "./reduce.ts";
import { DEFAULT_MAX_FRAME_BYTES, FrameOp, packKind } from "./frame.ts";
import { rendezvous, type RendezvousOptions } from "./rendezvous.ts";
import { netFaults } from "./_net_fault.ts";
import { type Lane, openLanes } from "./_tcp_lane.ts";
import { EAGER_COPY_BYTES, type OpCtx, TcpTransport } from "./_tcp_transport.ts";
import { TcpGroupFaults } from "./_tcp_faults.ts";
import { TcpOps } from "./_tcp_op.ts";
import { TcpExchange } from "./_tcp_exchange.ts";
import { LaneOps } from "./_tcp_lane_ops.ts";
import { chooseAllReduce, DEFAULT_CHUNK_BYTES, SMALL_MESSAGE_BYTES } from "./algorithms.ts";
import { atLeastOne, awaitAll, bytesOf, chunkElements } from "./_exchange.ts";
import {
  chainBroadcast,
  ringAllGather,
  ringAllReduce,
  ringReduce,
  ringReduceScatter,
  RingScratch,
} from "./_ring.ts";
import { disseminationBarrier, recursiveDoubling } from "./_recursive_doubling.ts";
import {
  directAllGather,
  directAllReduce,
  directAllToAll,
  directBroadcast,
  directReduce,
  directReduceScatter,
} from "./_direct.ts";

/** Options of {@linkcode connectTcp}: the rendezvous and the communicator's tuning. */
export interface TcpOptions extends RendezvousOptions {
  /** Default timeout of every op, in milliseconds; default {@linkcode DEFAULT_TIMEOUT_MS}. */
  opTimeoutMs?: number;
  /** Bytes per frame of pipelined algorithms; default 1 MiB. */
  chunkBytes?: number;
  /** Messages up to this size take the latency-optimal path; default and at most 64 KiB. */
  smallBytes?: number;
  /**
   * Open a lane (an extra connection driven through libc by FFI) to every peer for small
   * all-reduces: ~15 us instead of ~50 us for 4 KiB on loopback. Default true; lanes need
   * Linux, IPv4 and the FFI permission (`--allow-ffi` or `-A`), and silently stay closed
   * without them. Every rank of a world must pass the same value.
   */
  lanes?: boolean;
}

/**
 * Join a TCP world and return its communicator (group name `"world"`).
 *
 * Pass the same `secret` to every rank (or set `LOOM_SECRET` in every rank's environment): then
 * every connection of the job, to rank 0, between ranks and for lanes, proves knowledge of it
 * both ways (an HMAC-SHA-256 challenge-response) before anything else is accepted, and
 * connections that cannot are refused and logged while the job goes on. **Without a secret,
 * anyone who can reach a rank's port can join the job**: keep such jobs on loopback or a private
 * network (a rank that listens beyond loopback without a secret warns once). The secret
 * authenticates connections; it does not encrypt the traffic. Rank 0 listens on `listenAddr`,
 * by default the master address itself, and keeps listening until the world closes, refusing
 * late connections with a reason.
 *
 * @example Two ranks on one machine
 * ```ts ignore
 * import { connectTcp } from "./tcp.ts";
 * const rank = Number(Deno.env.get("RANK"));
 * const comm = await connectTcp({
 *   rank,
 *   size: 2,
 *   masterAddr: "127.0.0.1",
 *   masterPort: 29500,
 *   secret: Deno.env.get("JOB_SECRET"), // the same on both ranks; LOOM_SECRET is read by default
 * });
 * const x = new Float32Array([rank + 1]);
 * await comm.allReduce(x); // x[0] === 3 on both ranks
 * await comm.close();
 * ```
 *
 * @param opts who this rank is, where rank 0 listens, the job secret, and tuning
 * @returns the world communicator
 * @throws {RangeError} on bad options, or when rank 0 refuses this rank (a taken rank, another
 *   world size, a job already running)
 * @throws {CollectiveError} when the rendezvous times out (reason `"timeout"`), or a secret is
 *   wrong or missing on one side (reason `"protocol"`)
 */
export async function connectTcp(opts: TcpOptions): Promise<Communicator> {
  const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const smallBytes = opts.smallBytes ?? SMALL_MESSAGE_BYTES;
  const opTimeoutMs = opts.opTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isInteger(chunkBytes) || chunkBytes < 4096 || chunkBytes % 8 !== 0) {
    throw new RangeError(`chunkBytes must be a multiple of 8 and at least 4096, got ${chunkBytes}`);
  }
  if (!Number.isInteger(smallBytes) || smallBytes < 0 || smallBytes > EAGER_COPY_BYTES) {
    throw new RangeError(`smallBytes must be in 0..${EAGER_COPY_BYTES}, got ${smallBytes}`);
  }
  checkTimeout(opTimeoutMs);
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  if (maxFrameBytes < Math.max(chunkBytes, EAGER_COPY_BYTES)) {
    throw new RangeError(
      `maxFrameBytes (${maxFrameBytes}) must be at least chunkBytes and ${EAGER_COPY_BYTES}`,
    );
  }
  const faults = netFaults(opts.rank, opts.size); // LOOM_NET_FAULT, for tests
  const mesh = await rendezvous(opts);
  let lanes: (Lane | null)[];
  try {
    lanes = await openLanes(mesh, EAGER_COPY_BYTES, (opts.lanes ?? true) && faults.lanes);
  } catch (e) {
    for (const l of mesh.links) l?.conn.close();
    await mesh.gate?.close();
    throw e;
  }
  const t = new TcpTransport(mesh, chunkBytes, smallBytes, opTimeoutMs, lanes, faults.peers);
  const members = Array.from({ length: t.size }, (_, i) => i);
  return new TcpComm(t, 0, "world", members, t.rank);
}

function fnv(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    for (let i = 0; i < 4; i++) {
      h ^= (p >>> (8 * i)) & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  }
  return h === 0 ? 1 : h;
}

/** A group of ranks over the shared TCP mesh. */
class TcpComm implements Communicator {
  readonly transport = "tcp";
  readonly size: number;
  /** The op lifecycle. */
  readonly #ops: TcpOps;
  /** The group's sends and receives, which the algorithms run over. */
  readonly #x: TcpExchange;
  /** Small ops over lanes. */
  readonly #lanes: LaneOps;
  /** Arena scratch for the ring's incoming chunks. */
  readonly #scratch = new RingScratch();
  #splits = 0;

  constructor(
    readonly t: TcpTransport,
    readonly id: number,
    readonly name: string,
    readonly members: number[],
    readonly rank: number,
  ) {
    this.size = members.length;
    // Who is in the group and how its ops fail, which the transport reports faults to.
    const g = new TcpGroupFaults(t, id, name, members, rank);
    this.#ops = new TcpOps(t, g);
    this.#x = new TcpExchange(t, g, rank);
    this.#lanes = new LaneOps(t, g);
    t.groups.set(id, g);
  }

  // ---- the Communicator ------------------------------------------------------------------

  /** See {@linkcode Communicator.allReduce}. */
  allReduce(
    buf: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    try {
      return this.#allReduce(buf, op, opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #allReduce(buf: CollectiveBuffer, op: ReduceOp, opts?: CollectiveOptions): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    checkOp(op);
    const expect = { op: FrameOp.allReduce, kind: packKind(dtype, op), total: buf.length, arg: 0 };
    const algo = chooseAllReduce(buf.byteLength, this.size, this.t.smallBytes);
    const small = algo === "recursive-doubling" || algo === "direct";
    const lanes = small ? this.#lanes.lanes() : null;
    const x = this.#x;
    const done = this.#ops.run("allReduce", expect, opts, true, (ctx) => {
      if (lanes !== null) return this.#lanes.allReduce(ctx, lanes, buf, op, dtype);
      if (algo === "recursive-doubling") return recursiveDoubling(x, ctx, buf, op, dtype);
      if (algo === "direct") return directAllReduce(x, ctx, buf, op, dtype);
      if (algo === "ring") return ringAllReduce(x, ctx, buf, op, dtype, this.#scratch);
      return Promise.resolve();
    }, small);
    return op === "avg" ? done.then(() => finishAvg(buf, this.size, dtype)) : done;
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
    const expect = { op: FrameOp.reduceScatter, kind: packKind(dtype, op), total: m, arg: 0 };
    const x = this.#x;
    await this.#ops.run("reduceScatter", expect, opts, true, (ctx) => {
      if (this.size === 1) {
        output.set(input as Float32Array);
        return Promise.resolve();
      }
      if (input.byteLength <= this.t.smallBytes) {
        const segs = Array.from({ length: this.size }, (_, i) => ({ offset: i * m, length: m }));
        return directReduceScatter(x, ctx, input, output, segs, op, dtype);
      }
      return ringReduceScatter(x, ctx, input, output, op, dtype, this.#scratch);
    });
    if (op === "avg") finishAvg(output, this.size, dtype);
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
    const expect = { op: FrameOp.allGather, kind: packKind(dtype), total: m, arg: 0 };
    await this.#ops.run(
      "allGather",
      expect,
      opts,
      true,
      (ctx) => this.#allGather(ctx, input, output),
    );
  }

  #allGather(ctx: OpCtx, input: CollectiveBuffer, output: CollectiveBuffer): Promise<void> {
    const n = this.size, r = this.rank, m = input.length;
    const segs = Array.from({ length: n }, (_, i) => ({ offset: i * m, length: m }));
    output.set(input as Float32Array, r * m);
    if (n === 1) return Promise.resolve();
    if (output.byteLength <= this.t.smallBytes * 4) {
      return directAllGather(this.#x, ctx, output, segs);
    }
    return ringAllGather(this.#x, ctx, output, segs);
  }

  /** See {@linkcode Communicator.broadcast}. */
  async broadcast(buf: CollectiveBuffer, root: number, opts?: CollectiveOptions): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkRank(root, "broadcast", "root");
    const expect = { op: FrameOp.broadcast, kind: packKind(dtype), total: buf.length, arg: root };
    await this.#ops.run("broadcast", expect, opts, true, (ctx) => {
      if (this.size === 1) return Promise.resolve();
      if (buf.byteLength <= this.t.smallBytes) return directBroadcast(this.#x, ctx, buf, root);
      return chainBroadcast(this.#x, ctx, buf, root);
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
    const expect = { op: FrameOp.reduce, kind: packKind(dtype, op), total: buf.length, arg: root };
    const x = this.#x;
    await this.#ops.run("reduce", expect, opts, true, (ctx) => {
      if (this.size === 1) return Promise.resolve();
      if (buf.byteLength <= this.t.smallBytes) return directReduce(x, ctx, buf, root, op, dtype);
      return ringReduce(x, ctx, buf, root, op, dtype, this.#scratch);
    });
    if (op === "avg" && this.rank === root) finishAvg(buf, this.size, dtype);
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
    const expect = { op: FrameOp.allToAll, kind: packKind(dtype), total: input.length, arg: 0 };
    await this.#ops.run("allToAll", expect, opts, true, (ctx) => {
      return directAllToAll(this.#x, ctx, input, output);
    });
  }

  /** See {@linkcode Communicator.send}. */
  async send(
    buf: CollectiveBuffer,
    peer: number,
    tag = 0,
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkPeer(peer, "send");
    checkTag(tag);
    const expect = { op: FrameOp.send, kind: packKind(dtype), total: buf.length, arg: 0 };
    await this.#ops.run("send", expect, opts, false, (ctx) => {
      // Every chunk of a message carries its tag: they match in order.
      for (const c of atLeastOne({ offset: 0, length: buf.length }, chunkElements(this.#x, buf))) {
        this.#x.send(ctx, peer, tag, bytesOf(buf, c));
      }
      return Promise.resolve();
    });
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
    checkTag(tag);
    const expect = { op: FrameOp.send, kind: packKind(dtype), total: buf.length, arg: 0 };
    await this.#ops.run("recv", expect, opts, false, (ctx) => {
      const x = this.#x;
      const ps = atLeastOne({ offset: 0, length: buf.length }, chunkElements(x, buf)).map((c) =>
        x.post(ctx, peer, tag, bytesOf(buf, c))
      );
      return awaitAll(x, ctx, peer, ps);
    });
  }

  /** See {@linkcode Communicator.barrier}. Dissemination: ceil(log2 n) rounds of empty frames. */
  async barrier(opts?: CollectiveOptions): Promise<void> {
    const expect = { op: FrameOp.barrier, kind: 0, total: 0, arg: 0 };
    const lanes = this.size > 1 ? this.#lanes.lanes() : null;
    if (lanes !== null) {
      // Everyone tells everyone over the lanes (one round, no payload).
      const none = new Float32Array(0);
      await this.#ops.run("barrier", expect, opts, true, (ctx) => {
        return this.#lanes.exchange(ctx, lanes, none, () => {});
      }, true);
      return;
    }
    await this.#ops.run("barrier", expect, opts, true, (ctx) => disseminationBarrier(this.#x, ctx));
  }

  /** See {@linkcode Communicator.split}. */
  async split(color: number, key = 0): Promise<Communicator | null> {
    if (!Number.isInteger(color) || !Number.isInteger(key) || Math.abs(color) > 2 ** 31 - 1) {
      throw new RangeError(`split: color and key must be 32-bit integers, got ${color}, ${key}`);
    }
    const mine = new Int32Array([color, key]);
    const all = new Int32Array(2 * this.size);
    const expect = { op: FrameOp.split, kind: packKind("int32"), total: 2, arg: 0 };
    await this.#ops.run("split", expect, undefined, true, (ctx) => this.#allGather(ctx, mine, all));
    const index = ++this.#splits;
    if (color < 0) return null;
    const ranks: number[] = [];
    for (let g = 0; g < this.size; g++) if (all[2 * g] === color) ranks.push(g);
    ranks.sort((a, b) => all[2 * a + 1]! - all[2 * b + 1]! || a - b);
    const id = fnv(this.id, index, color);
    return new TcpComm(
      this.t,
      id,
      `${this.name}/split(${color})`,
      ranks.map((g) => this.members[g]!),
      ranks.indexOf(this.rank),
    );
  }

  /** See {@linkcode Communicator.close}. Closing the world closes every connection. */
  async close(): Promise<void> {
    if (this.#ops.closed) return;
    this.#ops.close();
    this.t.groups.delete(this.id);
    if (this.id === 0) await this.t.close();
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
}
