// One rank of a TCP world under LOOM_NET_FAULT, spawned as its own process by net_fault_test.ts:
//   deno run -A net_fault_rank.ts <scenario> <rank> <size> <masterPort>
// It prints one JSON line as its last line: what it caught (if anything), when, and for the
// "ops" scenario a digest of every result and how long the ops took.
import { connectTcp } from "../../../collectives/tcp.ts";
import { CollectiveError, type Communicator } from "../../../collectives/communicator.ts";

const [scenario, rankS, sizeS, portS] = Deno.args;
const rank = Number(rankS), size = Number(sizeS), port = Number(portS);

/** Non-integer floats: a sum folded in another order would show in the last bits. */
function fill(n: number, salt: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(rank * 7.31 + i * 0.017 + salt) * (1 + rank * 0.1);
  return a;
}

async function digest(buf: ArrayBufferView): Promise<string> {
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice();
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(h.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

function caught(e: unknown): Record<string, unknown> {
  if (!(e instanceof CollectiveError)) throw e;
  return { reason: e.reason, op: e.op, peer: e.peer, message: e.message };
}

/** Every kind of op, small (mesh or lane) and large (ring), each result digested. */
async function ops(comm: Communicator): Promise<Record<string, unknown>> {
  const digests: string[] = [];
  const t0 = performance.now();
  // Ten small all-reduces in a row: each waits for every rank's part.
  for (let k = 0; k < 10; k++) {
    const b = fill(1000, k);
    await comm.allReduce(b);
    digests.push(await digest(b));
  }
  const small = performance.now() - t0;
  for (const n of [7, 4099, 300_001]) {
    const b = fill(n, n);
    await comm.allReduce(b);
    digests.push(await digest(b));
    const out = new Float32Array(n);
    await comm.reduceScatter(fill(n * size, 1), out);
    digests.push(await digest(out));
    const all = new Float32Array(n * size);
    await comm.allGather(fill(n, 2), all);
    digests.push(await digest(all));
    const c = fill(n, 3);
    await comm.broadcast(c, 1);
    digests.push(await digest(c));
  }
  const ms = performance.now() - t0;
  return { digests, small, ms };
}

/**
 * All-reduces, small (lanes where there are) and large (ring) by turns, until one fails: the
 * test drops a connection after some frames.
 */
async function loop(comm: Communicator): Promise<Record<string, unknown>> {
  const big = new Float32Array(1 << 18), little = new Float32Array(256);
  let done = 0;
  try {
    for (; done < 2000; done++) {
      await comm.allReduce(done % 2 === 0 ? big : little, "sum", { timeoutMs: 20_000 });
    }
    return { caught: null, done };
  } catch (e) {
    const at = Date.now();
    // Stay a moment, so that the others hear from this rank before it leaves.
    await new Promise((r) => setTimeout(r, 300));
    return { caught: caught(e), at, done };
  }
}

/** One small all-reduce with a 1 s timeout (the test delays a rank's frames beyond it). */
async function slow(comm: Communicator): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  try {
    await comm.allReduce(fill(1000, 0), "sum", { timeoutMs: 1_000 });
    return { caught: null, ms: performance.now() - t0 };
  } catch (e) {
    return { caught: caught(e), ms: performance.now() - t0 };
  }
}

const comm = await connectTcp({
  rank,
  size,
  masterAddr: "127.0.0.1",
  masterPort: port,
  opTimeoutMs: 20_000,
});
const scenarios: Record<string, (c: Communicator) => Promise<Record<string, unknown>>> = {
  ops,
  loop,
  slow,
};
const result = await scenarios[scenario!]!(comm);
await comm.close();
console.log(JSON.stringify({ rank, ...result }));
