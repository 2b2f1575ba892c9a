/**
 * How a shared-memory rank waits: rounds (a rank publishes its step and bumps one group-wide
 * arrival counter; the round is complete once the counter reaches size x step; the last rank to
 * arrive wakes the sleepers), and the wait on a counter under them, which spins on
 * `Atomics.load` for an adaptive budget, then blocks in `Atomics.wait` for up to 2 ms (only
 * while no other op of the thread is pending: it blocks the thread's event loop), then sleeps in
 * `Atomics.waitAsync`, waking at least every 10 ms to check the deadline and the members'
 * liveness ({@link ./_shm_faults.ts}).
 *
 * @module
 */
import type { CollectiveError } from "./communicator.ts";
import {
  ARRIVED,
  CTRL_STRIDE,
  type Ctx,
  D_SEQ,
  DESC,
  G_WAITERS,
  POLL_MS,
  STEP,
} from "./_shm_layout.ts";
import type { ShmFaults } from "./_shm_faults.ts";

/** Longest time a wait may block the thread in Atomics.wait before it sleeps in waitAsync. */
const SYNC_MS = 2;

/**
 * Ops pending in this thread over all its communicators (a communicator's queue of collectives
 * counts once, as they run one after another; every send and recv counts): a wait blocks the
 * thread only when it is the only one.
 */
export const thread = { pending: 0 };

/** Tuning of the spin budget. */
export interface SpinOptions {
  /** Fixed microseconds to spin, or undefined for the adaptive budget. */
  spinUs?: number;
  /** Ranks in the process's world (more than cores: spin less). */
  worldSize: number;
}

/** One rank's rounds and waits in its group. */
export class ShmRounds {
  /** Rounds this rank has published. */
  step = 0;
  readonly #ctrl: Int32Array;
  readonly #rank: number;
  readonly #size: number;
  readonly #group: number;
  readonly #faults: ShmFaults;
  #spinMs: number;
  #spinBaseMs: number;
  #spinFails = 0;
  #spinMinMs: number;
  #spinMaxMs: number;

  constructor(ctrl: Int32Array, faults: ShmFaults, opts: SpinOptions) {
    this.#ctrl = ctrl;
    this.#faults = faults;
    this.#rank = faults.rank;
    this.#size = faults.size;
    this.#group = faults.size * CTRL_STRIDE;
    const cores = (globalThis.navigator?.hardwareConcurrency ?? 2) || 2;
    const over = opts.worldSize > cores;
    const spinUs = opts.spinUs ?? (over ? 5 : 50);
    this.#spinMs = this.#spinBaseMs = spinUs / 1000;
    // Adaptive unless the caller fixed the budget: see #spun and #slept.
    this.#spinMinMs = opts.spinUs !== undefined ? this.#spinMs : 0.001;
    this.#spinMaxMs = opts.spinUs !== undefined ? this.#spinMs : (over ? 50 : 1000) / 1000;
  }

  /**
   * Publish the next round (with the op descriptor when given) and wait for every peer. Returns
   * `undefined` when every peer arrived within the spin budget, else a promise.
   */
  round(ctx: Ctx, desc: number[] | null): Promise<void> | undefined {
    const me = this.#rank * CTRL_STRIDE;
    const ctrl = this.#ctrl;
    if (desc !== null) {
      const base = me + DESC + (desc[D_SEQ]! & 1) * 8;
      for (let i = 0; i < desc.length; i++) Atomics.store(ctrl, base + i, desc[i]!);
    }
    const step = ++this.step;
    Atomics.store(ctrl, me + STEP, step);
    // One group-wide arrival counter: a waiter sleeps on it once and only the last rank to
    // arrive wakes everybody (no convoy of wake-ups through the ranks one by one).
    const g = this.#group, target = this.#size * step;
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
    if (desc !== null) this.#faults.compare(ctx, desc);
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
    await this.wait(
      ctx,
      this.#ctrl,
      g + ARRIVED,
      this.#size * step,
      g + G_WAITERS,
      false,
      () => this.#faults.roundProblem(ctx, step),
    );
    this.#slept(performance.now() - t0);
    if (desc !== null) this.#faults.compare(ctx, desc);
  }

  /**
   * Wait until `arr[idx] >= target`: spin first (when `spin`), then sleep in waitAsync, polling
   * the peer's liveness and the deadline.
   */
  async wait(
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
      if (t < syncUntil && thread.pending > 1 && turns < 8) {
        turns++;
        await null;
        continue;
      }
      if (t < syncUntil && thread.pending <= 1) {
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
}
