// One rank of a TCP world for the wire tests, spawned as its own process:
//   deno run -A secure_rank.ts <scenario> <rank> <size> <masterPort> [lanes: 1 | 0]
// The job secret comes from LOOM_SECRET (connectTcp's default). It prints "LISTEN <port>" on
// stderr once it listens, and one JSON report as the last line of stdout.
//   battery: every op checked against a serial reference (battery.ts)
//   train:   a loop of all-reduces, each checked against the serial sum, until rank 0 reads a
//            line on stdin (it tells the others through the all-reduce itself)
import { connectTcp } from "../../../collectives/tcp.ts";
import type { Communicator } from "../../../collectives/communicator.ts";
import { main as battery } from "./battery.ts";

const [scenario, rankS, sizeS, portS, lanesS] = Deno.args;
const rank = Number(rankS), size = Number(sizeS), port = Number(portS);

function lanesOf(comm: Communicator): number {
  const t = (comm as unknown as { t?: { lanes?: unknown[] } }).t;
  return (t?.lanes ?? []).filter((l) => l !== null && l !== undefined).length;
}

/** Small integers, so that every sum is exact. */
function value(r: number, it: number, i: number): number {
  return ((r * 7 + it * 3 + i * 13) % 31) - 15;
}

async function train(comm: Communicator): Promise<Record<string, unknown>> {
  let stop = false;
  if (rank === 0) {
    (async () => {
      const reader = Deno.stdin.readable.getReader();
      await reader.read();
      stop = true;
      reader.releaseLock();
    })();
  }
  const failures: string[] = [];
  const started = performance.now();
  let it = 0;
  for (;; it++) {
    // Mostly small all-reduces (lanes when they are open), every 8th a large one (mesh ring).
    const n = it % 8 === 7 ? 70_001 : 257;
    const b = new Float32Array(n + 1);
    for (let i = 0; i < n; i++) b[i] = value(rank, it, i);
    b[n] = rank === 0 && (stop || performance.now() - started > 60_000) ? 1 : 0;
    await comm.allReduce(b, "sum", { timeoutMs: 20_000 });
    for (let i = 0; i < n; i++) {
      let want = 0;
      for (let r = 0; r < size; r++) want += value(r, it, i);
      if (b[i] !== want) {
        failures.push(`iteration ${it}: element ${i} is ${b[i]}, expected ${want}`);
        break;
      }
    }
    if (it === 0) console.error("TRAINING");
    if (b[n]! > 0) break;
  }
  return { iterations: it + 1, failures, checks: it + 1 };
}

const comm = await connectTcp({
  rank,
  size,
  masterAddr: "127.0.0.1",
  masterPort: port,
  lanes: lanesS !== "0",
  onListen: (p) => console.error(`LISTEN ${p}`),
});
const lanes = lanesOf(comm);
const result = scenario === "train"
  ? await train(comm)
  : await battery(comm, { sizes: [0, 1, 7, 4099, 30_001] }) as unknown as Record<string, unknown>;
await comm.close();
console.log(JSON.stringify({ ...result, rank, lanes }));
