// Rank module for the fault tests. Every outcome is returned as data so the parent can check
// what each survivor saw.
import { CollectiveError, type Communicator } from "../../../collectives/mod.ts";

export interface FaultsData {
  scenario:
    | "kill-mid-op"
    | "mismatch-size"
    | "mismatch-op"
    | "stall"
    | "exit-early"
    | "bad-args"
    | "p2p-tags"
    | "p2p-timeout"
    | "close";
  victim?: number;
  timeoutMs?: number;
}

export interface Outcome {
  ok: boolean;
  name?: string;
  reason?: string;
  peer?: number;
  op?: string;
  message?: string;
  ms?: number;
}

function outcome(err: unknown, t0: number): Outcome {
  if (err instanceof CollectiveError) {
    return {
      ok: false,
      name: err.name,
      reason: err.reason,
      peer: err.peer,
      op: err.op,
      message: err.message,
      ms: performance.now() - t0,
    };
  }
  const e = err as Error;
  return { ok: false, name: e.name, message: e.message, ms: performance.now() - t0 };
}

async function attempt(f: () => Promise<unknown>): Promise<Outcome> {
  const t0 = performance.now();
  try {
    await f();
    return { ok: true, ms: performance.now() - t0 };
  } catch (err) {
    return outcome(err, t0);
  }
}

export async function main(comm: Communicator, data: FaultsData): Promise<unknown> {
  const r = comm.rank, n = comm.size;
  const timeoutMs = data.timeoutMs ?? 5_000;
  switch (data.scenario) {
    case "kill-mid-op": {
      // Everyone loops on big all-reduces; the parent terminates the victim while they run.
      const buf = new Float32Array(1 << 18);
      await comm.barrier();
      (self as unknown as { postMessage(m: unknown): void }).postMessage({ ready: true });
      for (;;) {
        const o = await attempt(() => comm.allReduce(buf, "sum", { timeoutMs }));
        if (!o.ok) {
          // The group stays failed: a later op rejects at once instead of hanging.
          const again = await attempt(() => comm.barrier({ timeoutMs }));
          return { first: o, again };
        }
      }
    }
    case "mismatch-size": {
      const first = await attempt(() =>
        comm.allReduce(new Float32Array(r === 1 ? 9 : 8), "sum", { timeoutMs })
      );
      // A mismatch does not break the group: the next matching op works.
      const buf = new Int32Array([r + 1]);
      const next = await attempt(() => comm.allReduce(buf, "sum", { timeoutMs }));
      // Again with one rank on the large path and the others on the small one.
      const second = await attempt(() =>
        comm.allReduce(new Float32Array(r === 0 ? 100_000 : 8), "sum", { timeoutMs })
      );
      // Staged ops after that still see the right halves of every rank's slot.
      const big = new Int32Array(50_001).fill(r + 1);
      const after: number[] = [];
      for (let i = 0; i < 3; i++) {
        await comm.allReduce(big, "max", { timeoutMs });
        const g = new Int32Array(3 * n);
        await comm.allGather(new Int32Array(3).fill(r + i), g, { timeoutMs });
        after.push(big[50_000]!, g[3 * n - 1]!);
      }
      return { first, next, sum: buf[0], second, after };
    }
    case "mismatch-op": {
      const buf = new Float32Array(4);
      const first = await attempt(() =>
        r === n - 1
          ? comm.broadcast(buf, 0, { timeoutMs })
          : comm.allReduce(buf, "sum", { timeoutMs })
      );
      return { first };
    }
    case "stall": {
      // The victim never joins: the others time out naming it.
      if (r === data.victim) return { stalled: true };
      return {
        first: await attempt(() => comm.allReduce(new Float32Array(16), "sum", { timeoutMs })),
      };
    }
    case "exit-early": {
      if (r === data.victim) return { exited: true };
      await new Promise((res) => setTimeout(res, 50));
      return { first: await attempt(() => comm.barrier({ timeoutMs })) };
    }
    case "p2p-tags": {
      // Rank 0 sends tags 1, 2 (long: it streams), 3; rank 1 asks for 3, then 2, then 1, and
      // then for tag 4 with the wrong length.
      const long = 40_000;
      if (r === 0) {
        await comm.send(new Float32Array([1, 1]), 1, 1, { timeoutMs });
        await comm.send(new Float32Array(long).fill(2), 1, 2, { timeoutMs });
        await comm.send(new Float32Array([3, 3, 3]), 1, 3, { timeoutMs });
        await comm.send(new Int32Array(4), 1, 4, { timeoutMs });
        await comm.barrier({ timeoutMs });
        return {};
      }
      const three = new Float32Array(3), two = new Float32Array(long), one = new Float32Array(2);
      await comm.recv(three, 0, 3, { timeoutMs });
      await comm.recv(two, 0, 2, { timeoutMs });
      await comm.recv(one, 0, 1, { timeoutMs });
      const wrong = await attempt(() => comm.recv(new Int32Array(5), 0, 4, { timeoutMs }));
      await comm.barrier({ timeoutMs });
      return {
        got: [Array.from(three), two.every((v) => v === 2), Array.from(one)],
        wrong,
      };
    }
    case "p2p-timeout": {
      if (r === 0) {
        // Stay alive but never send.
        await new Promise((res) => setTimeout(res, 700));
        return {};
      }
      return { first: await attempt(() => comm.recv(new Int32Array(3), 0, 0, { timeoutMs })) };
    }
    case "close": {
      if (r === 0) {
        await new Promise((res) => setTimeout(res, 50));
        await comm.close();
        const after = await attempt(() => comm.barrier({ timeoutMs }));
        await new Promise((res) => setTimeout(res, 300));
        return { after };
      }
      return { first: await attempt(() => comm.barrier({ timeoutMs })) };
    }
    case "bad-args": {
      const f = new Float32Array(6);
      const checks: Record<string, Outcome> = {
        wrongDtype: await attempt(() => comm.allReduce(f, "sum", { dtype: "int32" })),
        noDtype: await attempt(() => comm.allReduce(new Uint16Array(2))),
        badOp: await attempt(() => comm.allReduce(f, "prod" as "sum")),
        badRoot: await attempt(() => comm.broadcast(f, n)),
        badGather: await attempt(() => comm.allGather(f, new Float32Array(6 * n + 1))),
        mixedTypes: await attempt(() => comm.allGather(f, new Int32Array(6 * n))),
        badScatter: await attempt(() => comm.reduceScatter(new Float32Array(5), f)),
        badAllToAll: await attempt(() =>
          comm.allToAll(new Float32Array(n + 1), new Float32Array(n + 1))
        ),
        selfSend: await attempt(() => comm.send(f, r)),
        badPeer: await attempt(() => comm.recv(f, -1)),
        badTag: await attempt(() => comm.send(f, (r + 1) % n, 1.5)),
        badTimeout: await attempt(() => comm.barrier({ timeoutMs: -1 })),
        badColor: await attempt(() => comm.split(0.5)),
      };
      // Nothing above communicated: the group still works.
      const buf = new Int32Array([1]);
      await comm.allReduce(buf);
      return { checks, sum: buf[0] };
    }
  }
}
