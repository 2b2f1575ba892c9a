// TCP communicator across separate processes on loopback. Each world runs one child program per
// rank (_tcp/rank.ts) that performs a battery of ops and checks every result against a serial
// reference computed from all ranks' inputs; this file checks what the children report.
import assert from "node:assert/strict";
import { freeLoopbackPort as freePort } from "../../collectives/launch.ts";

const RANK = new URL("./_tcp/rank.ts", import.meta.url).pathname;

interface Report {
  rank: number;
  checks: number;
  failures: string[];
  digests?: string[];
  caught?: {
    reason: string;
    op: string;
    group?: string;
    peer?: number;
    message: string;
  } | null;
  after?: string | null;
  ms?: number;
}

function spawn(
  scenario: string,
  rank: number,
  size: number,
  port: number,
  env: Record<string, string> = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", RANK, scenario, String(rank), String(size), String(port)],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
}

async function report(child: Deno.ChildProcess, what: string): Promise<Report> {
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${what} exited with ${out.code}:\n${stdout}\n${stderr}`);
  const last = stdout.trim().split("\n").at(-1)!;
  return JSON.parse(last) as Report;
}

async function runWorld(
  scenario: string,
  size: number,
  env: Record<string, string> = {},
): Promise<Report[]> {
  const port = freePort();
  const children = Array.from({ length: size }, (_, r) => spawn(scenario, r, size, port, env));
  return await Promise.all(children.map((c, r) => report(c, `rank ${r} of ${size}`)));
}

function checkOps(reports: Report[], size: number): void {
  assert.equal(reports.length, size);
  for (const r of reports) {
    assert.deepEqual(r.failures, [], `rank ${r.rank} of ${size}`);
    assert.ok(r.checks >= 60, `rank ${r.rank} ran only ${r.checks} checks`);
  }
  // Floating-point sums of non-integers: every rank must hold the very same bits.
  for (const r of reports) assert.deepEqual(r.digests, reports[0]!.digests);
}

const opts = { sanitizeOps: true, sanitizeResources: true };

Deno.test({
  name: "every op over TCP matches the serial reference in worlds of 1, 2 and 3 processes",
  ...opts,
  async fn() {
    const worlds = await Promise.all([1, 2, 3].map((n) => runWorld("ops", n)));
    worlds.forEach((w, i) => checkOps(w, i + 1));
  },
});

Deno.test({
  name: "without lanes, every op over TCP still matches the serial reference (2 and 4 processes)",
  ...opts,
  async fn() {
    const worlds = await Promise.all([2, 4].map((n) => runWorld("ops-mesh", n)));
    checkOps(worlds[0]!, 2);
    checkOps(worlds[1]!, 4);
  },
});

Deno.test({
  name: "with a job secret (LOOM_SECRET), every op over TCP still matches the serial reference",
  ...opts,
  async fn() {
    const env = { LOOM_SECRET: "a secret shared by every rank of this job" };
    const worlds = await Promise.all([
      runWorld("ops", 2, env),
      runWorld("ops", 3, env),
      runWorld("ops-mesh", 3, env),
    ]);
    checkOps(worlds[0]!, 2);
    checkOps(worlds[1]!, 3);
    checkOps(worlds[2]!, 3);
  },
});

Deno.test({
  name: "a small all-reduce (lanes) against a large one (mesh ring) rejects on every rank",
  ...opts,
  async fn() {
    const reports = await runWorld("paths", 3);
    for (const r of reports) {
      assert.equal(r.caught?.reason, "mismatch", JSON.stringify(r));
      assert.equal(r.caught?.op, "allReduce");
      assert.ok(r.ms! < 10_000, `rejected after ${r.ms} ms`);
    }
  },
});

Deno.test({
  name: "every op over TCP matches the serial reference in worlds of 4 and 8 processes",
  ...opts,
  async fn() {
    checkOps(await runWorld("ops", 4), 4);
    checkOps(await runWorld("ops", 8), 8);
  },
});

for (const [scenario, what] of [["kill", "large"], ["killsmall", "small (lanes)"]]) {
  Deno.test({
    name: `killing a process mid-all-reduce (${what}) makes every survivor reject naming it`,
    ...opts,
    async fn() {
      const size = 3, victim = size - 1;
      const port = freePort();
      const children = Array.from({ length: size }, (_, r) => spawn(scenario!, r, size, port));
      const survivors = children.slice(0, victim).map((c, r) => report(c, `survivor ${r}`));
      // Wait until the victim has finished two all-reduces, then kill it mid-loop.
      const v = children[victim]!;
      const reader = v.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      while (!seen.includes("GO")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      assert.ok(seen.includes("GO"), `the victim never got going: ${seen}`);
      const killedAt = performance.now();
      v.kill("SIGKILL");
      await reader.cancel();
      await v.stderr.cancel();
      await v.status;
      const reports = await Promise.all(survivors);
      const elapsed = performance.now() - killedAt;
      // The op timeout is 20 s; a lost socket must be noticed long before it.
      assert.ok(elapsed < 10_000, `survivors took ${elapsed} ms to notice`);
      for (const r of reports) {
        assert.equal(r.caught?.reason, "peer-lost", JSON.stringify(r));
        assert.equal(r.caught?.op, "allReduce");
        assert.equal(r.caught?.group, "world");
        assert.equal(r.caught?.peer, victim);
        assert.match(r.caught!.message, /rank 2/);
      }
    },
  });
}

Deno.test({
  name: "ranks that pass different sizes all reject with a mismatch instead of hanging",
  ...opts,
  async fn() {
    const reports = await runWorld("mismatch", 3);
    for (const r of reports) {
      assert.equal(r.caught?.reason, "mismatch", JSON.stringify(r));
      assert.equal(r.caught?.op, "allReduce");
      assert.match(r.caught!.message, /10 float32/);
      assert.match(r.caught!.message, /11 float32/);
      // The group is unusable afterwards, and says so at once.
      assert.equal(r.after, "mismatch");
    }
  },
});

Deno.test({
  name: "a rank that never joins the op makes the others time out naming it",
  ...opts,
  async fn() {
    const reports = await runWorld("stall", 3);
    for (const r of reports.slice(0, 2)) {
      assert.equal(r.caught?.reason, "timeout", JSON.stringify(r));
      assert.equal(r.caught?.peer, 2);
      assert.match(r.caught!.message, /within 1000 ms/);
      // Timeout of 1 s: rejected around then (a rank may hear of its peer's timeout a little
      // before its own fires, as the ranks start the op at slightly different times).
      assert.ok(r.ms! >= 500 && r.ms! < 5_000, `rejected after ${r.ms} ms`);
    }
  },
});
