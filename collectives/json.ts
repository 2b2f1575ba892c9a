/**
 * Small JSON values between ranks (a manifest, a report, a directory name), over any
 * {@linkcode Communicator}: the text travels as int32 words, its length first.
 *
 * @module
 */
import type { CollectiveOptions, Communicator } from "./communicator.ts";

function toWords(value: unknown): Int32Array {
  const text = new TextEncoder().encode(JSON.stringify(value));
  const padded = new Uint8Array(Math.ceil(text.length / 4) * 4).fill(32);
  padded.set(text);
  return new Int32Array(padded.buffer);
}

function fromWords(words: Int32Array): unknown {
  return JSON.parse(new TextDecoder().decode(new Uint8Array(words.buffer)).trimEnd());
}

/**
 * Send a JSON value to `peer`: its length on `tag`, its text on `tag - 1`.
 *
 * @param comm the communicator
 * @param value the value
 * @param peer the receiving rank
 * @param tag the tag (the text goes on `tag - 1`)
 * @param opts timeout
 */
export async function sendJson(
  comm: Communicator,
  value: unknown,
  peer: number,
  tag: number,
  opts?: CollectiveOptions,
): Promise<void> {
  const words = toWords(value);
  await comm.send(new Int32Array([words.length]), peer, tag, opts);
  await comm.send(words, peer, tag - 1, opts);
}

/**
 * Receive a JSON value {@linkcode sendJson} sent.
 *
 * @param comm the communicator
 * @param peer the sending rank
 * @param tag the tag it sent with
 * @param opts timeout
 * @returns the value
 */
export async function recvJson(
  comm: Communicator,
  peer: number,
  tag: number,
  opts?: CollectiveOptions,
): Promise<unknown> {
  const len = new Int32Array(1);
  await comm.recv(len, peer, tag, opts);
  const words = new Int32Array(len[0]!);
  await comm.recv(words, peer, tag - 1, opts);
  return fromWords(words);
}

/**
 * Every rank gets `root`'s JSON value. Collective.
 *
 * @example One rank
 * ```ts
 * import { broadcastJson, soloCommunicator } from "./mod.ts";
 * console.assert((await broadcastJson(soloCommunicator(), { a: 1 }, 0) as { a: number }).a === 1);
 * ```
 *
 * @param comm the communicator
 * @param value the value (only `root`'s counts)
 * @param root the rank whose value it is
 * @param opts timeout
 * @returns root's value
 */
export async function broadcastJson(
  comm: Communicator,
  value: unknown,
  root: number,
  opts?: CollectiveOptions,
): Promise<unknown> {
  const mine = comm.rank === root ? toWords(value) : new Int32Array(0);
  const len = new Int32Array([mine.length]);
  await comm.broadcast(len, root, opts);
  const words = comm.rank === root ? mine : new Int32Array(len[0]!);
  if (words.length > 0) await comm.broadcast(words, root, opts);
  return fromWords(words);
}

/**
 * Every rank's JSON value, in rank order, on `root` (the others get `null`): each sends its
 * value with {@linkcode sendJson}. Collective.
 *
 * @example One rank
 * ```ts
 * import { gatherJson, soloCommunicator } from "./mod.ts";
 * console.assert((await gatherJson(soloCommunicator(), "a", 0))?.[0] === "a");
 * ```
 *
 * @param comm the communicator
 * @param value this rank's value
 * @param root the rank that gets them all
 * @param opts timeout
 * @param tag the tag the values travel on (and `tag - 1`); default one of its own
 * @returns on `root`, every rank's value; elsewhere null
 */
export async function gatherJson(
  comm: Communicator,
  value: unknown,
  root: number,
  opts?: CollectiveOptions,
  tag = GATHER_TAG,
): Promise<unknown[] | null> {
  if (comm.rank !== root) {
    await sendJson(comm, value, root, tag, opts);
    return null;
  }
  const out: unknown[] = [];
  for (let r = 0; r < comm.size; r++) {
    out.push(r === root ? value : await recvJson(comm, r, tag, opts));
  }
  return out;
}

/** The tag {@linkcode gatherJson} sends on by default. */
const GATHER_TAG = 0x4a47;
