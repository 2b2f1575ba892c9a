/**
 * Start N ranks as Workers of this process, each with a shared-memory
 * {@linkcode ShmCommunicator} over the whole group ("world").
 *
 * The rank module exports `main(comm, data)`; whatever it returns (structured-clonable) comes back
 * to the parent:
 *
 * ```ts ignore
 * // rank.ts
 * import type { Communicator } from "./mod.ts";
 * export async function main(comm: Communicator, data: { n: number }): Promise<number> {
 *   const buf = new Float32Array(data.n).fill(comm.rank);
 *   await comm.allReduce(buf);
 *   return buf[0]!;
 * }
 * ```
 *
 * @module
 */
import type { CollectiveFailure } from "./communicator.ts";
import { ALIVE, DEAD } from "./_shm_link.ts";
import { createShmGroupSpec } from "./shm.ts";
import { SharedArena } from "./arena.ts";
import type { RankErrorInfo, WorldInit } from "./_world_worker.ts";

/** Options of {@linkcode startWorkers} and {@linkcode runWorkers}. */
export interface WorkerWorldOptions {
  /** Number of ranks (Workers); may exceed the number of cores. */
  size: number;
  /** URL of the rank module; it must export `main(comm, data)`. */
  module: string | URL;
  /** Structured-clonable value handed to every rank's `main` as its second argument. */
  data?: unknown;
  /** Default timeout of every collective, in milliseconds (default 30 000). */
  timeoutMs?: number;
  /** Group label used in errors; default `"world"`. */
  name?: string;
  /** Staging bytes per rank and half (default 2 MiB; two halves per rank). */
  slotBytes?: number;
  /** Point-to-point chunk bytes per directed pair (default 64 KiB). */
  chanBytes?: number;
  /** Microseconds to spin before sleeping while waiting for a peer. */
  spinUs?: number;
  /** Messages up to this many bytes take the latency path (default 64 KiB). */
  smallBytes?: number;
  /** Called with every message a rank posts itself (`self.postMessage`), e.g. progress. */
  onMessage?: (rank: number, message: unknown) => void;
}

/** A rank's `main` threw, its Worker crashed, or it was terminated. */
export class RankFailedError extends Error {
  /** The rank that failed. */
  readonly rank: number;
  /** When the rank failed inside a collective: why (else undefined). */
  readonly reason: CollectiveFailure | undefined;
  /** When the rank failed inside a collective: the peer it named (else undefined). */
  readonly peer: number | undefined;

  /**
   * Build the error for a failed rank.
   *
   * @param rank the rank that failed
   * @param message what happened
   * @param info the error the rank posted, if any
   */
  constructor(rank: number, message: string, info?: RankErrorInfo) {
    super(`rank ${rank} failed: ${message}`);
    this.name = "RankFailedError";
    this.rank = rank;
    this.reason = info?.reason as CollectiveFailure | undefined;
    this.peer = info?.peer;
  }
}

/** Failures raised because another rank's main had ended first: that rank's world rank. */
const learnedFrom = new WeakMap<RankFailedError, number>();

/** Handle on running rank Workers. */
export interface WorkerWorld<T> {
  /** Number of ranks. */
  readonly size: number;
  /**
   * One promise per rank: resolves with what its `main` returned; rejects with a
   * {@linkcode RankFailedError} if it threw, crashed or was terminated.
   */
  readonly results: Promise<T>[];
  /** Kill one rank's Worker now; its peers' pending ops reject naming it. */
  terminate(rank: number): void;
  /** Terminate every Worker still running. */
  close(): void;
}

/**
 * Start `size` rank Workers running `module`'s `main(comm, data)`. Use {@linkcode runWorkers}
 * unless you need to watch or kill single ranks. A Worker stays alive after its `main` returns
 * (its peers may still read its shared memory and messages) until {@linkcode WorkerWorld.close}:
 * always call `close()` when done, or the process will not exit.
 *
 * @param opts the world's size, module and options
 * @returns a handle with one result promise per rank
 */
export function startWorkers<T = unknown>(opts: WorkerWorldOptions): WorkerWorld<T> {
  const size = opts.size;
  if (!Number.isInteger(size) || size < 1 || size > 256) {
    throw new RangeError(`size must be an integer in [1, 256], got ${size}`);
  }
  let moduleUrl: string;
  try {
    moduleUrl = new URL(opts.module).href;
  } catch {
    throw new TypeError(
      `module must be an absolute URL, got ${opts.module}: use new URL("./rank.ts", import.meta.url)`,
    );
  }
  // The world's own arena, which every rank maps and which goes away with the world: buffers
  // from sharedArray() in a rank fold at SIMD speed, and so do the groups' staging slots.
  const arena = SharedArena.create();
  const spec = createShmGroupSpec(
    opts.name ?? "world",
    Array.from({ length: size }, (_, r) => r),
    opts.slotBytes,
    opts.chanBytes,
    arena,
  );
  const aliveSab = new SharedArrayBuffer(4 * size);
  const alive = new Int32Array(aliveSab);
  const ports: (MessagePort | null)[][] = Array.from(
    { length: size },
    () => Array(size).fill(null),
  );
  for (let i = 0; i < size; i++) {
    for (let j = i + 1; j < size; j++) {
      const ch = new MessageChannel();
      ports[i]![j] = ch.port1;
      ports[j]![i] = ch.port2;
    }
  }
  const workers: (Worker | null)[] = [];
  const settle: { resolve: (v: T) => void; reject: (e: Error) => void; done: boolean }[] = [];
  const results = Array.from({ length: size }, (_, r) =>
    new Promise<T>((resolve, reject) => {
      settle[r] = { resolve, reject, done: false };
    }));
  // A caller that awaits only some ranks must not see unhandled rejections from the others.
  for (const p of results) p.catch(() => {});

  const finish = (rank: number, ok: boolean, v: unknown) => {
    const s = settle[rank]!;
    if (s.done) return;
    s.done = true;
    if (ok) s.resolve(v as T);
    else s.reject(v as Error);
  };
  const kill = (rank: number) => {
    const w = workers[rank];
    if (w === null || w === undefined) return;
    if (Atomics.load(alive, rank) === ALIVE) Atomics.store(alive, rank, DEAD);
    workers[rank] = null;
    w.terminate();
  };

  const closeAll = () => {
    for (let r = 0; r < size; r++) {
      kill(r);
      finish(r, false, new RankFailedError(r, "the world was closed before it finished"));
    }
  };

  try {
    for (let r = 0; r < size; r++) startRank(r);
  } catch (e) {
    closeAll();
    for (const p of ports.flat()) p?.close();
    if (e instanceof DOMException && e.name === "DataCloneError") {
      throw new TypeError(
        `data cannot be posted to the rank Workers (${e.message}): pass plain, structured-clonable ` +
          `values (no functions or class instances with private state)`,
      );
    }
    throw e;
  }

  function startRank(r: number): void {
    const w = new Worker(new URL("./_world_worker.ts", import.meta.url), {
      type: "module",
      name: `${opts.name ?? "world"} rank ${r}`,
    });
    workers.push(w);
    w.onmessage = (e: MessageEvent) => {
      const msg = e.data as { loomWorld?: string; value?: unknown; error?: RankErrorInfo };
      if (msg?.loomWorld === "result") finish(r, true, msg.value);
      else if (msg?.loomWorld === "error") {
        const info = msg.error!;
        const err = new RankFailedError(r, info.message, info);
        if (info.stack !== undefined) err.stack = `${err.name}: ${err.message}\n${info.stack}`;
        if (info.after !== undefined) learnedFrom.set(err, info.after);
        finish(r, false, err);
      } else opts.onMessage?.(r, e.data);
    };
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      Atomics.store(alive, r, DEAD);
      finish(r, false, new RankFailedError(r, `uncaught in its Worker: ${e.message}`));
      kill(r);
    };
    const init: WorldInit = {
      type: "init",
      rank: r,
      spec,
      link: { worldRank: r, worldSize: size, alive: aliveSab, ports: ports[r]! },
      options: { timeoutMs: opts.timeoutMs, spinUs: opts.spinUs, smallBytes: opts.smallBytes },
      module: moduleUrl,
      data: opts.data,
      arena: arena.memory,
    };
    w.postMessage(init, ports[r]!.filter((p): p is MessagePort => p !== null));
  }

  return {
    size,
    results,
    terminate(rank: number): void {
      if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
        throw new RangeError(`rank ${rank} is out of range for a world of ${size}`);
      }
      kill(rank);
      finish(rank, false, new RankFailedError(rank, "its Worker was terminated"));
    },
    close: closeAll,
  };
}

/**
 * Run `module`'s `main(comm, data)` on `size` rank Workers and collect what each returns. If any
 * rank fails, the others are terminated and the promise rejects with a
 * {@linkcode RankFailedError} naming the first rank that failed.
 *
 * @example Sum the ranks over 4 Workers
 * ```ts ignore
 * import { runWorkers } from "./world.ts";
 * const sums = await runWorkers<number>({ size: 4, module: new URL("./rank.ts", import.meta.url) });
 * ```
 *
 * @param opts the world's size, module and options
 * @returns each rank's result, in rank order
 */
export async function runWorkers<T = unknown>(opts: WorkerWorldOptions): Promise<T[]> {
  const world = startWorkers<T>(opts);
  const failures: RankFailedError[] = [];
  let pending = world.size;
  let wake!: () => void;
  const changed = () => new Promise<void>((r) => (wake = r));
  let next = changed();
  world.results.forEach((p) =>
    p.then(
      () => {
        pending--;
        wake();
      },
      (e: RankFailedError) => {
        pending--;
        failures.push(e);
        wake();
      },
    )
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    while (pending > 0 && failures.length === 0) {
      await next;
      next = changed();
    }
    if (failures.length === 0) return await Promise.all(world.results);
    // A lost rank makes its peers fail within ~10 ms: give them a moment, then report the rank
    // that failed on its own rather than one that only saw it go.
    const grace = new Promise<void>((r) => (timer = setTimeout(r, 300)));
    while (pending > 0) {
      const woke = await Promise.race([next.then(() => true), grace.then(() => false)]);
      if (!woke) break;
      next = changed();
    }
    // Second-hand: a rank that saw another fail, or time out. Of those, a rank that saw another
    // rank of this world end (after it failed too) is further from the cause than that rank,
    // which may have seen a rank of another node die: report the one closest to the cause.
    const secondHand = (e: RankFailedError) => e.reason === "peer-lost" || e.reason === "timeout";
    const messenger = (e: RankFailedError) => failures.some((f) => f.rank === learnedFrom.get(e));
    throw failures.find((e) => !secondHand(e)) ?? failures.find((e) => !messenger(e)) ??
      failures[0]!;
  } finally {
    clearTimeout(timer);
    world.close();
  }
}
