/**
 * How a TCP group's ops fail: the errors for a lost rank, a passed deadline and a call that does
 * not match the other ranks' (checked on every frame, also on those that arrive before their
 * call); the abort frame that tells the rest of the group; and the failed group, which rejects
 * every later op. The transport ({@link ./_tcp_transport.ts}) reports lost peers, aborts and
 * deadlines here through {@linkcode TcpGroup}.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import { describeKind, type FrameHeader, FrameOp, frameOpName } from "./frame.ts";
import type { OpCtx, TcpGroup, TcpTransport } from "./_tcp_transport.ts";
import type { ExchangeGroup } from "./_tcp_exchange.ts";

/** A group of the mesh: who is in it, and how its ops fail. */
export class TcpGroupFaults implements TcpGroup, ExchangeGroup {
  /** Ranks in the group. */
  readonly size: number;
  /** Why the group failed for good, once it has. */
  broken: CollectiveError | undefined;
  /** Every call up to this one has finished on this rank (kept by the op lifecycle). */
  done = 0;
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
    this.fail(
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
    this.broken ??= e;
    for (const ctx of [...this.t.active]) if (ctx.comm === this) ctx.fail(e);
  }

  /** Check a collective frame from world rank `peer` against what this rank is doing. */
  checkIncoming(peer: number, h: FrameHeader): void {
    const g = this.groupRank(peer);
    if (g === undefined) return;
    if (h.seq <= this.done && h.seq > this.done - 0x40000000) {
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
        this.fail(
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

  /**
   * Fail an op, and the group with it; tell the other members when they may not learn it
   * themselves (a mismatch, a timeout, a protocol error).
   */
  fail(ctx: OpCtx, e: CollectiveError): void {
    if (ctx.failed) return;
    ctx.fail(e);
    this.broken ??= e;
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

  /** Check the frames of call `seq` that arrived before it began. */
  scanQueued(seq: number): void {
    for (let g = 0; g < this.size; g++) {
      const w = this.members[g]!;
      if (g === this.rank || this.t.channels[w]!.size <= 1) continue;
      const ch = this.t.channels[w]!.get(`${this.id}:${seq}`);
      const f = ch?.frames[0];
      if (f !== undefined) this.checkIncoming(w, f.header);
    }
  }

  /** Fail the op: `peer` sent a frame that does not match the call. */
  mismatch(ctx: OpCtx, peer: number, h: FrameHeader): never {
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
    this.fail(ctx, err);
    throw err;
  }
}

function describeCall(h: { op: number; total: number; kind: number; arg: number }): string {
  return `${frameOpName(h.op)} of ${h.total} ${describeKind(h.kind)}` +
    (h.op === FrameOp.broadcast || h.op === FrameOp.reduce ? ` root ${h.arg}` : "");
}
