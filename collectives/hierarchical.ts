/**
 * A {@linkcode Communicator} for a job of several nodes with several ranks each: the ranks of a
 * node talk over a fast local communicator (shared memory), and one leader per node (local rank
 * 0) talks to the other leaders over TCP.
 *
 * | op            | path                                                                        |
 * | ------------- | --------------------------------------------------------------------------- |
 * | allReduce     | local reduce to the leader, leaders all-reduce, local broadcast             |
 * | broadcast     | local broadcast on the root's node, leaders broadcast, local broadcast      |
 * | allGather     | local all-gather, leaders all-gather the node blocks, local broadcast (*)   |
 * | barrier       | local barrier, leaders barrier, local barrier                               |
 * | reduce        | allReduce of a copy; the root keeps it (others' buffers stay unchanged)     |
 * | reduceScatter | allReduce of a copy of the input; each rank keeps its chunk                 |
 * | allToAll, send, recv | straight over the global TCP communicator (every rank has links)     |
 * | split         | splits both the local and the global communicator, stays hierarchical       |
 *
 * (*) when every node holds the same number of ranks, numbered contiguously (node-major, as
 * `launch` numbers them); otherwise allGather also goes over the global TCP communicator.
 *
 * Every rank must be a member of both `global` (all ranks of the job) and `local` (the ranks of its
 * node, local rank 0 being the node's leader).
 *
 * Only `global` crosses machines: give its `connectTcp` the job secret (`secret`, or
 * `LOOM_SECRET` in every node's environment, which the node ranks `launch` starts read by
 * default), and every connection between nodes is authenticated; the leaders' group is a split of
 * `global` and travels over the same authenticated connections.
 *
 * @module
 */
import {
  type CollectiveBuffer,
  CollectiveError,
  type CollectiveOptions,
  type Communicator,
  dtypeOf,
  type ReduceOp,
} from "./communicator.ts";
import { finishAvg } from "./reduce.ts";

/**
 * Build a hierarchical communicator from a node-local one and a global one. Collective over
 * `global` (every rank of the job must call it). The result owns `global` and the leaders' group
 * it creates, and closes them on `close()`; `local` stays the caller's.
 *
 * @param local the ranks of this rank's node; local rank 0 leads the node
 * @param global every rank of the job (TCP)
 * @returns the hierarchical communicator, with `global`'s rank and size
 */
export async function createHierarchical(
  local: Communicator,
  global: Communicator,
): Promise<Communicator> {
  const leaders = await global.split(local.rank === 0 ? 0 : -1, global.rank);
  // Learn every rank's node (its leader's global rank) and local rank.
  const leader = new Int32Array([global.rank]);
  await local.broadcast(leader, 0);
  const table = new Int32Array(3 * global.size);
  await global.allGather(new Int32Array([leader[0]!, local.rank, local.size]), table);
  const nodeOf = new Int32Array(global.size), localOf = new Int32Array(global.size);
  const leaderRanks: number[] = [];
  let uniform = true;
  for (let g = 0; g < global.size; g++) {
    nodeOf[g] = table[3 * g]!;
    localOf[g] = table[3 * g + 1]!;
    if (localOf[g] === 0) leaderRanks.push(g);
    if (table[3 * g + 2] !== local.size || nodeOf[g]! + localOf[g]! !== g) uniform = false;
  }
  return new HierarchicalCommunicator(
    local,
    global,
    leaders,
    nodeOf,
    localOf,
    leaderRanks,
    uniform,
  );
}

class HierarchicalCommunicator implements Communicator {
  readonly transport = "hierarchical";
  readonly rank: number;
  readonly size: number;
  readonly name: string;

  constructor(
    private readonly local: Communicator,
    private readonly global: Communicator,
    private readonly leaders: Communicator | null,
    private readonly nodeOf: Int32Array,
    private readonly localOf: Int32Array,
    private readonly leaderRanks: number[],
    private readonly uniform: boolean,
  ) {
    this.rank = global.rank;
    this.size = global.size;
    this.name = global.name;
  }

  #checkRoot(root: number, op: string): void {
    if (!Number.isInteger(root) || root < 0 || root >= this.size) {
      throw new RangeError(
        `${op}: root ${root} is out of range for group "${this.name}" of ${this.size} ranks: ` +
          `use 0 <= root < ${this.size}`,
      );
    }
  }

  /** Local reduce to the leader, leaders all-reduce over TCP, local broadcast. */
  async allReduce(
    buf: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    const dtype = dtypeOf(buf, opts?.dtype);
    const inner: ReduceOp = op === "avg" ? "sum" : op;
    await this.local.reduce(buf, 0, inner, opts);
    if (this.leaders) await this.leaders.allReduce(buf, inner, opts);
    await this.local.broadcast(buf, 0, opts);
    if (op === "avg") finishAvg(buf, this.size, dtype);
  }

  /** AllReduce of a copy of `input`; this rank keeps chunk `rank`. */
  async reduceScatter(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    dtypeOf(input, opts?.dtype);
    const m = output.length;
    if (input.length !== m * this.size || input.constructor !== output.constructor) {
      throw new RangeError(
        `reduceScatter: input needs size x output = ${this.size} x ${m} elements of the same ` +
          `array type, got ${input.length} (${input.constructor.name})`,
      );
    }
    const work = input.slice();
    await this.allReduce(work, op, opts);
    output.set(work.subarray(this.rank * m, (this.rank + 1) * m) as Float32Array);
  }

  /** Local all-gather, leaders all-gather the node blocks, local broadcast. */
  async allGather(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void> {
    dtypeOf(input, opts?.dtype);
    if (!this.uniform) return await this.global.allGather(input, output, opts);
    const m = input.length;
    if (output.length !== m * this.size || input.constructor !== output.constructor) {
      throw new RangeError(
        `allGather: output needs size x input = ${this.size} x ${m} elements of the same ` +
          `array type, got ${output.length} (${output.constructor.name})`,
      );
    }
    const first = this.nodeOf[this.rank]!;
    const block = output.subarray(first * m, (first + this.local.size) * m);
    await this.local.allGather(input, block, opts);
    if (this.leaders) await this.leaders.allGather(block.slice(), output, opts);
    await this.local.broadcast(output, 0, opts);
  }

  /** Local broadcast on the root's node, leaders broadcast, local broadcast elsewhere. */
  async broadcast(buf: CollectiveBuffer, root: number, opts?: CollectiveOptions): Promise<void> {
    dtypeOf(buf, opts?.dtype);
    this.#checkRoot(root, "broadcast");
    const rootNode = this.nodeOf[root]!;
    const mine = this.nodeOf[this.rank]! === rootNode;
    if (mine) await this.local.broadcast(buf, this.localOf[root]!, opts);
    if (this.leaders) await this.leaders.broadcast(buf, this.leaderRanks.indexOf(rootNode), opts);
    if (!mine) await this.local.broadcast(buf, 0, opts);
  }

  /** AllReduce of a copy; only the root's `buf` takes the result. */
  async reduce(
    buf: CollectiveBuffer,
    root: number,
    op: ReduceOp = "sum",
    opts?: CollectiveOptions,
  ): Promise<void> {
    dtypeOf(buf, opts?.dtype);
    this.#checkRoot(root, "reduce");
    const work = buf.slice();
    await this.allReduce(work, op, opts);
    if (this.rank === root) buf.set(work as Float32Array);
  }

  /** Over the global communicator. */
  allToAll(
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    opts?: CollectiveOptions,
  ): Promise<void> {
    return this.global.allToAll(input, output, opts);
  }

  /** Over the global communicator. */
  send(buf: CollectiveBuffer, peer: number, tag?: number, opts?: CollectiveOptions): Promise<void> {
    return this.global.send(buf, peer, tag, opts);
  }

  /** Over the global communicator. */
  recv(buf: CollectiveBuffer, peer: number, tag?: number, opts?: CollectiveOptions): Promise<void> {
    return this.global.recv(buf, peer, tag, opts);
  }

  /** Local barrier, leaders barrier, local barrier. */
  async barrier(opts?: CollectiveOptions): Promise<void> {
    await this.local.barrier(opts);
    if (this.leaders) await this.leaders.barrier(opts);
    await this.local.barrier(opts);
  }

  /** Split both the node-local and the global communicator; the result is hierarchical too. */
  async split(color: number, key?: number): Promise<Communicator | null> {
    const k = key ?? this.rank;
    const local = await this.local.split(color, k);
    const global = await this.global.split(color, k);
    if (local === null || global === null) {
      if ((local === null) !== (global === null)) {
        throw new CollectiveError(
          "protocol",
          "split",
          this.name,
          undefined,
          "the local and global splits disagree",
        );
      }
      return null;
    }
    return await createHierarchical(local, global);
  }

  /** Close the leaders' group and the global communicator (the local one stays the caller's). */
  async close(): Promise<void> {
    await this.leaders?.close();
    await this.global.close();
  }
}
