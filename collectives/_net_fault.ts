/**
 * Network faults for tests: `LOOM_NET_FAULT` makes the TCP transport ({@link ./tcp.ts}) drop or
 * delay the connection from one rank to another, so that what happens when a link dies or
 * crawls is tested rather than hoped for. Every rank reads the same variable and acts on the
 * faults whose sender it is.
 *
 * ```
 * LOOM_NET_FAULT = FAULT ("," FAULT)*
 * FAULT          = "drop:" A "-" B "@" N      A sends B N data frames, then closes its mesh
 *                                              connection and its lane to B instead of the next
 *                | "delay:" A "-" B ":" MS    every frame A sends to B (control frames too)
 *                                              waits MS milliseconds first, in order
 * ```
 *
 * A and B are world ranks (A != B), N >= 0 counts the frames of collectives and point-to-point
 * ops on the mesh and the lane together (0: at the first), MS >= 0 may have a fraction. Spaces
 * around the parts are ignored; a pair may have one drop and one delay. Examples:
 * `drop:1-2@40` (rank 1 cuts its link to rank 2 in the middle of a run), `delay:0-1:5,delay:1-0:5`
 * (a slow link both ways), `delay:1-0:3000` (slower than a short op timeout). Both ends of a
 * dropped connection fail their ops naming the other; a rank that loses a peer tells the rest
 * of its groups, so a third rank fails naming the lost one too. With a delay anywhere in the
 * job no rank opens lanes, so small ops take the mesh, where the delay holds them (the ranks
 * of a group must agree on lanes: give every rank the same value).
 *
 * @module
 */
import { readEnv } from "./_wire_auth.ts";

/** The environment variable the TCP transport reads its faults from. */
export const NET_FAULT_ENV = "LOOM_NET_FAULT";

/** One fault of `LOOM_NET_FAULT`. */
export type NetFault =
  | { kind: "drop"; from: number; to: number; frames: number }
  | { kind: "delay"; from: number; to: number; ms: number };

/** What one rank does to its frames for one peer. */
export interface PeerFault {
  /** Data frames sent before the connection is dropped; undefined: never dropped. */
  dropAfter: number | undefined;
  /** Milliseconds every frame is held; 0: not delayed. */
  delayMs: number;
  /** Data frames sent so far (mesh and lane). */
  sent: number;
}

const GRAMMAR = 'a comma-separated list of "drop:A-B@N" (rank A drops its connection to rank B ' +
  'after N data frames) and "delay:A-B:MS" (every frame from A to B waits MS ms), e.g. ' +
  '"drop:1-2@40" or "delay:0-1:5,delay:1-0:5"';

const RANK = String.raw`\s*(\d+)\s*`;
const DROP = new RegExp(String.raw`^\s*drop\s*:${RANK}-${RANK}@\s*(\d+)\s*$`);
const DELAY = new RegExp(String.raw`^\s*delay\s*:${RANK}-${RANK}:\s*(\d+(?:\.\d+)?)\s*$`);

/**
 * Parse the value of `LOOM_NET_FAULT`.
 *
 * @param text the variable's value; empty means no fault
 * @returns the faults, in the order given
 * @throws {TypeError} naming the part that does not fit the grammar, or a pair given twice
 */
export function parseNetFaults(text: string): NetFault[] {
  const out: NetFault[] = [];
  if (text.trim() === "") return out;
  const seen = new Set<string>();
  for (const part of text.split(",")) {
    const d = DROP.exec(part), w = d === null ? DELAY.exec(part) : null;
    const m = d ?? w;
    if (m === null) {
      throw new TypeError(`${NET_FAULT_ENV}: "${part.trim()}" is not a fault; give ${GRAMMAR}`);
    }
    const from = Number(m[1]), to = Number(m[2]), x = Number(m[3]);
    if (from === to) {
      throw new TypeError(
        `${NET_FAULT_ENV}: "${part.trim()}" connects rank ${from} to itself; A and B must differ`,
      );
    }
    const f: NetFault = d !== null
      ? { kind: "drop", from, to, frames: x }
      : { kind: "delay", from, to, ms: x };
    const key = `${f.kind}:${from}-${to}`;
    if (seen.has(key)) {
      throw new TypeError(`${NET_FAULT_ENV}: ${f.kind} from rank ${from} to ${to} is given twice`);
    }
    seen.add(key);
    out.push(f);
  }
  return out;
}

/**
 * What `rank` of a world of `size` does to its frames for each peer under `faults`: null when
 * it sends nothing faulty (the transport's send then stays the class's own, with no check).
 *
 * @param faults the parsed faults
 * @param rank this rank
 * @param size the world size
 * @returns one entry per world rank (undefined for a peer without faults), or null
 * @throws {RangeError} when a fault names a rank outside the world
 */
export function peerFaults(
  faults: NetFault[],
  rank: number,
  size: number,
): (PeerFault | undefined)[] | null {
  let out: (PeerFault | undefined)[] | null = null;
  for (const f of faults) {
    for (const r of [f.from, f.to]) {
      if (r >= size) {
        throw new RangeError(
          `${NET_FAULT_ENV}: ${f.kind}:${f.from}-${f.to} names rank ${r}, but the world has ` +
            `${size} ranks (0..${size - 1})`,
        );
      }
    }
    if (f.from !== rank) continue;
    out ??= Array.from({ length: size }, () => undefined);
    const p = out[f.to] ??= { dropAfter: undefined, delayMs: 0, sent: 0 };
    if (f.kind === "drop") p.dropAfter = f.frames;
    else p.delayMs = f.ms;
  }
  return out;
}

/**
 * The faults of `LOOM_NET_FAULT` that concern `rank` (unset or empty: none).
 *
 * @param rank this rank
 * @param size the world size
 * @returns what this rank does to its frames for each peer (null: nothing), and whether the
 *   job may open lanes (not with a delay anywhere: every rank reads the same value, so all agree)
 * @throws {TypeError} when the value does not fit the grammar
 * @throws {RangeError} when it names a rank outside the world
 */
export function netFaults(
  rank: number,
  size: number,
): { peers: (PeerFault | undefined)[] | null; lanes: boolean } {
  const faults = parseNetFaults(readEnv(NET_FAULT_ENV) ?? "");
  return {
    peers: peerFaults(faults, rank, size),
    lanes: !faults.some((f) => f.kind === "delay"),
  };
}
