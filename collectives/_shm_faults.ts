/**
 * How a shared-memory group's ops fail: why a member can no longer take part (its Worker was
 * terminated, its main returned, it closed the group, it gave up after losing another rank), a
 * deadline that passed, and ranks that called different ops (their op descriptors differ). A
 * rank whose group fails names the rank it lost in its abort word, so that the members still
 * waiting on it fail at once and name the same rank.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import { DEAD, EXITED, markAfterExit, type ShmLink } from "./_shm_link.ts";
import {
  ABORT,
  ARRIVED,
  CLOSED,
  CTRL_STRIDE,
  type Ctx,
  D_SEQ,
  DESC,
  describe,
  STEP,
} from "./_shm_layout.ts";

/** One rank's view of its group's liveness and agreement. */
export class ShmFaults {
  /** Set once this rank closed the group. */
  closed = false;
  readonly #ctrl: Int32Array;
  readonly #link: ShmLink;
  readonly #worldRanks: number[];

  constructor(
    ctrl: Int32Array,
    readonly rank: number,
    readonly size: number,
    readonly name: string,
    link: ShmLink,
    worldRanks: number[],
  ) {
    this.#ctrl = ctrl;
    this.#link = link;
    this.#worldRanks = worldRanks;
  }

  /** Tell the members that this rank gave up on the group after losing group rank `peer`. */
  abandon(peer: number): void {
    Atomics.store(this.#ctrl, this.rank * CTRL_STRIDE + ABORT, peer + 1);
    Atomics.notify(this.#ctrl, this.size * CTRL_STRIDE + ARRIVED);
  }

  /** Mark this rank's group closed, for its peers' waits. */
  close(): void {
    this.closed = true;
    Atomics.store(this.#ctrl, this.rank * CTRL_STRIDE + CLOSED, 1);
    Atomics.notify(this.#ctrl, this.size * CTRL_STRIDE + ARRIVED);
  }

  /** Why rank `p` can no longer take part, if it cannot. */
  gone(ctx: Ctx, p: number): CollectiveError | undefined {
    const state = this.#link.state(this.#worldRanks[p]!);
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
        this.#worldRanks[p]!,
      );
    }
    if (Atomics.load(this.#ctrl, p * CTRL_STRIDE + CLOSED) !== 0) {
      return new CollectiveError("peer-lost", ctx.op, this.name, p, "it closed the group");
    }
    return undefined;
  }

  /** Why waiting on `peer` cannot succeed, if it cannot. */
  problem(ctx: Ctx, peer: number): CollectiveError | undefined {
    if (this.closed) {
      return new CollectiveError("closed", ctx.op, this.name, undefined, "closed while pending");
    }
    return this.gone(ctx, peer) ?? this.late(ctx, peer);
  }

  /** Why a round cannot complete, if it cannot: a member gone before arriving, or the clock. */
  roundProblem(ctx: Ctx, step: number): CollectiveError | undefined {
    if (this.closed) {
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
        : this.gone(ctx, p);
      if (e === undefined || Atomics.load(this.#ctrl, at + STEP) >= step) continue;
      // A terminated Worker or an abort is the cause; a member that merely returned or closed
      // may have done so because of it, so keep looking.
      if (abort !== 0 || this.#link.state(this.#worldRanks[p]!) === DEAD) return e;
      first ??= e;
    }
    return first ?? (late < 0 ? undefined : this.late(ctx, late));
  }

  late(ctx: Ctx, peer: number): CollectiveError | undefined {
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

  compare(ctx: Ctx, mine: number[]): void {
    const par = (mine[D_SEQ]! & 1) * 8;
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
}
