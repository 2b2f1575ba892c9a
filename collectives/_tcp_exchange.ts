/**
 * A TCP group's {@linkcode PeerExchange}: the frames of one op on the shared mesh
 * ({@link ./_tcp_transport.ts}), keyed by group, call and chunk tag, each checked against the op
 * when it arrives. The algorithms ({@link ./_ring.ts}, {@link ./_recursive_doubling.ts},
 * {@link ./_direct.ts}) run over it.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import { type Frame, type FrameHeader, FrameOp } from "./frame.ts";
import type { PeerExchange } from "./_exchange.ts";
import { keyOf, type OpCtx, type TcpTransport, type Waiter } from "./_tcp_transport.ts";

/** What the exchange needs of its group: who is in it, and how an op fails. */
export interface ExchangeGroup {
  /** Group id (frames carry it). */
  readonly id: number;
  /** The group's name, for errors. */
  readonly name: string;
  /** World rank of every group rank. */
  readonly members: number[];
  /** The error for an op that lost group rank `g`. */
  lostError(op: string, g: number): CollectiveError;
  /** Fail the op: `peer` sent a frame that does not match the call. */
  mismatch(ctx: OpCtx, peer: number, h: FrameHeader): never;
}

/** Sends and receives of a TCP group's ops, by group rank. */
export class TcpExchange implements PeerExchange<OpCtx, Promise<Frame>> {
  /** Ranks in the group. */
  readonly size: number;
  /** Bytes per frame of a pipelined algorithm. */
  readonly chunkBytes: number;

  constructor(readonly t: TcpTransport, readonly group: ExchangeGroup, readonly rank: number) {
    this.size = group.members.length;
    this.chunkBytes = t.chunkBytes;
  }

  /** Queue chunk `tag` of the op to group rank `peer`; the op waits for the write. */
  send(ctx: OpCtx, peer: number, tag: number, payload: Uint8Array): void {
    const e = ctx.expect;
    const sent = this.t.send(this.group.members[peer]!, {
      op: e.op,
      kind: e.kind,
      src: this.t.rank,
      group: this.group.id,
      tag,
      seq: ctx.seq,
      total: e.total,
      arg: e.arg,
      length: payload.length,
    }, payload);
    // The op waits for its writes, so a write that fails fails the op itself (not waiting for
    // small, copied payloads measured no faster).
    ctx.sends.push(sent);
  }

  /** Post a receive; the promise resolves with the (checked) frame. */
  post(ctx: OpCtx, peer: number, tag: number, dest?: Uint8Array): Promise<Frame> {
    const g = this.group;
    const w = g.members[peer]!;
    const e = ctx.expect;
    const key = keyOf(g.id, e.op, ctx.seq, tag);
    const ch = this.t.channel(w, key);
    const check = (f: Frame): Frame => {
      const h = f.header;
      if (
        h.op !== e.op || h.kind !== e.kind || h.total !== e.total || h.arg !== e.arg ||
        (dest !== undefined && h.length !== dest.length)
      ) g.mismatch(ctx, peer, h);
      if (h.tag !== tag && e.op !== FrameOp.send) {
        throw new CollectiveError(
          "protocol",
          ctx.name,
          g.name,
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
      const err = g.lostError(ctx.name, peer);
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

  /** Wait for a posted receive, noting whom the op waits on (for a timeout's message). */
  async take(ctx: OpCtx, peer: number, p: Promise<Frame>): Promise<Uint8Array> {
    ctx.waitingOn = peer;
    const f = await p;
    ctx.waitingOn = undefined;
    return f.payload;
  }

  /** Give a received payload's memory back to the transport. */
  release(payload: Uint8Array): void {
    this.t.release(payload);
  }
}
