// A rank module (`main(comm, data)`) that runs every op on whatever communicator it is given and
// checks each result against a serial reference; used by the hierarchical and launch tests.
import type { Communicator, ReduceOp } from "../../../collectives/communicator.ts";

function value(r: number, i: number): number {
  return ((r * 5 + i * 11) % 29) - 14;
}

function fill(n: number, r: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = value(r, i);
  return a;
}

/** What a rank reports. */
export interface BatteryReport {
  rank: number;
  size: number;
  transport: string;
  checks: number;
  failures: string[];
}

/**
 * Run the battery.
 *
 * @param comm the communicator under test
 * @param data `{ sizes }`: element counts to try
 * @returns the report
 */
export async function main(
  comm: Communicator,
  data: { sizes?: number[] } | null,
): Promise<BatteryReport> {
  const { rank, size } = comm;
  const all = Array.from({ length: size }, (_, i) => i);
  let checks = 0;
  const failures: string[] = [];
  const expect = (what: string, got: ArrayLike<number>, want: (i: number) => number) => {
    checks++;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== want(i)) {
        failures.push(`${what}: element ${i} is ${got[i]}, expected ${want(i)}`);
        return;
      }
    }
  };
  const serial = (op: ReduceOp, i: number, ranks = all) => {
    let acc = value(ranks[0]!, i);
    for (const r of ranks.slice(1)) {
      const x = value(r, i);
      acc = op === "max" ? Math.max(acc, x) : op === "min" ? Math.min(acc, x) : acc + x;
    }
    return op === "avg" ? Math.fround(acc / ranks.length) : acc;
  };
  for (const n of data?.sizes ?? [0, 1, 7, 30_001]) {
    for (const op of ["sum", "max", "min", "avg"] as ReduceOp[]) {
      const b = fill(n, rank);
      await comm.allReduce(b, op);
      expect(`allReduce ${op} n=${n}`, b, (i) => serial(op, i));
    }
    const root = size - 1;
    const b = rank === root ? fill(n, root) : new Float32Array(n);
    await comm.broadcast(b, root);
    expect(`broadcast n=${n}`, b, (i) => value(root, i));
    const c = fill(n, rank);
    await comm.reduce(c, 0);
    expect(`reduce n=${n}`, c, (i) => (rank === 0 ? serial("sum", i) : value(rank, i)));
    const g = new Float32Array(n * size);
    await comm.allGather(fill(n, rank), g);
    expect(`allGather n=${n}`, g, (k) => value(Math.floor(k / n), k % n));
    const rs = new Float32Array(n);
    await comm.reduceScatter(fill(n * size, rank), rs);
    expect(`reduceScatter n=${n}`, rs, (j) => serial("sum", rank * n + j));
    const a2a = new Float32Array(n * size);
    await comm.allToAll(fill(n * size, rank), a2a);
    expect(`allToAll n=${n}`, a2a, (k) => value(Math.floor(k / n), rank * n + (k % n)));
    if (size > 1) {
      const got = new Float32Array(n);
      const prev = (rank + size - 1) % size;
      const p = comm.recv(got, prev, 3);
      await comm.send(fill(n, rank), (rank + 1) % size, 3);
      await p;
      expect(`send/recv n=${n}`, got, (i) => value(prev, i));
    }
  }
  const i32 = new Int32Array([rank * 1000, -rank]);
  await comm.allReduce(i32, "max");
  expect("int32 max", i32, (i) => (i === 0 ? (size - 1) * 1000 : 0));
  await comm.barrier();
  // Ranks 1.. in reverse order (rank 0 joins no group).
  const sub = await comm.split(rank === 0 ? -1 : 1, -rank);
  checks++;
  if ((sub === null) !== (rank === 0)) failures.push(`split: rank ${rank} got ${sub}`);
  if (sub) {
    const members = all.slice(1).reverse();
    if (sub.rank !== members.indexOf(rank)) failures.push(`split: rank ${sub.rank}`);
    const b = fill(5, rank);
    await sub.allReduce(b);
    expect("sub allReduce", b, (i) => serial("sum", i, members));
    const g = new Float32Array(2 * sub.size);
    await sub.allGather(fill(2, rank), g);
    expect("sub allGather", g, (k) => value(members[Math.floor(k / 2)]!, k % 2));
    await sub.close();
  }
  return { rank, size, transport: comm.transport, checks, failures };
}
