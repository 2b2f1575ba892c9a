/**
 * What the shared-memory ranks of one process share besides a group's buffers: a liveness word
 * per world rank, and a MessagePort to every other rank (used to hand new SharedArrayBuffers to
 * the members of a sub-group).
 *
 * @module
 */

/** Liveness word values. */
export const ALIVE = 0;
/** The rank's Worker was terminated or crashed. */
export const DEAD = 1;
/** The rank's main function returned: it takes part in no further collective. */
export const EXITED = 2;

const afterExit = new WeakMap<object, number>();

/**
 * Mark `e` as raised because world rank `rank`'s main function had ended (returned or thrown)
 * without joining the op: the parent then reports that rank's own failure, the first-hand one,
 * rather than `e` (see `runWorkers`).
 *
 * @returns `e`
 */
export function markAfterExit<E extends Error>(e: E, rank: number): E {
  afterExit.set(e, rank);
  return e;
}

/** The world rank whose end `e` was raised after (see {@linkcode markAfterExit}), if any. */
export function exitedBefore(e: unknown): number | undefined {
  return typeof e === "object" && e !== null ? afterExit.get(e) : undefined;
}

/** Structured-clonable description of the links, posted to each Worker. */
export interface ShmLinkInit {
  /** This thread's rank in the world (its liveness index). */
  worldRank: number;
  /** Number of ranks in the world. */
  worldSize: number;
  /** One int32 liveness word per world rank. */
  alive: SharedArrayBuffer;
  /** A port to every other world rank (`null` at this rank's own index). */
  ports: (MessagePort | null)[];
}

interface Pending {
  from: number;
  resolve: (v: unknown) => void;
}

/** Per-rank access to liveness words and peer ports. */
export class ShmLink {
  /** This thread's rank in the world. */
  readonly worldRank: number;
  /** Number of ranks in the world. */
  readonly worldSize: number;
  /** The liveness words, one per world rank. */
  readonly alive: Int32Array;
  #ports: (MessagePort | null)[];
  #inbox = new Map<string, { from: number; payload: unknown }>();
  #waiting = new Map<string, Pending>();

  /**
   * Take over the ports and liveness words posted to this thread.
   *
   * @param init the structured-clonable link description
   */
  constructor(init: ShmLinkInit) {
    this.worldRank = init.worldRank;
    this.worldSize = init.worldSize;
    this.alive = new Int32Array(init.alive);
    this.#ports = init.ports;
    this.#ports.forEach((port, from) => {
      if (port === null) return;
      port.onmessage = (e: MessageEvent) => {
        const { key, payload } = e.data as { key: string; payload: unknown };
        const w = this.#waiting.get(key);
        if (w !== undefined && w.from === from) {
          this.#waiting.delete(key);
          w.resolve(payload);
        } else this.#inbox.set(key, { from, payload });
      };
    });
  }

  /** Liveness of a world rank: {@linkcode ALIVE}, {@linkcode DEAD} or {@linkcode EXITED}. */
  state(worldRank: number): number {
    return Atomics.load(this.alive, worldRank);
  }

  /** Post `payload` under `key` to a world rank. */
  post(worldRank: number, key: string, payload: unknown): void {
    const port = this.#ports[worldRank];
    if (port === null || port === undefined) {
      throw new RangeError(`No port to world rank ${worldRank} from rank ${this.worldRank}`);
    }
    port.postMessage({ key, payload });
  }

  /**
   * Wait for the message posted under `key` by `from`. Polls `check` every 10 ms; a string it
   * returns rejects the wait with that message.
   */
  receive(key: string, from: number, check: () => Error | undefined): Promise<unknown> {
    const got = this.#inbox.get(key);
    if (got !== undefined && got.from === from) {
      this.#inbox.delete(key);
      return Promise.resolve(got.payload);
    }
    return new Promise((resolve, reject) => {
      const timer = setInterval(() => {
        const err = check();
        if (err !== undefined) {
          clearInterval(timer);
          this.#waiting.delete(key);
          reject(err);
        }
      }, 10);
      this.#waiting.set(key, {
        from,
        resolve: (v) => {
          clearInterval(timer);
          resolve(v);
        },
      });
    });
  }

  /** Close every port. */
  close(): void {
    for (const p of this.#ports) p?.close();
  }
}
