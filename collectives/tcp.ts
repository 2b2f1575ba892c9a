/**
 * A {@linkcode Communicator} over TCP between processes and nodes: a full mesh of connections
 * built by {@linkcode rendezvous}, length-prefixed frames ({@link ./frame.ts}), ring all-reduce
 * for large messages and recursive doubling or a direct exchange for small ones
 * ({@link ./algorithms.ts}). Small all-reduces and barriers take lanes when every pair of the
 * group has one ({@link ./_tcp_lane.ts}: an extra connection per pair driven through libc by
 * FFI, ~15 us instead of ~50 us for 4 KiB on loopback). Rings over arena buffers
 * ({@link ./arena.ts}) receive into arena scratch and fold in WebAssembly SIMD.
 *
 * Faults: every op has a deadline; when a peer's socket closes or errors, every pending op of
 * every group containing that peer rejects with a {@linkcode CollectiveError} naming the lost
 * rank. Each frame carries the op, element count, dtype, reduce op and root, so ranks that call
 * different things see a `"mismatch"` error. A rank that fails an op tells the rest of the group
 * (an abort frame), and a group that has failed rejects every later op; so does a rank that loses
 * a peer, so that ranks which only see it leave name the rank that died. `LOOM_NET_FAULT`
 * drops or delays the connection from one rank to another, for tests
 * ({@link ./_net_fault.ts} has the grammar): `drop:1-2@40`, `delay:0-1:5`.
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
  CollectiveError,
  type CollectiveOptions,
  type Communicator,
  DEFAULT_TIMEOUT_MS,
  type DType,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";
import { finishAvg, reduceInto, reduceTo } from "./reduce.ts";
import { currentArena, type SharedArena } from "./arena.ts";
import { type ArenaFold, arenaFold } from "./_shm_fold.ts";
import { type Lane, LaneError, laneKey, openLanes, waitLanes } from "./_tcp_lane.ts";
import {
  DEFAULT_MAX_FRAME_BYTES,
  describeKind,
  encodeHeader,
  type Frame,
  type FrameHeader,
  FrameOp,
  frameOpName,
  HEADER_BYTES,
  packKind,
} from "./frame.ts";
import { rendezvous, type RendezvousOptions } from "./rendezvous.ts";
import { netFaults } from "./_net_fault.ts";
import {
  EAGER_COPY_BYTES,
  type Expect,
  keyOf,
  OpCtx,
  removeFrom,
  TcpTransport,
  type Waiter,
} from "./_tcp_transport.ts";
import {
  chooseAllReduce,
  chunks,
  DEFAULT_CHUNK_BYTES,
  mod,
  ringAllGatherStep,
  ringReduceScatterStep,
  SMALL_MESSAGE_BYTES,
  type Span,
  splitEven,
} from "./algorithms.ts";

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

/**
 * Fold every rank's part in rank order into `buf`, which is part `r`: in place when r < 2 (it is
 * an operand of the first step, element by element), else through a copy.
 */
function laneFold(
  parts: CollectiveBuffer[],
  r: number,
  buf: CollectiveBuffer,
  op: ReduceOp,
  dtype: DType,
) {
  const acc = r < 2 ? buf : parts[0]!.slice();
  reduceTo(acc, parts[0]!, parts[1]!, op, dtype);
  for (let j = 2; j < parts.length; j++) reduceInto(acc, parts[j]!, op, dtype);
  if (acc !== buf) buf.set(acc as Float32Array);
}

/** A small op on lanes spins this long for its peers before it waits in poll(). */
const LANE_SPIN_MS = 0.05;
/** ... and holds the event loop in poll() this long before it waits with the loop free. */
const LANE_HOLD_MS = 2;

function bytesOf(buf: CollectiveBuffer, span?: Span): Uint8Array {
  const bpe = buf.BYTES_PER_ELEMENT;
  if (span === undefined) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  return new Uint8Array(buf.buffer, buf.byteOffset + span.offset * bpe, span.length * bpe);
}

function viewLike(like: CollectiveBuffer, bytes: Uint8Array): CollectiveBuffer {
  const bpe = like.BYTES_PER_ELEMENT;
  if (like instanceof Float32Array) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
  }
  if (like instanceof Int32Array) {
    return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
  }
  return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
}

function sub(buf: CollectiveBuffer, s: Span): CollectiveBuffer {
  return buf.subarray(s.offset, s.offset + s.length);
}

function atLeastOne(span: Span, chunk: number): Span[] {
  return span.length === 0 ? [span] : chunks(span, chunk);
}

function stepTag(step: number, chunk: number): number {
  return (step << 20) | (chunk & 0xfffff);
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
  #seq = 0;
  #done = 0;
  #finished = new Set<number>();
  #splits = 0;
  #broken: CollectiveError | undefined;
  #closed = false;
  #index = new Map<number, number>();

  constructor(
    readonly t: TcpTransport,
    readonly id: number,
    readonly name: string,
    readonly members: number[],
    readonly rank: number,
  ) {
    this.size = members.length;
    members.forEach((w, g) => this.#index.set(w, g));
    t.groups.set(id, this);
  }

  /** Group rank of a world rank, or undefined when it is not a member. */
  groupRank(world: number): number | undefined {
    return this.#index.get(world);
  }

  /** The error for an op that lost group rank `g`. */
  lostError(op: string, g: number): CollectiveError {
    const w = this.members[g]!;
    return new CollectiveError(
      "peer-lost",
      op,
      this.name,
      g,
      `lost rank ${g}${this.id === 0 ? "" : ` (world rank ${w})`}: ${this.t.lost.get(w)}`,
    );
  }

  /** Fail an op whose deadline passed. */
  timedOut(ctx: OpCtx): void {
    const who = ctx.waitingOn === undefined ? "" : `, waiting for rank ${ctx.waitingOn}`;
    this.#fail(
      ctx,
      new CollectiveError(
        "timeout",
        ctx.name,
        this.name,
        ctx.waitingOn,
        `no result within ${ctx.timeoutMs} ms (call #${ctx.seq}${who}): a rank died, stalled ` +
          `or called a different op`,
      ),
    );
  }

  /** Fail this group for good: the active op and every later one reject with `e`. */
  breakWith(e: CollectiveError): void {
    this.#broken ??= e;
    for (const ctx of [...this.t.active]) if (ctx.comm === this) ctx.fail(e);
  }

  /** Check a collective frame from world rank `peer` against what this rank is doing. */
  checkIncoming(peer: number, h: FrameHeader): void {
    const g = this.groupRank(peer);
    if (g === undefined) return;
    if (h.seq <= this.#done && h.seq > this.#done - 0x40000000) {
      this.breakWith(
        new CollectiveError(
          "mismatch",
          frameOpName(h.op),
          this.name,
          g,
          `rank ${g} sent data for call #${h.seq} (${
            describeCall(h)
          }) after this rank had finished that ` +
            `call: the ranks called different ops, sizes or roots`,
        ),
      );
      return;
    }
    const active = this.t.active;
    for (let i = 0; i < active.length; i++) {
      const ctx = active[i]!;
      if (ctx.comm !== this || ctx.seq !== h.seq) continue;
      const e = ctx.expect;
      if (e.op !== h.op || e.kind !== h.kind || e.total !== h.total || e.arg !== h.arg) {
        const mine = `${frameOpName(e.op)} of ${e.total} ${describeKind(e.kind)}` +
          (e.op === FrameOp.broadcast || e.op === FrameOp.reduce ? ` root ${e.arg}` : "");
        this.#fail(
          ctx,
          new CollectiveError(
            "mismatch",
            ctx.name,
            this.name,
            g,
            `rank ${g} called ${
              describeCall(h)
            } while rank ${this.rank} called ${mine} (call #${h.seq}): ` +
              `every rank must call the same ops in the same order with the same sizes`,
          ),
        );
      }
    }
  }

  #fail(ctx: OpCtx, e: CollectiveError): void {
    if (ctx.failed) return;
    ctx.fail(e);
    this.#broken ??= e;
    if (e.reason === "mismatch" || e.reason === "timeout" || e.reason === "protocol") {
      const body = new TextEncoder().encode(JSON.stringify({
        reason: e.reason,
        op: e.op,
        peer: e.peer === undefined ? undefined : this.members[e.peer],
        detail: e.message,
      }));
      for (const w of this.members) {
        if (w === this.t.rank || this.t.lost.has(w)) continue;
        this.t.send(w, {
          op: FrameOp.abort,
          kind: 0,
          src: this.t.rank,
          group: this.id,
          tag: 0,
          seq: 0,
          total: 0,
          arg: 0,
          length: body.length,
        }, body);
      }
    }
  }

  /** Run one op: checks, sequence number, deadline, failure propagation. */
  #run(
    name: string,
    expect: Omit<Expect, "total"> & { total: number },
    opts: CollectiveOptions | undefined,
    collective: boolean,
    body: (ctx: OpCtx) => Promise<void>,
    small = false,
  ): Promise<void> {
    let ctx: OpCtx;
    try {
      ctx = this.#begin(name, expect, opts, collective);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#drive(ctx, body, small);
  }

  /** The checks before an op, its sequence number and its deadline. */
  #begin(
    name: string,
    expect: Expect,
    opts: CollectiveOptions | undefined,
    collective: boolean,
  ): OpCtx {
    const timeout = opts?.timeoutMs ?? this.t.timeoutMs;
    checkTimeout(timeout);
    if (this.#closed) {
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
    if (this.t.lost.size > 0) {
      for (let g = 0; g < this.size; g++) {
        const w = this.members[g]!;
        if (this.t.lost.has(w) && !this.t.closedCleanly.has(w)) throw this.lostError(name, g);
      }
    }
    const seq = collective ? ++this.#seq : 0;
    const ctx = new OpCtx(this, name, seq, expect);
    this.t.active.push(ctx);
    ctx.deadline = performance.now() + timeout;
    ctx.timeoutMs = timeout;
    this.t.watch(ctx);
    return ctx;
  }

  /** Run an op's body and wait for its writes; failures propagate to the group. */
  async #drive(ctx: OpCtx, body: (ctx: OpCtx) => Promise<void>, small: boolean): Promise<void> {
    const seq = ctx.seq, collective = seq !== 0;
    try {
      if (collective) this.#scanQueued(seq);
      if (small) {
        // Every await of a small op's body is on a posted receive, which a failing op rejects,
        // and small writes are copied and never wait on the peer: no race against the failure.
        await body(ctx);
        const sends = ctx.sends;
        if (sends.length === 1) await sends[0];
        else if (sends.length > 1) await Promise.all(sends);
      } else {
        await Promise.race([body(ctx), ctx.failure]);
        await Promise.race([Promise.all(ctx.sends), ctx.failure]);
      }
      if (ctx.failed) throw ctx.failed;
    } catch (e) {
      if (!(e instanceof CollectiveError) && ctx.failed) throw ctx.failed;
      if (!(e instanceof CollectiveError)) {
        const err = new CollectiveError("protocol", ctx.name, this.name, ctx.waitingOn, String(e));
        this.#fail(ctx, err);
        throw err;
      }
      this.#fail(ctx, e);
      throw e;
    } finally {
      removeFrom(this.t.active, ctx);
      if (collective) {
        // #done: every call up to it has finished (calls may overlap when not awaited).
        if (seq === this.#done + 1) this.#done++;
        else this.#finished.add(seq);
        while (this.#finished.size > 0 && this.#finished.delete(this.#done + 1)) this.#done++;
      }
    }
  }

  #scanQueued(seq: number): void {
    for (let g = 0; g < this.size; g++) {
      const w = this.members[g]!;
      if (g === this.rank || this.t.channels[w]!.size <= 1) continue;
      const ch = this.t.channels[w]!.get(`${this.id}:${seq}`);
      const f = ch?.frames[0];
      if (f !== undefined) this.checkIncoming(w, f.header);
    }
  }

  #send(ctx: OpCtx, peer: number, tag: number, payload: Uint8Array, seq = ctx.seq): void {
    const e = ctx.expect;
    const sent = this.t.send(this.members[peer]!, {
      op: e.op,
      kind: e.kind,
      src: this.t.rank,
      group: this.id,
      tag,
      seq,
      total: e.total,
      arg: e.arg,
      length: payload.length,
    }, payload);
    // The op waits for its writes, so a write that fails fails the op itself (not waiting for
    // small, copied payloads measured no faster).
    ctx.sends.push(sent);
  }

  /** Post a receive; the promise resolves with the (checked) frame. */
  #post(ctx: OpCtx, peer: number, tag: number, dest?: Uint8Array): Promise<Frame> {
    const w = this.members[peer]!;
    const e = ctx.expect;
    const key = keyOf(this.id, e.op, ctx.seq, tag);
    const ch = this.t.channel(w, key);
    const check = (f: Frame): Frame => {
      const h = f.header;
      if (
        h.op !== e.op || h.kind !== e.kind || h.total !== e.total || h.arg !== e.arg ||
        (dest !== undefined && h.length !== dest.length)
      ) this.#mismatch(ctx, peer, h);
      if (h.tag !== tag && e.op !== FrameOp.send) {
        throw new CollectiveError(
          "protocol",
          ctx.name,
          this.name,
          peer,
          `frame ${h.tag} arrived where ${tag} was expected`,
        );
      }
      if (dest !== undefined && f.payload !== dest) {
        dest.set(f.payload);
        this.t.release(f.payload);
      }
      return f;
    };
    let p: Promise<Frame>;
    if (ctx.failed) {
      this.t.tidy(w, key, ch);
      p = Promise.reject(ctx.failed);
    } else if (ch.frames.length === 0 && this.t.lost.has(w)) {
      this.t.tidy(w, key, ch);
      const err = this.lostError(ctx.name, peer);
      ctx.fail(err);
      p = Promise.reject(err);
    } else if (ch.frames.length > 0) {
      const f = ch.frames.shift()!;
      this.t.tidy(w, key, ch);
      try {
        p = Promise.resolve(check(f));
      } catch (err) {
        p = Promise.reject(err);
      }
    } else {
      p = new Promise<Frame>((resolve, reject) => {
        const waiter: Waiter = {
          ctx,
          peer: w,
          tag,
          dest,
          channel: ch,
          resolve: (f) => {
            try {
              resolve(check(f));
            } catch (err) {
              reject(err);
            }
          },
          reject,
        };
        ch.waiters.push(waiter);
        ctx.waiters.push(waiter);
      });
    }
    p.catch(() => {});
    return p;
  }

  /** Fail the op: `peer` sent a frame that does not match the call. */
  #mismatch(ctx: OpCtx, peer: number, h: FrameHeader): never {
    const e = ctx.expect;
    const err = new CollectiveError(
      "mismatch",
      ctx.name,
      this.name,
      peer,
      `rank ${peer} sent ${frameOpName(h.op)} of ${h.total} ${describeKind(h.kind)} ` +
        `(arg ${h.arg}, ${h.length} bytes) where rank ${this.rank} expected ` +
        `${frameOpName(e.op)} of ${e.total} ${describeKind(e.kind)} (arg ${e.arg}): every ` +
        `rank must call the same ops in the same order with the same sizes`,
    );
    this.#fail(ctx, err);
    throw err;
  }

  async #take(ctx: OpCtx, peer: number, p: Promise<Frame>): Promise<Frame> {
    ctx.waitingOn = peer;
    const f = await p;
    ctx.waitingOn = undefined;
    return f;
  }

  #recv(ctx: OpCtx, peer: number, tag: number, dest?: Uint8Array): Promise<Frame> {
    return this.#take(ctx, peer, this.#post(ctx, peer, tag, dest));
  }

  // ---- algorithms --------------------------------------------------------------------------

  /** Small all-reduce: everyone sends its buffer to everyone; reduce in rank order. */
  async #directAllReduce(ctx: OpCtx, buf: CollectiveBuffer, op: ReduceOp, dtype: DType) {
    const n = this.size;
    for (let j = 0; j < n; j++) if (j !== this.rank) this.#send(ctx, j, 0, bytesOf(buf));
    const posted = new Map<number, Promise<Frame>>();
    for (let j = 0; j < n; j++) if (j !== this.rank) posted.set(j, this.#post(ctx, j, 0));
    const parts: CollectiveBuffer[] = [];
    const payloads: Uint8Array[] = [];
    for (let j = 0; j < n; j++) {
      if (j === this.rank) parts.push(buf);
      else {
        const f = await this.#take(ctx, j, posted.get(j)!);
        payloads.push(f.payload);
        parts.push(viewLike(buf, f.payload));
      }
    }
    const acc = parts[0]!.slice();
    for (let j = 1; j < n; j++) reduceInto(acc, parts[j]!, op, dtype);
    buf.set(acc as Float32Array);
    for (const p of payloads) this.t.release(p);
  }

  #laneList: (Lane | null)[] | null | undefined;

  /** The lanes to every other member, or null unless every pair has a working one. */
  #lanes(): (Lane | null)[] | null {
    if (this.#laneList === undefined) {
      const out: (Lane | null)[] = [];
      for (let g = 0; g < this.size; g++) {
        const l = g === this.rank ? null : this.t.lanes[this.members[g]!] ?? null;
        if (g !== this.rank && l === null) return this.#laneList = null;
        out.push(l);
      }
      this.#laneList = out;
    }
    const list = this.#laneList;
    if (list !== null) {
      for (const l of list) {
        if (l !== null && l.broken !== undefined) return null;
      }
    }
    return list;
  }

  #laneHead = new Uint8Array(HEADER_BYTES);

  /**
   * Small all-reduce over the lanes: send the buffer to every member, wait for theirs (spinning
   * for 50 us, then in poll() for up to 2 ms with the event loop held, then polling every
   * millisecond with it free), fold in rank order: the same fold as
   * {@linkcode TcpComm.#directAllReduce}. The fast path runs in plain (not async) functions:
   * spin loops inside an async function showed 150 us stalls in one call out of ten.
   */
  #laneAllReduce(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    buf: CollectiveBuffer,
    op: ReduceOp,
    dtype: DType,
  ): Promise<void> {
    return this.#laneExchange(ctx, lanes, buf, (parts) => {
      laneFold(parts, this.rank, buf, op, dtype);
    });
  }

  /**
   * Send `buf` to every member over the lanes and gather theirs; `done` gets every rank's part
   * (this rank's is `buf`) once all are in.
   */
  #laneExchange(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    buf: CollectiveBuffer,
    done: (parts: CollectiveBuffer[]) => void,
  ): Promise<void> {
    const parts: (CollectiveBuffer | undefined)[] = new Array(this.size);
    parts[this.rank] = buf;
    const key = laneKey(this.id, ctx.seq, 0);
    try {
      this.#laneSend(ctx, lanes, bytesOf(buf));
      if (this.#laneCollect(ctx, lanes, key, buf, parts, LANE_HOLD_MS)) {
        done(parts as CollectiveBuffer[]);
        this.#laneRelease(lanes, parts);
        return Promise.resolve();
      }
    } catch (err) {
      return this.#laneFailure(ctx, err);
    }
    return this.#laneFinish(ctx, lanes, key, buf, parts, done);
  }

  async #laneFinish(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    key: string,
    buf: CollectiveBuffer,
    parts: (CollectiveBuffer | undefined)[],
    done: (parts: CollectiveBuffer[]) => void,
  ): Promise<void> {
    try {
      // A long wait: let the event loop run (mesh frames, aborts, timers) and check in often.
      do {
        this.#scanQueued(ctx.seq);
        await new Promise((res) => setTimeout(res, 1));
      } while (!this.#laneCollect(ctx, lanes, key, buf, parts, 0));
    } catch (err) {
      await this.#laneFailure(ctx, err);
    }
    done(parts as CollectiveBuffer[]);
    this.#laneRelease(lanes, parts);
  }

  #laneSend(ctx: OpCtx, lanes: (Lane | null)[], payload: Uint8Array): void {
    const e = ctx.expect;
    encodeHeader(this.#laneHead, {
      op: e.op,
      kind: e.kind,
      src: this.t.rank,
      group: this.id,
      tag: 0,
      seq: ctx.seq,
      total: e.total,
      arg: e.arg,
      length: payload.length,
    });
    for (let g = 0; g < this.size; g++) {
      if (g !== this.rank && !lanes[g]!.send(this.#laneHead, payload, ctx.deadline)) {
        ctx.waitingOn = g;
        this.timedOut(ctx);
        throw ctx.failed;
      }
    }
  }

  /**
   * Gather the members' frames of `key` into `parts`, waiting up to `holdMs` (after a 50 us
   * spin) with the thread held; true once all are in.
   */
  #laneCollect(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    key: string,
    buf: CollectiveBuffer,
    parts: (CollectiveBuffer | undefined)[],
    holdMs: number,
  ): boolean {
    const n = this.size, e = ctx.expect;
    const t0 = performance.now();
    for (let spins = 0;; spins++) {
      let missing = 0;
      for (let g = 0; g < n; g++) {
        if (parts[g] !== undefined) continue;
        const lane = lanes[g]!;
        let f = lane.take(key);
        if (f === undefined && lane.pump((spins & 15) === 15)) f = lane.take(key);
        if (f === undefined) {
          missing++;
          continue;
        }
        const h = f.header;
        if (
          h.op !== e.op || h.kind !== e.kind || h.total !== e.total || h.arg !== e.arg ||
          h.length !== buf.byteLength
        ) this.#mismatch(ctx, g, h);
        parts[g] = viewLike(buf, f.payload);
      }
      if (missing === 0) {
        ctx.waitingOn = undefined;
        return true;
      }
      if (ctx.failed) throw ctx.failed;
      if ((spins & 15) !== 0) continue;
      const now = performance.now();
      if (now - t0 < LANE_SPIN_MS) continue;
      ctx.waitingOn = parts.findIndex((p) => p === undefined);
      if (now > ctx.deadline) {
        this.timedOut(ctx);
        throw ctx.failed;
      }
      if (now - t0 >= holdMs) return false;
      waitLanes(lanes.filter((l, i) => l !== null && parts[i] === undefined) as Lane[], 1);
    }
  }

  #laneRelease(lanes: (Lane | null)[], parts: (CollectiveBuffer | undefined)[]): void {
    for (let g = 0; g < this.size; g++) {
      if (g !== this.rank) lanes[g]!.release(parts[g]!);
    }
  }

  /**
   * Reject a lane op; a broken lane means its peer is going, once its mesh connection has
   * delivered what it holds (see {@linkcode TcpTransport.suspect}).
   */
  async #laneFailure(ctx: OpCtx, err: unknown): Promise<never> {
    if (!(err instanceof LaneError)) throw err;
    const w = err.peer; // a world rank
    await this.t.suspect(w, `its lane ${err.message}`);
    throw ctx.failed ?? this.lostError(ctx.name, this.#index.get(w)!);
  }

  /** Small all-reduce on a power-of-two group: log2(n) pairwise exchanges. */
  async #recursiveDoubling(ctx: OpCtx, buf: CollectiveBuffer, op: ReduceOp, dtype: DType) {
    for (let k = 1, step = 0; k < this.size; k <<= 1, step++) {
      const partner = this.rank ^ k;
      this.#send(ctx, partner, step, bytesOf(buf)); // copied: small
      const p = this.#post(ctx, partner, step);
      ctx.waitingOn = partner;
      const f = await p;
      ctx.waitingOn = undefined;
      const other = viewLike(buf, f.payload);
      // Both partners compute lower-rank op higher-rank, so they stay bit-identical.
      if (this.rank < partner) reduceInto(buf, other, op, dtype);
      else reduceTo(buf, other, buf, op, dtype);
      this.t.release(f.payload);
    }
  }

  /**
   * Ring reduce-scatter over `segs` of `work` (rank r ends owning segment r fully reduced),
   * optionally followed by the ring all-gather of the reduced segments back into `work`.
   */
  async #ring(
    ctx: OpCtx,
    work: CollectiveBuffer,
    segs: Span[],
    op: ReduceOp,
    dtype: DType,
    allGather: boolean,
  ): Promise<void> {
    const n = this.size, r = this.rank;
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / work.BYTES_PER_ELEMENT));
    const segChunks = segs.map((s) => chunks(s, ce));
    // With `work` in the process arena, chunks arrive in arena scratch and fold in SIMD.
    const arena = currentArena();
    const fold = arenaFold(arena, dtype, op, work);
    let scratch: Uint8Array | undefined;
    if (fold !== undefined) {
      let need = 0;
      for (let s = 0; s < n - 1; s++) {
        for (const c of segChunks[ringReduceScatterStep(r, n, s).recv]!) {
          need += c.length * work.BYTES_PER_ELEMENT;
        }
      }
      scratch = this.#takeScratch(arena!, need);
    }
    try {
      await this.#ringSteps(ctx, work, segChunks, op, dtype, allGather, fold, scratch);
    } finally {
      if (scratch !== undefined) this.#giveScratch(arena!, scratch);
    }
  }

  async #ringSteps(
    ctx: OpCtx,
    work: CollectiveBuffer,
    segChunks: Span[][],
    op: ReduceOp,
    dtype: DType,
    allGather: boolean,
    fold: ArenaFold | undefined,
    scratch: Uint8Array | undefined,
  ): Promise<void> {
    const n = this.size, r = this.rank;
    const right = mod(r + 1, n), left = mod(r - 1, n);
    const rs: Promise<Frame>[] = [];
    const into: Uint8Array[] = [];
    let at = 0;
    for (let s = 0; s < n - 1; s++) {
      const cs = segChunks[ringReduceScatterStep(r, n, s).recv]!;
      cs.forEach((c, ci) => {
        let dest: Uint8Array | undefined;
        if (scratch !== undefined) {
          const len = c.length * work.BYTES_PER_ELEMENT;
          dest = scratch.subarray(at, at += len);
          into.push(dest);
        }
        rs.push(this.#post(ctx, left, stepTag(s, ci), dest));
      });
    }
    const ag: Promise<Frame>[] = [];
    if (allGather) {
      for (let s = 0; s < n - 1; s++) {
        const cs = segChunks[ringAllGatherStep(r, n, s).recv]!;
        cs.forEach((c, ci) =>
          ag.push(this.#post(ctx, left, stepTag(n - 1 + s, ci), bytesOf(work, c)))
        );
      }
    }
    segChunks[ringReduceScatterStep(r, n, 0).send]!.forEach((c, ci) =>
      this.#send(ctx, right, stepTag(0, ci), bytesOf(work, c))
    );
    let k = 0;
    for (let s = 0; s < n - 1; s++) {
      const cs = segChunks[ringReduceScatterStep(r, n, s).recv]!;
      for (let ci = 0; ci < cs.length; ci++) {
        const c = cs[ci]!;
        const w = sub(work, c);
        const f = await this.#take(ctx, left, rs[k]!);
        if (fold !== undefined) fold.to(w, w, viewLike(work, into[k]!), op, dtype);
        else {
          reduceInto(w, viewLike(work, f.payload), op, dtype);
          this.t.release(f.payload);
        }
        k++;
        if (s < n - 2) this.#send(ctx, right, stepTag(s + 1, ci), bytesOf(work, c));
        else if (allGather) this.#send(ctx, right, stepTag(n - 1, ci), bytesOf(work, c));
      }
    }
    if (!allGather) return;
    await this.#ringGatherRest(ctx, work, segChunks, ag, right, left);
  }

  #scratch: Uint8Array | undefined;
  #scratchBusy = false;

  /**
   * At least `bytes` of arena scratch for a ring's incoming chunks: the communicator's cached
   * block, or (while an overlapping op holds it) a block of its own.
   */
  #takeScratch(arena: SharedArena, bytes: number): Uint8Array {
    if (this.#scratchBusy) return arena.alloc(Uint8Array, bytes);
    this.#scratchBusy = true;
    const s = this.#scratch;
    if (s !== undefined && s.length >= bytes && arena.owns(s)) return s;
    if (s !== undefined && arena.owns(s)) arena.free(s);
    this.#scratch = arena.alloc(Uint8Array, Math.max(bytes, 1 << 20));
    return this.#scratch;
  }

  #giveScratch(arena: SharedArena, s: Uint8Array): void {
    if (s === this.#scratch) this.#scratchBusy = false;
    else arena.free(s);
  }

  /** The receive side of a ring all-gather whose step-0 sends are already queued. */
  async #ringGatherRest(
    ctx: OpCtx,
    work: CollectiveBuffer,
    segChunks: Span[][],
    posted: Promise<Frame>[],
    right: number,
    left: number,
  ): Promise<void> {
    const n = this.size, r = this.rank;
    let k = 0;
    for (let s = 0; s < n - 1; s++) {
      const cs = segChunks[ringAllGatherStep(r, n, s).recv]!;
      for (let ci = 0; ci < cs.length; ci++) {
        await this.#take(ctx, left, posted[k++]!);
        if (s < n - 2) this.#send(ctx, right, stepTag(n + s, ci), bytesOf(work, cs[ci]!));
      }
    }
  }

  /** Ring all-gather of `out`'s segments; segment `rank` is already in place. */
  async #ringAllGather(ctx: OpCtx, out: CollectiveBuffer, segs: Span[]): Promise<void> {
    const n = this.size, r = this.rank;
    const right = mod(r + 1, n), left = mod(r - 1, n);
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / out.BYTES_PER_ELEMENT));
    const segChunks = segs.map((s) => chunks(s, ce));
    const ag: Promise<Frame>[] = [];
    for (let s = 0; s < n - 1; s++) {
      segChunks[ringAllGatherStep(r, n, s).recv]!.forEach((c, ci) =>
        ag.push(this.#post(ctx, left, stepTag(n - 1 + s, ci), bytesOf(out, c)))
      );
    }
    segChunks[r]!.forEach((c, ci) => this.#send(ctx, right, stepTag(n - 1, ci), bytesOf(out, c)));
    await this.#ringGatherRest(ctx, out, segChunks, ag, right, left);
  }

  /** Send `buf[span]` to `peer` in chunks (at least one frame, even when empty). */
  #sendSpan(ctx: OpCtx, peer: number, buf: CollectiveBuffer, span: Span, seq?: number): void {
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
    atLeastOne(span, ce).forEach((c, ci) => this.#send(ctx, peer, ci, bytesOf(buf, c), seq));
  }

  /** Post receives of `buf[span]` from `peer`, chunk by chunk, straight into `buf`. */
  #postSpan(ctx: OpCtx, peer: number, buf: CollectiveBuffer, span: Span): Promise<Frame>[] {
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
    return atLeastOne(span, ce).map((c, ci) => this.#post(ctx, peer, ci, bytesOf(buf, c)));
  }

  async #awaitAll(ctx: OpCtx, peer: number, ps: Promise<Frame>[]): Promise<void> {
    for (const p of ps) await this.#take(ctx, peer, p);
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
    const lanes = small ? this.#lanes() : null;
    const done = this.#run("allReduce", expect, opts, true, (ctx) => {
      if (lanes !== null) return this.#laneAllReduce(ctx, lanes, buf, op, dtype);
      if (algo === "recursive-doubling") return this.#recursiveDoubling(ctx, buf, op, dtype);
      if (algo === "direct") return this.#directAllReduce(ctx, buf, op, dtype);
      if (algo === "ring") {
        return this.#ring(ctx, buf, splitEven(buf.length, this.size), op, dtype, true);
      }
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
    const segs = Array.from({ length: this.size }, (_, i) => ({ offset: i * m, length: m }));
    await this.#run("reduceScatter", expect, opts, true, async (ctx) => {
      const n = this.size, r = this.rank;
      if (n === 1) {
        output.set(input as Float32Array);
        return;
      }
      if (input.byteLength <= this.t.smallBytes) {
        for (let j = 0; j < n; j++) if (j !== r) this.#sendSpan(ctx, j, input, segs[j]!);
        const posted = new Map<number, Promise<Frame>>();
        for (let j = 0; j < n; j++) if (j !== r) posted.set(j, this.#post(ctx, j, 0));
        const acc = (r === 0 ? sub(input, segs[0]!) : viewLike(
          input,
          (await this.#take(ctx, 0, posted.get(0)!)).payload,
        )).slice();
        for (let j = 1; j < n; j++) {
          const part = j === r
            ? sub(input, segs[r]!)
            : viewLike(input, (await this.#take(ctx, j, posted.get(j)!)).payload);
          reduceInto(acc, part, op, dtype);
        }
        output.set(acc as Float32Array);
        return;
      }
      const work = input.slice();
      await this.#ring(ctx, work, segs, op, dtype, false);
      output.set(sub(work, segs[r]!) as Float32Array);
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
    await this.#run("allGather", expect, opts, true, (ctx) => this.#allGather(ctx, input, output));
  }

  async #allGather(ctx: OpCtx, input: CollectiveBuffer, output: CollectiveBuffer): Promise<void> {
    const n = this.size, r = this.rank, m = input.length;
    const segs = Array.from({ length: n }, (_, i) => ({ offset: i * m, length: m }));
    output.set(input as Float32Array, r * m);
    if (n === 1) return;
    if (output.byteLength <= this.t.smallBytes * 4) {
      for (let j = 0; j < n; j++) if (j !== r) this.#sendSpan(ctx, j, output, segs[r]!);
      const posted: [number, Promise<Frame>[]][] = [];
      for (let j = 0; j < n; j++) {
        if (j !== r) posted.push([j, this.#postSpan(ctx, j, output, segs[j]!)]);
      }
      for (const [j, ps] of posted) await this.#awaitAll(ctx, j, ps);
      return;
    }
    await this.#ringAllGather(ctx, output, segs);
  }

  /** See {@linkcode Communicator.broadcast}. */
  async broadcast(buf: CollectiveBuffer, root: number, opts?: CollectiveOptions): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    this.#checkRank(root, "broadcast", "root");
    const expect = { op: FrameOp.broadcast, kind: packKind(dtype), total: buf.length, arg: root };
    await this.#run("broadcast", expect, opts, true, async (ctx) => {
      const n = this.size, r = this.rank, all = { offset: 0, length: buf.length };
      if (n === 1) return;
      if (buf.byteLength <= this.t.smallBytes) {
        if (r === root) {
          for (let j = 0; j < n; j++) if (j !== r) this.#sendSpan(ctx, j, buf, all);
        } else await this.#awaitAll(ctx, root, this.#postSpan(ctx, root, buf, all));
        return;
      }
      // Pipelined chain root -> root+1 -> ...: each chunk is forwarded as soon as it lands.
      const pos = mod(r - root, n), next = mod(r + 1, n), prev = mod(r - 1, n);
      if (pos === 0) {
        this.#sendSpan(ctx, next, buf, all);
        return;
      }
      const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
      const cs = atLeastOne(all, ce);
      const ps = this.#postSpan(ctx, prev, buf, all);
      for (let ci = 0; ci < cs.length; ci++) {
        await this.#take(ctx, prev, ps[ci]!);
        if (pos < n - 1) this.#send(ctx, next, ci, bytesOf(buf, cs[ci]!));
      }
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
    await this.#run("reduce", expect, opts, true, async (ctx) => {
      const n = this.size, r = this.rank, all = { offset: 0, length: buf.length };
      if (n === 1) return;
      if (buf.byteLength <= this.t.smallBytes) {
        if (r !== root) {
          this.#sendSpan(ctx, root, buf, all);
          return;
        }
        const posted = new Map<number, Promise<Frame>>();
        for (let j = 0; j < n; j++) if (j !== r) posted.set(j, this.#post(ctx, j, 0));
        const parts: CollectiveBuffer[] = [];
        for (let j = 0; j < n; j++) {
          parts.push(
            j === r ? buf : viewLike(buf, (await this.#take(ctx, j, posted.get(j)!)).payload),
          );
        }
        const acc = parts[0]!.slice();
        for (let j = 1; j < n; j++) reduceInto(acc, parts[j]!, op, dtype);
        buf.set(acc as Float32Array);
        return;
      }
      // Ring reduce-scatter on a copy, then every rank sends its reduced segment to the root.
      const segs = splitEven(buf.length, n);
      const work = buf.slice();
      await this.#ring(ctx, work, segs, op, dtype, false);
      const gatherSeq = ctx.seq;
      if (r !== root) {
        this.#sendSpanTagged(ctx, root, work, segs[r]!, 1 << 30, gatherSeq);
        return;
      }
      const posted: [number, Promise<Frame>[]][] = [];
      for (let j = 0; j < n; j++) {
        if (j !== r) posted.push([j, this.#postSpanTagged(ctx, j, buf, segs[j]!, 1 << 30)]);
      }
      buf.set(sub(work, segs[r]!) as Float32Array, segs[r]!.offset);
      for (const [j, ps] of posted) await this.#awaitAll(ctx, j, ps);
    });
    if (op === "avg" && this.rank === root) finishAvg(buf, this.size, dtype);
  }

  #sendSpanTagged(
    ctx: OpCtx,
    peer: number,
    buf: CollectiveBuffer,
    span: Span,
    base: number,
    seq: number,
  ): void {
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
    atLeastOne(span, ce).forEach((c, ci) => this.#send(ctx, peer, base + ci, bytesOf(buf, c), seq));
  }

  #postSpanTagged(
    ctx: OpCtx,
    peer: number,
    buf: CollectiveBuffer,
    span: Span,
    base: number,
  ): Promise<Frame>[] {
    const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
    return atLeastOne(span, ce).map((c, ci) => this.#post(ctx, peer, base + ci, bytesOf(buf, c)));
  }

  /** See {@linkcode Communicator.allToAll}. */
  async allToAll(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(input, opts?.dtype);
    sameType(input, output, "allToAll");
    const n = this.size, r = this.rank;
    if (input.length !== output.length || input.length % n !== 0) {
      throw new RangeError(
        `allToAll: input (${input.length}) and output (${output.length}) must have the same ` +
          `length, divisible by the group size ${n}: pad both to a multiple of ${n}`,
      );
    }
    if (input.buffer === output.buffer) {
      throw new RangeError("allToAll: input and output must not share memory: use two buffers");
    }
    const m = input.length / n;
    const expect = { op: FrameOp.allToAll, kind: packKind(dtype), total: input.length, arg: 0 };
    await this.#run("allToAll", expect, opts, true, async (ctx) => {
      const seg = (i: number) => ({ offset: i * m, length: m });
      const posted: [number, Promise<Frame>[]][] = [];
      for (let j = 0; j < n; j++) {
        if (j !== r) posted.push([j, this.#postSpan(ctx, j, output, seg(j))]);
      }
      for (let k = 1; k < n; k++) {
        const j = mod(r + k, n);
        const s = seg(j);
        const ce = Math.max(1, Math.floor(this.t.chunkBytes / input.BYTES_PER_ELEMENT));
        atLeastOne(s, ce).forEach((c, ci) => this.#send(ctx, j, ci, bytesOf(input, c)));
      }
      output.set(sub(input, seg(r)) as Float32Array, r * m);
      for (const [j, ps] of posted) await this.#awaitAll(ctx, j, ps);
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
    await this.#run("send", expect, opts, false, (ctx) => {
      const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
      for (const c of atLeastOne({ offset: 0, length: buf.length }, ce)) {
        this.#send(ctx, peer, tag, bytesOf(buf, c));
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
    await this.#run("recv", expect, opts, false, async (ctx) => {
      const ce = Math.max(1, Math.floor(this.t.chunkBytes / buf.BYTES_PER_ELEMENT));
      const ps = atLeastOne({ offset: 0, length: buf.length }, ce).map((c) =>
        this.#post(ctx, peer, tag, bytesOf(buf, c))
      );
      await this.#awaitAll(ctx, peer, ps);
    });
  }

  /** See {@linkcode Communicator.barrier}. Dissemination: ceil(log2 n) rounds of empty frames. */
  async barrier(opts?: CollectiveOptions): Promise<void> {
    const expect = { op: FrameOp.barrier, kind: 0, total: 0, arg: 0 };
    const lanes = this.size > 1 ? this.#lanes() : null;
    if (lanes !== null) {
      // Everyone tells everyone over the lanes (one round, no payload).
      const none = new Float32Array(0);
      await this.#run("barrier", expect, opts, true, (ctx) => {
        return this.#laneExchange(ctx, lanes, none, () => {});
      }, true);
      return;
    }
    await this.#run("barrier", expect, opts, true, async (ctx) => {
      const n = this.size, r = this.rank, empty = new Uint8Array(0);
      for (let k = 1, round = 0; k < n; k <<= 1, round++) {
        this.#send(ctx, mod(r + k, n), round, empty);
        await this.#recv(ctx, mod(r - k, n), round);
      }
    });
  }

  /** See {@linkcode Communicator.split}. */
  async split(color: number, key = 0): Promise<Communicator | null> {
    if (!Number.isInteger(color) || !Number.isInteger(key) || Math.abs(color) > 2 ** 31 - 1) {
      throw new RangeError(`split: color and key must be 32-bit integers, got ${color}, ${key}`);
    }
    const mine = new Int32Array([color, key]);
    const all = new Int32Array(2 * this.size);
    const expect = { op: FrameOp.split, kind: packKind("int32"), total: 2, arg: 0 };
    await this.#run("split", expect, undefined, true, (ctx) => this.#allGather(ctx, mine, all));
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
    if (this.#closed) return;
    this.#closed = true;
    for (const ctx of [...this.t.active]) {
      if (ctx.comm === this) {
        ctx.fail(new CollectiveError("closed", ctx.name, this.name, undefined, "group closed"));
      }
    }
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

function describeCall(h: { op: number; total: number; kind: number; arg: number }): string {
  return `${frameOpName(h.op)} of ${h.total} ${describeKind(h.kind)}` +
    (h.op === FrameOp.broadcast || h.op === FrameOp.reduce ? ` root ${h.arg}` : "");
}
