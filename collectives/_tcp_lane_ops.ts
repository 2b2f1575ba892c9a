/**
 * Small all-reduces and barriers over lanes ({@link ./_tcp_lane.ts}: an extra connection per
 * pair, driven through libc by FFI), when every pair of the group has one: one direct exchange,
 * everyone sends to everyone and folds in rank order ({@link ./_direct.ts}'s fold), waited for
 * by spinning, then in poll() with the event loop held, then with it free. A lane that breaks
 * means its peer is gone.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { encodeHeader, HEADER_BYTES } from "./frame.ts";
import { type Lane, LaneError, laneKey, waitLanes } from "./_tcp_lane.ts";
import type { OpCtx, TcpTransport } from "./_tcp_transport.ts";
import type { TcpGroupFaults } from "./_tcp_faults.ts";
import { bytesOf, viewLike } from "./_exchange.ts";
import { foldInRankOrder } from "./_direct.ts";

/** A small op on lanes spins this long for its peers before it waits in poll(). */
const LANE_SPIN_MS = 0.05;
/** ... and holds the event loop in poll() this long before it waits with the loop free. */
const LANE_HOLD_MS = 2;

/** A TCP group's ops over lanes. */
export class LaneOps {
  constructor(readonly t: TcpTransport, readonly g: TcpGroupFaults) {}

  #list: (Lane | null)[] | null | undefined;

  /** The lanes to every other member, or null unless every pair has a working one. */
  lanes(): (Lane | null)[] | null {
    if (this.#list === undefined) {
      const out: (Lane | null)[] = [];
      for (let i = 0; i < this.g.size; i++) {
        const l = i === this.g.rank ? null : this.t.lanes[this.g.members[i]!] ?? null;
        if (i !== this.g.rank && l === null) return this.#list = null;
        out.push(l);
      }
      this.#list = out;
    }
    const list = this.#list;
    if (list !== null) {
      for (const l of list) {
        if (l !== null && l.broken !== undefined) return null;
      }
    }
    return list;
  }

  #head = new Uint8Array(HEADER_BYTES);

  /**
   * Small all-reduce over the lanes: send the buffer to every member, wait for theirs (spinning
   * for 50 us, then in poll() for up to 2 ms with the event loop held, then polling every
   * millisecond with it free), fold in rank order: the direct exchange's fold. The fast path
   * runs in plain (not async) functions: spin loops inside an async function showed 150 us
   * stalls in one call out of ten.
   */
  allReduce(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    buf: CollectiveBuffer,
    op: ReduceOp,
    dtype: DType,
  ): Promise<void> {
    return this.exchange(ctx, lanes, buf, (parts) => {
      foldInRankOrder(parts, buf, op, dtype);
    });
  }

  /**
   * Send `buf` to every member over the lanes and gather theirs; `done` gets every rank's part
   * (this rank's is `buf`) once all are in.
   */
  exchange(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    buf: CollectiveBuffer,
    done: (parts: CollectiveBuffer[]) => void,
  ): Promise<void> {
    const parts: (CollectiveBuffer | undefined)[] = new Array(this.g.size);
    parts[this.g.rank] = buf;
    const key = laneKey(this.g.id, ctx.seq, 0);
    try {
      this.#send(ctx, lanes, bytesOf(buf));
      if (this.#collect(ctx, lanes, key, buf, parts, LANE_HOLD_MS)) {
        done(parts as CollectiveBuffer[]);
        this.#release(lanes, parts);
        return Promise.resolve();
      }
    } catch (err) {
      return this.#failure(ctx, err);
    }
    return this.#finish(ctx, lanes, key, buf, parts, done);
  }

  async #finish(
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
        this.g.scanQueued(ctx.seq);
        await new Promise((res) => setTimeout(res, 1));
      } while (!this.#collect(ctx, lanes, key, buf, parts, 0));
    } catch (err) {
      await this.#failure(ctx, err);
    }
    done(parts as CollectiveBuffer[]);
    this.#release(lanes, parts);
  }

  #send(ctx: OpCtx, lanes: (Lane | null)[], payload: Uint8Array): void {
    const e = ctx.expect;
    encodeHeader(this.#head, {
      op: e.op,
      kind: e.kind,
      src: this.t.rank,
      group: this.g.id,
      tag: 0,
      seq: ctx.seq,
      total: e.total,
      arg: e.arg,
      length: payload.length,
    });
    for (let g = 0; g < this.g.size; g++) {
      if (g !== this.g.rank && !lanes[g]!.send(this.#head, payload, ctx.deadline)) {
        ctx.waitingOn = g;
        this.g.timedOut(ctx);
        throw ctx.failed;
      }
    }
  }

  /**
   * Gather the members' frames of `key` into `parts`, waiting up to `holdMs` (after a 50 us
   * spin) with the thread held; true once all are in.
   */
  #collect(
    ctx: OpCtx,
    lanes: (Lane | null)[],
    key: string,
    buf: CollectiveBuffer,
    parts: (CollectiveBuffer | undefined)[],
    holdMs: number,
  ): boolean {
    const n = this.g.size, e = ctx.expect;
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
        ) this.g.mismatch(ctx, g, h);
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
        this.g.timedOut(ctx);
        throw ctx.failed;
      }
      if (now - t0 >= holdMs) return false;
      waitLanes(lanes.filter((l, i) => l !== null && parts[i] === undefined) as Lane[], 1);
    }
  }

  #release(lanes: (Lane | null)[], parts: (CollectiveBuffer | undefined)[]): void {
    for (let g = 0; g < this.g.size; g++) {
      if (g !== this.g.rank) lanes[g]!.release(parts[g]!);
    }
  }

  /**
   * Reject a lane op; a broken lane means its peer is going, once its mesh connection has
   * delivered what it holds (see `TcpTransport.suspect`).
   */
  async #failure(ctx: OpCtx, err: unknown): Promise<never> {
    if (!(err instanceof LaneError)) throw err;
    const w = err.peer; // a world rank
    await this.t.suspect(w, `its lane ${err.message}`);
    throw ctx.failed ?? this.g.lostError(ctx.name, this.g.groupRank(w)!);
  }
}
