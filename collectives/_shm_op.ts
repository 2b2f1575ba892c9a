/**
 * The life of a shared-memory group's ops: collectives run one after another in call order
 * (an idle communicator starts one at once), point-to-point ops queue per peer and direction;
 * each op is refused on a closed or failed group, numbered, and given its deadline's clock. A
 * mismatch rejects on every rank and leaves the group usable (the staging halves realign on the
 * shared step count); any other failure leaves the group failed for good.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import type { Ctx, OpName } from "./_shm_layout.ts";
import type { ShmFaults } from "./_shm_faults.ts";
import { type ShmRounds, thread } from "./_shm_wait.ts";
import type { ShmSlots } from "./_shm_slots.ts";

/** Runs a shared-memory group's ops. */
export class ShmOps {
  /** Collectives begun on this communicator. */
  seq = 0;
  /** Why the group failed for good, once it has. */
  broken: CollectiveError | undefined;
  #tail: Promise<void> = Promise.resolve();
  #busy = 0;
  #p2pTail = new Map<string, Promise<void>>();
  readonly #faults: ShmFaults;
  readonly #rounds: ShmRounds;
  readonly #slots: ShmSlots;

  constructor(faults: ShmFaults, rounds: ShmRounds, slots: ShmSlots) {
    this.#faults = faults;
    this.#rounds = rounds;
    this.#slots = slots;
  }

  #closed(op: string): CollectiveError {
    return new CollectiveError(
      "closed",
      op,
      this.#faults.name,
      undefined,
      "the communicator is closed",
    );
  }

  /** Run a collective once this communicator's earlier ones have settled. */
  enqueue(op: OpName, ms: number, body: (ctx: Ctx) => Promise<void>): Promise<void> {
    const run = async () => {
      try {
        if (this.#faults.closed) throw this.#closed(op);
        if (this.broken !== undefined) {
          throw new CollectiveError(
            this.broken.reason,
            op,
            this.#faults.name,
            this.broken.peer,
            `the group failed earlier (${this.broken.message}); build a new group`,
          );
        }
        this.seq++;
        await body({ op, ms, deadline: 0 });
      } catch (e) {
        if (e instanceof CollectiveError && e.reason === "mismatch") {
          // Every rank rejected after the same round, but the ranks may have taken paths that
          // use different numbers of staging units: realign the halves on the shared step count.
          this.#slots.unit = this.#rounds.step;
        } else if (e instanceof CollectiveError && this.broken === undefined) {
          this.broken = e;
          if ((e.reason === "peer-lost" || e.reason === "timeout") && e.peer !== undefined) {
            // Tell the members still waiting on this rank whom the group lost, so that they
            // fail at once and name the same rank rather than this one.
            this.#faults.abandon(e.peer);
          }
        }
        throw e;
      } finally {
        if (--this.#busy === 0) thread.pending--;
      }
    };
    if (this.#busy === 0) thread.pending++;
    // An idle communicator starts the op at once (no promise hop on the latency path).
    const p = this.#busy++ === 0 ? run() : this.#tail.then(run, run);
    this.#tail = p;
    return p;
  }

  /** Run a point-to-point op once the earlier ones of its peer and direction (`key`) have. */
  p2p(key: string, op: string, ms: number, body: (ctx: Ctx) => Promise<void>): Promise<void> {
    const run = async () => {
      try {
        if (this.#faults.closed) throw this.#closed(op);
        await body({ op, ms, deadline: 0 });
      } finally {
        thread.pending--;
      }
    };
    thread.pending++;
    const p = (this.#p2pTail.get(key) ?? Promise.resolve()).then(run);
    this.#p2pTail.set(key, p.catch(() => {}));
    return p;
  }
}
