// LOOM_NET_FAULT: its grammar, and TCP worlds of separate processes on loopback whose connection
// from one rank to another is dropped or delayed (_tcp/net_fault_rank.ts runs each rank).
import assert from "node:assert/strict";
import {
  NET_FAULT_ENV,
  netFaults,
  parseNetFaults,
  peerFaults,
} from "../../collectives/_net_fault.ts";
import { connectTcp } from "../../collectives/tcp.ts";
import { freeLoopbackPort as freePort } from "../../collectives/launch.ts";

const RANK = new URL("./_tcp/net_fault_rank.ts", import.meta.url).pathname;

interface Report {
  rank: number;
  caught?: { reason: string; op: string; peer?: number; message: string } | null;
  at?: number;
  done?: number;
  digests?: string[];
  small?: number;
  ms?: number;
}

/** Run a world of `size` rank processes with `fault` as LOOM_NET_FAULT; every one must exit 0. */
async function world(scenario: string, size: number, fault: string): Promise<Report[]> {
  const port = freePort();
  const runs = Array.from({ length: size }, async (_, r) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", RANK, scenario, String(r), String(size), String(port)],
      env: { NO_COLOR: "1", [NET_FAULT_ENV]: fault },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `rank ${r} exited with ${out.code}:\n${stdout}\n${stderr}`);
    return JSON.parse(stdout.trim().split("\n").at(-1)!) as Report;
  });
  return await Promise.all(runs);
}

const opts = { sanitizeOps: true, sanitizeResources: true };

Deno.test("LOOM_NET_FAULT's grammar: drops and delays, several at once, and clear refusals", () => {
  assert.deepEqual(parseNetFaults(""), []);
  assert.deepEqual(parseNetFaults(" drop:1-2@40 , delay: 0-1 :2.5,delay:1-0:0"), [
    { kind: "drop", from: 1, to: 2, frames: 40 },
    { kind: "delay", from: 0, to: 1, ms: 2.5 },
    { kind: "delay", from: 1, to: 0, ms: 0 },
  ]);
  for (const bad of ["drop:1-2", "drop:1@2", "delay:0-1", "delay:0-1:-5", "cut:0-1@3", "x", ","]) {
    assert.throws(() => parseNetFaults(bad), (e: Error) => {
      assert.ok(e instanceof TypeError, bad);
      assert.match(e.message, /LOOM_NET_FAULT: ".*" is not a fault; give a comma-separated list/);
      assert.match(e.message, /"drop:A-B@N"/);
      return true;
    });
  }
  assert.throws(() => parseNetFaults("drop:3-3@1"), /connects rank 3 to itself/);
  assert.throws(() => parseNetFaults("delay:0-1:5,delay:0-1:6"), /given twice/);
  // A drop and a delay on one pair go together; each rank keeps the faults it sends.
  const faults = parseNetFaults("drop:0-1@3,delay:0-1:7,delay:2-0:1");
  assert.deepEqual(peerFaults(faults, 0, 3), [
    undefined,
    { dropAfter: 3, delayMs: 7, sent: 0 },
    undefined,
  ]);
  assert.equal(peerFaults(faults, 1, 3), null);
  assert.throws(
    () => peerFaults(faults, 0, 2),
    /delay:2-0 names rank 2, but the world has 2 ranks \(0\.\.1\)/,
  );
});

Deno.test({
  name: "connectTcp reads LOOM_NET_FAULT and refuses a malformed one before it joins",
  ...opts,
  async fn() {
    const before = Deno.env.get(NET_FAULT_ENV);
    try {
      Deno.env.set(NET_FAULT_ENV, "delay:0-1:5,delay:2-0:1");
      const f = netFaults(0, 3);
      assert.deepEqual(f.peers?.[1], { dropAfter: undefined, delayMs: 5, sent: 0 });
      assert.equal(f.lanes, false, "with a delay anywhere, no rank opens lanes");
      assert.equal(netFaults(1, 3).peers, null);
      Deno.env.set(NET_FAULT_ENV, "drop:0-1@3");
      assert.equal(netFaults(1, 3).lanes, true);
      Deno.env.set(NET_FAULT_ENV, "drop:0-1");
      // Nothing listens on this port: the refusal comes before any connection is tried.
      await assert.rejects(
        connectTcp({ rank: 1, size: 2, masterAddr: "127.0.0.1", masterPort: freePort() }),
        (e: Error) => e instanceof TypeError && /"drop:0-1" is not a fault/.test(e.message),
      );
      Deno.env.set(NET_FAULT_ENV, "drop:0-5@1");
      await assert.rejects(
        connectTcp({ rank: 1, size: 2, masterAddr: "127.0.0.1", masterPort: freePort() }),
        RangeError,
      );
    } finally {
      if (before === undefined) Deno.env.delete(NET_FAULT_ENV);
      else Deno.env.set(NET_FAULT_ENV, before);
    }
  },
});

for (const [frames, path] of [[40, "a ring frame on the mesh"], [44, "a small op's lane frame"]]) {
  Deno.test({
    name: `drop:1-2@${frames} (${path}): both ends fail naming each other, the third rank ` +
      `names one of them, within the op timeout`,
    ...opts,
    async fn() {
      const t0 = performance.now();
      const reports = await world("loop", 3, `drop:1-2@${frames}`);
      const elapsed = performance.now() - t0;
      const [r0, r1, r2] = reports;
      // Rank 1 sends rank 2 five data frames per pair of ops (four ring frames, one lane frame):
      // the 41st is the first of op 16 (a ring), the 45th is op 17's (a lane).
      assert.equal(r1!.done, frames === 40 ? 16 : 17, JSON.stringify(r1));
      assert.equal(r1!.caught?.reason, "peer-lost", JSON.stringify(r1));
      assert.equal(r1!.caught?.peer, 2);
      assert.match(r1!.caught!.message, /lost rank 2: LOOM_NET_FAULT dropped the connection/);
      assert.equal(r2!.caught?.reason, "peer-lost", JSON.stringify(r2));
      assert.equal(r2!.caught?.peer, 1);
      assert.match(r2!.caught!.message, /lost rank 1/);
      assert.equal(r0!.caught?.reason, "peer-lost", JSON.stringify(r0));
      assert.ok(r0!.caught?.peer === 1 || r0!.caught?.peer === 2, JSON.stringify(r0));
      // The op timeout is 20 s: every rank hears of the drop long before it.
      const ats = reports.map((r) => r.at!);
      const spread = Math.max(...ats) - Math.min(...ats);
      assert.ok(spread < 5_000, `the last rank failed ${spread} ms after the first`);
      assert.ok(elapsed < 20_000, `the world took ${elapsed} ms`);
      console.log(`  drop after ${frames} frames: every rank failed within ${spread} ms`);
    },
  });
}

Deno.test({
  name: "delay:0-1:30 below the timeout: bit-identical results on every rank, measurably slower",
  ...opts,
  async fn() {
    const plain = await world("ops", 3, "");
    const slow = await world("ops", 3, "delay:0-1:30");
    for (const r of [...plain, ...slow]) assert.equal(r.digests!.length, 22);
    for (let r = 0; r < 3; r++) {
      assert.deepEqual(slow[r]!.digests, plain[r]!.digests, `rank ${r}`);
      // The all-reduces' sums are the same bits on every rank, delayed or not.
      assert.deepEqual(slow[r]!.digests!.slice(0, 11), slow[0]!.digests!.slice(0, 11));
    }
    // Ten all-reduces in a row, each waiting for rank 0's part held 30 ms on its way to rank 1.
    const fast = plain[1]!.small!, held = slow[1]!.small!;
    assert.ok(held >= 10 * 30 * 0.9, `ten delayed all-reduces took ${held} ms`);
    assert.ok(held > fast + 200, `delayed ${held} ms against ${fast} ms`);
    console.log(
      `  10 small all-reduces: ${fast.toFixed(1)} ms plain, ${held.toFixed(1)} ms delayed; ` +
        `all ops: ${plain[1]!.ms!.toFixed(0)} ms against ${slow[1]!.ms!.toFixed(0)} ms`,
    );
  },
});

Deno.test({
  name: "delay:1-0:3000 beyond a 1 s timeout: rank 0 times out naming rank 1, and nothing hangs",
  ...opts,
  async fn() {
    const t0 = performance.now();
    const [r0, r1] = await world("slow", 2, "delay:1-0:3000");
    const elapsed = performance.now() - t0;
    assert.equal(r0!.caught?.reason, "timeout", JSON.stringify(r0));
    assert.equal(r0!.caught?.peer, 1);
    assert.match(r0!.caught!.message, /no result within 1000 ms \(call #1, waiting for rank 1\)/);
    assert.ok(r0!.ms! >= 900 && r0!.ms! < 3_000, `rank 0 failed after ${r0!.ms} ms`);
    // Rank 1 had rank 0's part at once; it finished, or heard of rank 0's timeout.
    assert.ok(r1!.caught === null || r1!.caught?.reason === "timeout", JSON.stringify(r1));
    assert.ok(elapsed < 15_000, `the world took ${elapsed} ms`);
    console.log(
      `  rank 0 timed out after ${r0!.ms!.toFixed(0)} ms; the world took ${elapsed.toFixed(0)} ms`,
    );
  },
});
