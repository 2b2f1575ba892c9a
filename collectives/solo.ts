/**
 * The communicator of a world of one rank: every collective is the identity (or a copy), so
 * code written for a group runs unchanged on one rank.
 *
 * @example
 * ```ts
 * import { soloCommunicator } from "./solo.ts";
 * const world = soloCommunicator();
 * const out = new Float32Array(2);
 * await world.allGather(new Float32Array([1, 2]), out);
 * console.assert(world.size === 1 && out[1] === 2);
 * ```
 *
 * @module
 */
import {
  type CollectiveBuffer,
  type CollectiveOptions,
  type Communicator,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";

function same(what: string, a: CollectiveBuffer, b: CollectiveBuffer, o?: CollectiveOptions) {
  dtypeOf(a, o?.dtype);
  if (a.length !== b.length || a.constructor !== b.constructor) {
    throw new RangeError(
      `${what} on one rank needs input and output of the same type and length, got ` +
        `${a.constructor.name}[${a.length}] and ${b.constructor.name}[${b.length}]`,
    );
  }
  if (a !== b) b.set(a as never);
}

/**
 * A {@linkcode Communicator} of one rank.
 *
 * @param name the group's label in errors; default `"world"`
 * @returns the communicator
 */
export function soloCommunicator(name = "world"): Communicator {
  const noPeer = (op: string) =>
    Promise.reject(
      new RangeError(`${op} on group "${name}" of one rank: there is no other rank to talk to`),
    );
  let closed = false;
  const open = (op: string) => {
    if (closed) throw new RangeError(`${op} on group "${name}": the communicator is closed`);
  };
  const c: Communicator = {
    rank: 0,
    size: 1,
    name,
    transport: "solo",
    allReduce(buf: CollectiveBuffer, _op?: ReduceOp, o?: CollectiveOptions) {
      open("allReduce");
      dtypeOf(buf, o?.dtype);
      return Promise.resolve();
    },
    reduceScatter(input, output, _op?: ReduceOp, o?: CollectiveOptions) {
      open("reduceScatter");
      same("reduceScatter", input, output, o);
      return Promise.resolve();
    },
    allGather(input, output, o?: CollectiveOptions) {
      open("allGather");
      same("allGather", input, output, o);
      return Promise.resolve();
    },
    broadcast(buf, root, o?: CollectiveOptions) {
      open("broadcast");
      dtypeOf(buf, o?.dtype);
      if (root !== 0) return Promise.reject(new RangeError(`broadcast root ${root} of 1 rank`));
      return Promise.resolve();
    },
    reduce(buf, root, _op?: ReduceOp, o?: CollectiveOptions) {
      open("reduce");
      dtypeOf(buf, o?.dtype);
      if (root !== 0) return Promise.reject(new RangeError(`reduce root ${root} of 1 rank`));
      return Promise.resolve();
    },
    allToAll(input, output, o?: CollectiveOptions) {
      open("allToAll");
      same("allToAll", input, output, o);
      return Promise.resolve();
    },
    send: () => noPeer("send"),
    recv: () => noPeer("recv"),
    barrier() {
      open("barrier");
      return Promise.resolve();
    },
    split(color: number) {
      open("split");
      return Promise.resolve(color < 0 ? null : soloCommunicator(`${name}/split(${color})`));
    },
    close() {
      closed = true;
      return Promise.resolve();
    },
  };
  return c;
}
