/**
 * The machinery under the TCP communicator ({@link ./tcp.ts}): the mesh's reader loops, per-peer
 * message queues keyed by group and call, ordered socket writes, deadlines, and what happens when
 * a peer goes away. Groups (the world and its splits) share one transport.
 *
 * @module
 */
import { CollectiveError, type CollectiveFailure } from "./communicator.ts";
import {
  encodeHeader,
  type Frame,
  FrameError,
  type FrameHeader,
  FrameOp,
  HEADER_BYTES,
  writeAll,
} from "./frame.ts";
import type { Link, Mesh } from "./rendezvous.ts";
import { type Lane, LaneError } from "./_tcp_lane.ts";
import { NET_FAULT_ENV, type PeerFault } from "./_net_fault.ts";

/** What the transport needs of a group. */
export interface TcpGroup {
  /** The group's name, for errors. */
  readonly name: string;
  /** Group rank of a world rank, or undefined when it is not a member. */
  groupRank(world: number): number | undefined;
  /** Check a collective frame from world rank `peer` against what this rank is doing. */
  checkIncoming(peer: number, h: FrameHeader): void;
  /** Fail the group for good. */
  breakWith(e: CollectiveError): void;
  /** The error for an op that lost group rank `g`. */
  lostError(op: string, g: number): CollectiveError;
  /** Fail an op whose deadline passed. */
  timedOut(ctx: OpCtx): void;
}

/** Payloads up to this size are copied into the frame when sent, so the caller may reuse them. */
export const EAGER_COPY_BYTES = 64 * 1024;

export function isData(op: number): boolean {
  return op >= FrameOp.allReduce && op <= FrameOp.split;
}

export function keyOf(group: number, op: number, seq: number, tag: number): string {
  return op === FrameOp.send ? `${group}:t${tag}` : `${group}:${seq}`;
}

/**
 * How long a connection whose write failed, or whose lane broke, may still deliver what it
 * holds (a peer's bye, or its word that another rank died first) before the peer is named lost.
 */
export const SUSPECT_MS = 250;

/** A frame held by a delay fault until `at` (a `performance.now()` time). */
interface Held {
  at: number;
  head: FrameHeader;
  payload: Uint8Array;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** Key of the entry every channel map keeps (never a real key). */
export const IDLE_KEY = "";

/** Remove `x` from `a` without keeping order (no allocation). */
export function removeFrom<T>(a: T[], x: T): void {
  const i = a.indexOf(x);
  if (i < 0) return;
  a[i] = a[a.length - 1]!;
  a.pop();
}

/** What a receiver expects of every frame of an op. */
export interface Expect {
  op: number;
  kind: number;
  total: number;
  arg: number;
}

export interface Waiter {
  ctx: OpCtx;
  peer: number;
  tag: number;
  dest: Uint8Array | undefined;
  channel: Channel;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
}

export interface Channel {
  frames: Frame[];
  waiters: Waiter[];
}

/** One op in flight: its deadline, its pending receives and sends. */
export class OpCtx {
  failed: CollectiveError | undefined;
  /** Pending receives (an array: a Set that empties reallocates its table every op). */
  waiters: Waiter[] = [];
  sends: Promise<void>[] = [];
  deadline = Infinity;
  /** The op's timeout, for its message. */
  timeoutMs = 0;
  waitingOn: number | undefined;
  #failure: Promise<never> | undefined;
  #reject: ((e: Error) => void) | undefined;

  constructor(
    readonly comm: TcpGroup,
    readonly name: string,
    readonly seq: number,
    readonly expect: Expect,
  ) {}

  /** Rejects when the op fails (made on first use: small ops never need it). */
  get failure(): Promise<never> {
    if (this.#failure === undefined) {
      this.#failure = this.failed
        ? Promise.reject(this.failed)
        : new Promise<never>((_, reject) => (this.#reject = reject));
      this.#failure.catch(() => {});
    }
    return this.#failure;
  }

  fail(e: CollectiveError): void {
    if (this.failed) return;
    this.failed = e;
    for (const w of this.waiters) {
      const i = w.channel.waiters.indexOf(w);
      if (i >= 0) w.channel.waiters.splice(i, 1);
      w.reject(e);
    }
    this.waiters.length = 0;
    this.#reject?.(e);
  }
}

/** The mesh, the reader loops and the per-peer message queues shared by every group. */
export class TcpTransport {
  readonly rank: number;
  readonly size: number;
  readonly links: (Link | null)[];
  readonly channels: Map<string, Channel>[];
  readonly chains: Promise<void>[];
  readonly lost = new Map<number, string>();
  readonly byes = new Set<number>();
  readonly closedCleanly = new Set<number>();
  /** Ops in flight (an array: a Set that empties reallocates its table every op). */
  readonly active: OpCtx[] = [];
  readonly groups = new Map<number, TcpGroup>();
  readonly pool: Uint8Array[] = [];
  readonly #framePool = new Map<number, Uint8Array[]>();
  readonly #rxPool = new Map<number, ArrayBuffer[]>();
  readonly #queued: number[];
  readonly #sentOk: (() => void)[];
  readonly #sentFailed: ((e: Error) => void)[];
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  #watchAt = Infinity;
  readonly readers: Promise<void>[] = [];
  /** When each peer's reader loop has ended. */
  readonly #readerEnd: Promise<void>[] = [];
  /** The send of the class, under the fault's when `LOOM_NET_FAULT` concerns this rank. */
  readonly #send: (peer: number, head: FrameHeader, payload: Uint8Array) => Promise<void>;
  /** Frames held by delay faults, per peer, in order. */
  readonly #held: Held[][] = [];
  readonly #holdTimers: (ReturnType<typeof setTimeout> | undefined)[] = [];
  /** Rank 0's listener, refusing late connections until the world closes. */
  readonly #gate: { close(): Promise<void> } | null;
  closing = false;

  constructor(
    mesh: Mesh,
    readonly chunkBytes: number,
    readonly smallBytes: number,
    readonly timeoutMs: number,
    /** The lane to each world rank, if any ({@link ./_tcp_lane.ts}). */
    readonly lanes: (Lane | null)[] = [],
    /** What `LOOM_NET_FAULT` does to this rank's frames ({@link ./_net_fault.ts}). */
    faults: (PeerFault | undefined)[] | null = null,
  ) {
    this.rank = mesh.rank;
    this.size = mesh.size;
    this.links = mesh.links;
    this.#gate = mesh.gate;
    // Each map keeps a never-used entry: a map that empties reallocates its table every op.
    this.channels = mesh.links.map(() => new Map([[IDLE_KEY, { frames: [], waiters: [] }]]));
    this.chains = mesh.links.map(() => Promise.resolve());
    this.#queued = mesh.links.map(() => 0);
    this.#sentOk = mesh.links.map((_, peer) => () => {
      this.#queued[peer]!--;
    });
    this.#sentFailed = mesh.links.map((_, peer) => (e: Error) => {
      this.#queued[peer]!--;
      if (!this.closing) this.suspect(peer, `writing to it failed: ${e.message}`);
    });
    mesh.links.forEach((l, peer) => {
      this.#readerEnd[peer] = l ? this.#readLoop(peer, l) : Promise.resolve();
      if (l) this.readers.push(this.#readerEnd[peer]!);
    });
    this.#send = this.send.bind(this);
    if (faults !== null) {
      // Only a rank that sends faulty frames routes them through the fault: everywhere else
      // send is the class's own and pays nothing.
      this.send = (peer, head, payload) => {
        const f = faults[peer];
        return f === undefined
          ? this.#send(peer, head, payload)
          : this.#sendFaulty(peer, f, head, payload);
      };
    }
    faults?.forEach((f, peer) => {
      const lane = this.lanes[peer];
      if (f?.dropAfter === undefined || !lane) return;
      // Lane frames count towards a drop too; the lane's send stays the class's when no fault.
      const send = lane.send.bind(lane);
      lane.send = (head, payload, deadline) => {
        if (f.sent++ >= f.dropAfter!) {
          this.#drop(peer, f);
          throw new LaneError(peer, `${NET_FAULT_ENV} dropped it`);
        }
        return send(head, payload, deadline);
      };
    });
  }

  channel(peer: number, key: string): Channel {
    const m = this.channels[peer]!;
    let c = m.get(key);
    if (c === undefined) {
      c = { frames: [], waiters: [] };
      m.set(key, c);
    }
    return c;
  }

  /** Give a received payload's memory back for reuse (the caller is done with it). */
  release(buf: Uint8Array): void {
    const ab = buf.buffer;
    if (buf.byteOffset !== 0 || !(ab instanceof ArrayBuffer)) return;
    if (ab.byteLength === this.chunkBytes && buf.length === ab.byteLength) {
      if (this.pool.length < 8) this.pool.push(buf);
      return;
    }
    const list = this.#rxPool.get(ab.byteLength);
    if (list !== undefined && list.length < 8) list.push(ab);
  }

  /** A buffer for a small payload, from the pool (new allocations raise GC pressure). */
  #smallPayload(n: number): Uint8Array {
    const size = Math.max(4096, 2 ** Math.ceil(Math.log2(n)));
    let list = this.#rxPool.get(size);
    if (list === undefined) this.#rxPool.set(size, list = []);
    return new Uint8Array(list.pop() ?? new ArrayBuffer(size), 0, n);
  }

  async #readLoop(peer: number, link: Link): Promise<void> {
    const pick = (h: FrameHeader) => this.#pick(peer, h);
    try {
      while (true) {
        const f = await link.reader.next(pick);
        if (f === null) {
          const clean = this.byes.has(peer);
          this.gone(peer, clean ? "it closed its communicator" : "its connection closed", clean);
          return;
        }
        this.#dispatch(peer, f);
      }
    } catch (e) {
      if (this.closing) return;
      const msg = (e as Error).message ?? String(e);
      const bad = e instanceof FrameError && !e.truncated;
      if (bad) {
        console.error(`loom tcp: rank ${this.rank} dropped its connection to rank ${peer}: ${msg}`);
      }
      try {
        link.conn.close();
      } catch { /* already closed */ }
      // A peer that said bye and closed with this rank's data unread resets the connection:
      // that is still a clean close.
      const clean = !bad && this.byes.has(peer);
      this.gone(
        peer,
        clean
          ? "it closed its communicator"
          : bad
          ? `it sent a bad frame (${msg})`
          : `its connection failed (${msg})`,
        clean,
      );
    }
  }

  #pick(peer: number, h: FrameHeader): Uint8Array | undefined {
    if (h.src !== peer) {
      throw new FrameError(`frame claims to come from rank ${h.src} on rank ${peer}'s connection`);
    }
    if (!isData(h.op)) return undefined;
    const ch = this.channels[peer]!.get(keyOf(h.group, h.op, h.seq, h.tag));
    const w = ch !== undefined && ch.frames.length === 0 ? ch.waiters[0] : undefined;
    if (w?.dest !== undefined) {
      const e = w.ctx.expect;
      if (
        w.dest.length === h.length && w.tag === h.tag && e.op === h.op && e.kind === h.kind &&
        e.total === h.total && e.arg === h.arg
      ) return w.dest;
      return undefined;
    }
    if (h.length === this.chunkBytes) return this.pool.pop();
    if (h.length > 0 && h.length <= EAGER_COPY_BYTES) return this.#smallPayload(h.length);
    return undefined;
  }

  #dispatch(peer: number, f: Frame): void {
    const h = f.header;
    if (h.op === FrameOp.bye) {
      this.byes.add(peer);
      return;
    }
    if (h.op === FrameOp.abort) {
      this.#onAbort(peer, f);
      return;
    }
    if (!isData(h.op)) return;
    const comm = this.groups.get(h.group);
    if (comm !== undefined && h.op !== FrameOp.send) comm.checkIncoming(peer, h);
    const key = keyOf(h.group, h.op, h.seq, h.tag);
    const ch = this.channel(peer, key);
    const w = ch.waiters.shift();
    if (w !== undefined) {
      removeFrom(w.ctx.waiters, w);
      this.tidy(peer, key, ch);
      w.resolve(f);
    } else ch.frames.push(f);
  }

  /** Forget a channel once nothing is queued or awaited on it (keys are per call). */
  tidy(peer: number, key: string, ch: Channel): void {
    if (ch.frames.length === 0 && ch.waiters.length === 0) this.channels[peer]!.delete(key);
  }

  #onAbort(peer: number, f: Frame): void {
    const comm = this.groups.get(f.header.group);
    if (comm === undefined) return;
    let body: { reason?: CollectiveFailure; op?: string; peer?: number; detail?: string } = {};
    try {
      body = JSON.parse(new TextDecoder().decode(f.payload));
    } catch { /* keep the defaults */ }
    const lost = body.peer === undefined ? comm.groupRank(peer) : comm.groupRank(body.peer);
    if (body.reason === "peer-lost" && lost !== undefined) {
      // Word from a peer that a member died: this rank names the rank that died, not the
      // messenger, on the op it is running itself.
      const op = this.active.find((c) => c.comm === comm)?.name ?? body.op ?? "unknown";
      comm.breakWith(
        new CollectiveError(
          "peer-lost",
          op,
          comm.name,
          lost,
          `lost rank ${lost}${f.header.group === 0 ? "" : ` (world rank ${body.peer})`}: rank ` +
            `${comm.groupRank(peer)} reported it lost: ${body.detail ?? "no reason given"}`,
        ),
      );
      return;
    }
    comm.breakWith(
      new CollectiveError(
        body.reason ?? "protocol",
        body.op ?? "unknown",
        comm.name,
        lost,
        `rank ${comm.groupRank(peer)} reported: ${body.detail ?? "an error"}`,
      ),
    );
  }

  /**
   * A peer is gone. After a crash, every op of every group that contains it fails. After a
   * clean close (it said bye), only ops that still wait for its data fail.
   */
  gone(peer: number, why: string, clean = false): void {
    if (this.lost.has(peer) || this.closing) return;
    this.lost.set(peer, why);
    if (clean) this.closedCleanly.add(peer);
    if (!clean) this.#tellLost(peer, why);
    for (const ctx of [...this.active]) {
      const g = ctx.comm.groupRank(peer);
      if (g === undefined) continue;
      if (clean && !ctx.waiters.some((w) => w.peer === peer)) continue;
      ctx.fail(ctx.comm.lostError(ctx.name, g));
    }
  }

  /**
   * Tell the other members of every group that holds `peer` that it died (an abort frame that
   * names it), before this rank fails and leaves: a rank that would only see this one go names
   * the rank that died instead of this one.
   */
  #tellLost(peer: number, why: string): void {
    for (const [id, comm] of this.groups) {
      if (comm.groupRank(peer) === undefined) continue;
      const op = this.active.find((c) => c.comm === comm)?.name;
      const body = new TextEncoder().encode(
        JSON.stringify({ reason: "peer-lost", op, peer, detail: why }),
      );
      for (let w = 0; w < this.size; w++) {
        if (w === this.rank || w === peer || this.lost.has(w) || !this.links[w]) continue;
        if (comm.groupRank(w) === undefined) continue;
        this.send(w, {
          op: FrameOp.abort,
          kind: 0,
          src: this.rank,
          group: id,
          tag: 0,
          seq: 0,
          total: 0,
          arg: 0,
          length: body.length,
        }, body).catch(() => {});
      }
    }
  }

  /**
   * Writing to `peer` failed, or its lane broke: the connection is going, but what its reader
   * still holds comes first (a bye makes it a clean close; a peer's word that another rank died
   * names that rank). So `peer` is named lost once its reader loop ends, or after
   * {@linkcode SUSPECT_MS}, whichever is first.
   *
   * @returns when the peer has been named lost (or had been)
   */
  suspect(peer: number, why: string): Promise<void> {
    if (this.lost.has(peer) || this.closing) return Promise.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<void>((r) => (timer = setTimeout(r, SUSPECT_MS)));
    return Promise.race([this.#readerEnd[peer] ?? Promise.resolve(), grace]).then(() => {
      clearTimeout(timer);
      this.gone(peer, why, this.byes.has(peer));
    });
  }

  /** {@linkcode TcpTransport.send} to a peer with a fault: count, maybe drop, maybe hold. */
  #sendFaulty(peer: number, f: PeerFault, head: FrameHeader, payload: Uint8Array): Promise<void> {
    if (f.dropAfter !== undefined && isData(head.op) && !this.lost.has(peer)) {
      if (f.sent++ >= f.dropAfter) this.#drop(peer, f);
    }
    if (f.delayMs <= 0) return this.#send(peer, head, payload);
    // Held: small payloads are copied now (the caller may reuse them); a large one stays the
    // caller's until its write has finished, as without the fault. A failed write is the
    // transport's to handle (as without the fault): callers need not catch it.
    const held = new Promise<void>((resolve, reject) => {
      const q = this.#held[peer] ??= [];
      q.push({
        at: performance.now() + f.delayMs,
        head,
        payload: payload.length <= EAGER_COPY_BYTES ? payload.slice() : payload,
        resolve,
        reject,
      });
      if (q.length === 1) this.#release(peer);
    });
    held.catch(() => {});
    return held;
  }

  /** Send the held frames to `peer` that are due, in order, and wait for the next. */
  #release(peer: number): void {
    this.#holdTimers[peer] = undefined;
    const q = this.#held[peer]!;
    while (q.length > 0 && q[0]!.at <= performance.now()) {
      const h = q.shift()!;
      this.#send(peer, h.head, h.payload).then(h.resolve, h.reject);
    }
    if (q.length > 0) {
      this.#holdTimers[peer] = setTimeout(
        () => this.#release(peer),
        Math.max(0, q[0]!.at - performance.now()),
      );
    }
  }

  /** A drop fault fires: close the connection and the lane to `peer`, and name it lost. */
  #drop(peer: number, f: PeerFault): void {
    this.gone(
      peer,
      `${NET_FAULT_ENV} dropped the connection to it after ${f.dropAfter} data frames`,
    );
    try {
      this.links[peer]?.conn.close();
    } catch { /* already closed */ }
    this.lanes[peer]?.close();
  }

  /** Queue a frame on a peer's connection; small payloads are copied now. */
  send(peer: number, head: FrameHeader, payload: Uint8Array): Promise<void> {
    const link = this.links[peer];
    if (!link || this.lost.has(peer)) {
      const p = Promise.reject(new Error(`rank ${peer} is lost: ${this.lost.get(peer)}`));
      p.catch(() => {});
      return p;
    }
    // Frame buffers are reused: handing a fresh buffer to every socket write costs measurably.
    const small = payload.length <= EAGER_COPY_BYTES;
    const buf = this.#frameBuffer(HEADER_BYTES + (small ? payload.length : 0));
    const out = buf.subarray(0, HEADER_BYTES + (small ? payload.length : 0));
    encodeHeader(out, head);
    if (small) out.set(payload, HEADER_BYTES);
    // An idle connection writes at once (no extra turn through the promise chain); a small
    // frame usually leaves in one write, so it skips the write loop.
    const idle = this.#queued[peer] === 0;
    let p: Promise<void>;
    if (idle && small) {
      p = link.conn.write(out).then((n) =>
        n === out.length
          ? this.#returnFrameBuffer(buf)
          : writeAll(link.conn, out.subarray(n)).then(() => this.#returnFrameBuffer(buf))
      );
    } else {
      const write = async () => {
        await writeAll(link.conn, out);
        if (!small) await writeAll(link.conn, payload);
        this.#returnFrameBuffer(buf);
      };
      p = idle ? write() : this.chains[peer]!.then(write);
    }
    this.#queued[peer]!++;
    this.chains[peer] = p.then(this.#sentOk[peer], this.#sentFailed[peer]);
    return p;
  }

  /**
   * Deadlines: one timer for the whole transport, set for the earliest deadline of the ops in
   * flight (a timer per op would cost more than a small op itself).
   */
  watch(ctx: OpCtx): void {
    if (this.#watchAt <= ctx.deadline) return;
    clearTimeout(this.#watchdog);
    this.#watchAt = ctx.deadline;
    this.#watchdog = setTimeout(
      () => this.#expire(),
      Math.max(0, ctx.deadline - performance.now()),
    );
  }

  #expire(): void {
    this.#watchdog = undefined;
    this.#watchAt = Infinity;
    const now = performance.now();
    for (const ctx of [...this.active]) if (ctx.deadline <= now + 1) ctx.comm.timedOut(ctx);
    for (const ctx of this.active) if (!ctx.failed) this.watch(ctx);
  }

  #frameBuffer(n: number): Uint8Array {
    const size = Math.max(4096, 2 ** Math.ceil(Math.log2(n)));
    return this.#framePool.get(size)?.pop() ?? new Uint8Array(size);
  }

  #returnFrameBuffer(b: Uint8Array): void {
    let list = this.#framePool.get(b.length);
    if (list === undefined) this.#framePool.set(b.length, list = []);
    if (list.length < 8) list.push(b);
  }

  async close(): Promise<void> {
    if (this.closing) return;
    for (const ctx of [...this.active]) {
      ctx.fail(
        new CollectiveError("closed", ctx.name, ctx.comm.name, undefined, "the world was closed"),
      );
    }
    const bye: FrameHeader = {
      op: FrameOp.bye,
      kind: 0,
      src: this.rank,
      group: 0,
      tag: 0,
      seq: 0,
      total: 0,
      arg: 0,
      length: 0,
    };
    const byes = this.links.map((l, peer) => l ? this.send(peer, bye, new Uint8Array(0)) : null);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled(byes),
      new Promise((r) => (timer = setTimeout(r, 1000))),
    ]);
    clearTimeout(timer);
    clearTimeout(this.#watchdog);
    this.#watchAt = -Infinity; // no more timers
    this.closing = true;
    for (const [peer, q] of this.#held.entries()) {
      clearTimeout(this.#holdTimers[peer]);
      for (const h of q ?? []) h.reject(new Error("the world was closed"));
      if (q) q.length = 0;
    }
    const gate = this.#gate?.close();
    for (const l of this.lanes) l?.close();
    for (const l of this.links) {
      try {
        l?.conn.close();
      } catch { /* already closed */ }
    }
    await Promise.allSettled(this.readers);
    await Promise.allSettled(this.chains);
    await gate;
  }
}
