/**
 * The life of one op of a TCP group: the checks before it starts (a closed group, a failed
 * group, a lost member), its sequence number and deadline, running its body and waiting for its
 * writes, turning any failure into the group's ({@link ./_tcp_faults.ts}), and, for
 * collectives, keeping the count of finished calls that late frames are checked against.
 *
 * @module
 */
import { checkTimeout } from "./_args.ts";
import { CollectiveError, type CollectiveOptions } from "./communicator.ts";
import { type Expect, OpCtx, removeFrom, type TcpTransport } from "./_tcp_transport.ts";
import type { TcpGroupFaults } from "./_tcp_faults.ts";

/** Runs a TCP group's ops. */
export class TcpOps {
  /** Set once the group is closed: later ops reject. */
  closed = false;
  #seq = 0;
  #finished = new Set<number>();

  constructor(readonly t: TcpTransport, readonly g: TcpGroupFaults) {}

  /** Run one op: checks, sequence number, deadline, failure propagation. */
  run(
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
    const g = this.g;
    const timeout = opts?.timeoutMs ?? this.t.timeoutMs;
    checkTimeout(timeout);
    if (this.closed) {
      throw new CollectiveError("closed", name, g.name, undefined, "the group was closed");
    }
    if (g.broken) {
      throw new CollectiveError(
        g.broken.reason,
        name,
        g.name,
        g.broken.peer,
        `the group failed earlier and cannot be used: ${g.broken.message}`,
      );
    }
    if (this.t.lost.size > 0) {
      for (let i = 0; i < g.size; i++) {
        const w = g.members[i]!;
        if (this.t.lost.has(w) && !this.t.closedCleanly.has(w)) throw g.lostError(name, i);
      }
    }
    const seq = collective ? ++this.#seq : 0;
    const ctx = new OpCtx(g, name, seq, expect);
    this.t.active.push(ctx);
    ctx.deadline = performance.now() + timeout;
    ctx.timeoutMs = timeout;
    this.t.watch(ctx);
    return ctx;
  }

  /** Run an op's body and wait for its writes; failures propagate to the group. */
  async #drive(ctx: OpCtx, body: (ctx: OpCtx) => Promise<void>, small: boolean): Promise<void> {
    const g = this.g;
    const seq = ctx.seq, collective = seq !== 0;
    try {
      if (collective) g.scanQueued(seq);
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
        const err = new CollectiveError("protocol", ctx.name, g.name, ctx.waitingOn, String(e));
        g.fail(ctx, err);
        throw err;
      }
      g.fail(ctx, e);
      throw e;
    } finally {
      removeFrom(this.t.active, ctx);
      if (collective) {
        // #done: every call up to it has finished (calls may overlap when not awaited).
        if (seq === g.done + 1) g.done++;
        else this.#finished.add(seq);
        while (this.#finished.size > 0 && this.#finished.delete(g.done + 1)) g.done++;
      }
    }
  }

  /** Close the group: its ops in flight reject, and so does every later one. */
  close(): void {
    this.closed = true;
    for (const ctx of [...this.t.active]) {
      if (ctx.comm === this.g) {
        ctx.fail(new CollectiveError("closed", ctx.name, this.g.name, undefined, "group closed"));
      }
    }
  }
}
