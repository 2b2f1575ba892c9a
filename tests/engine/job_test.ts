// train.ts as a job of several processes or nodes: torchrun's environment, node flags, lost
// ranks and restarts, signals. Each run is a real `deno run train.ts` process (tiny model, a
// few seconds), compared with the same layout run as Workers of one process.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mpiAvailable } from "../../collectives/mpi.ts";
import { main } from "../../train.ts";
import { freeLoopbackPort as freePort } from "../../collectives/launch.ts";

const TRAIN = new URL("../../train.ts", import.meta.url).pathname;
const TINY = ["--dim", "16", "--layers", "2", "--heads", "2", "--batch", "8", "--eval-every", "0"];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function tmp(): string {
  return Deno.makeTempDirSync({ prefix: "loom-job-" });
}

/** Start `deno run -A train.ts args` (optionally under `prefix`, e.g. `ip netns exec ns`). */
function start(args: string[], env: Record<string, string> = {}, prefix: string[] = []) {
  const cmd = prefix.length > 0 ? prefix[0]! : Deno.execPath();
  const all = [...prefix.slice(1), ...(prefix.length > 0 ? [Deno.execPath()] : [])]
    .concat(["run", "-A", TRAIN, "--quiet", ...args]);
  const child = new Deno.Command(cmd, {
    args: all,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const done = child.output().then((o): Run => ({
    code: o.code,
    stdout: new TextDecoder().decode(o.stdout),
    stderr: new TextDecoder().decode(o.stderr),
  }));
  return { child, done };
}

async function run(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return await start(args, env).done;
}

function losses(dir: string): number[] {
  return Deno.readTextFileSync(`${dir}/metrics.jsonl`).trim().split("\n").map((l) => JSON.parse(l))
    .filter((r) => r.kind === undefined).map((r) => r.loss);
}

function torchrunEnv(rank: number, size: number, port: number): Record<string, string> {
  return {
    RANK: String(rank),
    WORLD_SIZE: String(size),
    LOCAL_RANK: String(rank),
    LOCAL_WORLD_SIZE: String(size),
    MASTER_ADDR: "127.0.0.1",
    MASTER_PORT: String(port),
  };
}

async function expectOk(r: Run, what: string): Promise<void> {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${r.stderr}\n${r.stdout}`);
  await Promise.resolve();
}

function slurmEnv(rank: number, size: number, port: number): Record<string, string> {
  return {
    SLURM_PROCID: String(rank),
    SLURM_NTASKS: String(size),
    SLURM_LOCALID: String(rank),
    SLURM_NODEID: "0",
    SLURM_NNODES: "1",
    SLURM_STEP_TASKS_PER_NODE: String(size),
    SLURM_STEP_NODELIST: "localhost",
    MASTER_PORT: String(port),
  };
}

for (
  const [launcher, envOf] of [["torchrun", torchrunEnv], ["srun (SLURM)", slurmEnv]] as const
) {
  Deno.test(`train.ts under ${launcher}'s environment (2 processes over TCP) equals --dp 2 as Workers`, async () => {
    const dir = tmp();
    const args = [...TINY, "--steps", "12"];
    await expectOk(await run([...args, "--dp", "2", "--out", `${dir}/workers`]), "--dp 2");
    const port = freePort();
    const ranks = await Promise.all(
      [0, 1].map((r) => run([...args, "--out", `${dir}/procs`], envOf(r, 2, port))),
    );
    for (const [r, x] of ranks.entries()) await expectOk(x, `rank ${r}`);
    assert.deepEqual(losses(`${dir}/procs`), losses(`${dir}/workers`));
    const summary = JSON.parse(Deno.readTextFileSync(`${dir}/procs/summary.json`));
    assert.equal(summary.layout.dp, 2, "dp fills the job's world");
    assert.equal(summary.memory.per_rank.length, 2);
    Deno.removeSync(dir, { recursive: true });
  });
}

Deno.test("train.ts on 2 nodes of 2 Workers (node flags, tp 2 inside each node) tracks 4 Workers", async () => {
  const dir = tmp();
  const args = [...TINY, "--steps", "10", "--tp", "2"];
  await expectOk(await run([...args, "--dp", "2", "--out", `${dir}/one`]), "one process");
  const port = String(freePort());
  const nodes = await Promise.all([0, 1].map((n) =>
    run([
      ...args,
      "--nnodes=2",
      `--node-rank=${n}`,
      "--nproc-per-node=2",
      "--master-addr=127.0.0.1",
      `--master-port=${port}`,
      "--out",
      `${dir}/nodes`,
    ])
  ));
  for (const [n, x] of nodes.entries()) await expectOk(x, `node ${n}`);
  const a = losses(`${dir}/one`), b = losses(`${dir}/nodes`);
  assert.equal(a.length, b.length);
  // Across nodes the data-parallel sum folds in another order: float32 rounding only.
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) < 1e-5, `step ${i + 1}`);
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("a job whose size disagrees with the layout is refused before it starts", async () => {
  const env = torchrunEnv(0, 2, 29500);
  await assert.rejects(
    main([...TINY, "--dp", "3"], { print: false, env }),
    /tp 1 x pp 1 x dp 3 = 3 ranks, but the job has 2 \(torchrun's world of 2\)/,
  );
  await assert.rejects(
    main([...TINY, "--tp", "4"], { print: false, env }),
    /The job has 2 ranks .* tp 4 x pp 1 does not divide/,
  );
  await assert.rejects(
    main([...TINY, "--max-restarts", "2"], { print: false, env }),
    /drop --max-restarts and use the launcher's/,
  );
  await assert.rejects(
    main(
      [...TINY, "--tp", "2", "--nnodes=2", "--nproc-per-node=3", "--master-addr=127.0.0.1"],
      { print: false, env: {} },
    ),
    /Tensor-parallel groups stay inside a node: 3 ranks per node is not a multiple of --tp 2/,
  );
});

Deno.test("a Worker that fails: the job names it, and with --max-restarts continues from the checkpoint to the same losses", async () => {
  const dir = tmp();
  const args = [...TINY, "--steps", "16", "--dp", "2", "--save-every", "5"];
  await expectOk(await run([...args, "--out", `${dir}/clean`]), "clean run");
  const failed = await run([...args, "--out", `${dir}/failed`], { LOOM_FAULT: "1@7" });
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /error: rank 1 failed: fault injection: rank 1 failed after step 7/);
  const restarted = await run([...args, "--out", `${dir}/restarted`, "--max-restarts", "1"], {
    LOOM_FAULT: "1@7",
  });
  await expectOk(restarted, "restarted run");
  assert.match(restarted.stderr, /restarting \(1 of 1\) from the last checkpoint/);
  assert.deepEqual(losses(`${dir}/restarted`), losses(`${dir}/clean`));
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("a killed process: its peer fails naming it, exits non-zero, and never hangs", async () => {
  const dir = tmp();
  const port = freePort();
  const t0 = performance.now();
  const ranks = await Promise.all(
    [0, 1].map((r) =>
      run([...TINY, "--steps", "200", "--out", dir, "--timeout", "20"], {
        ...torchrunEnv(r, 2, port),
        LOOM_FAULT: "1@5",
      })
    ),
  );
  const elapsed = performance.now() - t0;
  assert.equal(ranks[1]!.code, 137, "rank 1 killed itself (SIGKILL)");
  assert.equal(ranks[0]!.code, 1);
  assert.match(ranks[0]!.stderr, /error: .*peer-lost \(rank 1\)/);
  assert.ok(elapsed < 20_000, `the survivor failed in ${elapsed} ms, within the timeout`);
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("a slow link (LOOM_NET_FAULT delay) changes no loss; a dropped one fails both processes naming each other within --timeout", async () => {
  const dir = tmp();
  const args = [...TINY, "--timeout", "20"];
  const job = async (out: string, fault: string, steps = "12") => {
    const port = freePort();
    const t0 = performance.now();
    const ranks = await Promise.all(
      [0, 1].map((r) =>
        run([...args, "--steps", steps, "--out", `${dir}/${out}`], {
          ...torchrunEnv(r, 2, port),
          LOOM_NET_FAULT: fault,
        })
      ),
    );
    return { ranks, ms: performance.now() - t0 };
  };
  const plain = await job("plain", "");
  for (const [r, x] of plain.ranks.entries()) await expectOk(x, `rank ${r}`);
  const slow = await job("slow", "delay:0-1:5,delay:1-0:5");
  for (const [r, x] of slow.ranks.entries()) await expectOk(x, `rank ${r} (delayed)`);
  assert.deepEqual(losses(`${dir}/slow`), losses(`${dir}/plain`));
  assert.ok(slow.ms > plain.ms + 12 * 5, `delayed ${slow.ms} ms against ${plain.ms} ms`);
  // Rank 1 drops its link to rank 0 after 100 data frames (a few steps in).
  const cut = await job("cut", "drop:1-0@100", "200");
  const [r0, r1] = cut.ranks;
  assert.equal(r0!.code, 1, r0!.stderr);
  assert.equal(r1!.code, 1, r1!.stderr);
  assert.match(
    r0!.stderr,
    /error: .*peer-lost \(rank 1\): lost rank 1( \(world rank 1\))?: its connection closed/,
  );
  assert.match(
    r1!.stderr,
    /error: .*peer-lost \(rank 0\): lost rank 0( \(world rank 0\))?: LOOM_NET_FAULT dropped/,
  );
  assert.ok(cut.ms < 20_000, `both failed in ${cut.ms} ms, within --timeout`);
  const steps = losses(`${dir}/cut`).length;
  assert.ok(steps >= 1 && steps < 200, `cut after ${steps} steps`);
  console.log(
    `  12 steps: ${plain.ms.toFixed(0)} ms, delayed ${slow.ms.toFixed(0)} ms; cut after ` +
      `${steps} steps, both exited ${cut.ms.toFixed(0)} ms after the start`,
  );
  Deno.removeSync(dir, { recursive: true });
});

async function waitForSteps(dir: string, n: number, limitMs: number): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < limitMs) {
    try {
      if (Deno.readTextFileSync(`${dir}/metrics.jsonl`).split("\n").length > n) return;
    } catch {
      // not written yet
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no ${n} steps in ${dir} within ${limitMs} ms`);
}

Deno.test("SIGINT checkpoints at the next step boundary on every rank; the resumed run ends as an uninterrupted one", async () => {
  const dir = tmp();
  const args = [...TINY, "--steps", "400", "--dp", "2"];
  await expectOk(await run([...args, "--out", `${dir}/clean`]), "clean run");
  const p = start([...args, "--out", `${dir}/stopped`]);
  await waitForSteps(`${dir}/stopped`, 20, 30_000);
  p.child.kill("SIGINT");
  const r = await p.done;
  await expectOk(r, "interrupted run");
  assert.match(r.stderr, /SIGINT: saving at the next step boundary/);
  const summary = JSON.parse(Deno.readTextFileSync(`${dir}/stopped/summary.json`));
  assert.equal(summary.stopped_by, "SIGINT");
  assert.ok(summary.steps >= 20 && summary.steps < 400, `stopped at step ${summary.steps}`);
  const logged = losses(`${dir}/stopped`);
  assert.equal(logged.length, summary.steps, "the checkpoint is of the last step taken");
  await expectOk(await run(["--resume", `${dir}/stopped`, "--dp", "2"]), "resumed run");
  assert.deepEqual(losses(`${dir}/stopped`), losses(`${dir}/clean`));
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("a second SIGINT exits at once", async () => {
  const dir = tmp();
  // Slow steps (a wider model), so that both signals land inside one step.
  const p = start([
    ...["--dim", "256", "--layers", "4", "--heads", "4", "--batch", "64", "--eval-every", "0"],
    ...["--steps", "1000", "--out", dir],
  ]);
  await waitForSteps(dir, 1, 60_000);
  p.child.kill("SIGINT");
  await new Promise((r) => setTimeout(r, 20));
  p.child.kill("SIGINT");
  const r = await p.done;
  assert.equal(r.code, 130, r.stderr);
  Deno.removeSync(dir, { recursive: true });
});

// Two hosts on one machine: network namespaces joined by a veth pair, each with its own
// address (needs root and iproute2; created here and removed afterwards).
async function ip(...args: string[]): Promise<{ ok: boolean; err: string }> {
  try {
    const o = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
    return { ok: o.success, err: new TextDecoder().decode(o.stderr).trim() };
  } catch (e) {
    return { ok: false, err: (e as Error).message };
  }
}

async function makeHosts(tag: string): Promise<{ names: string[]; why: string | null }> {
  const names = [`loom-${tag}-a`, `loom-${tag}-b`];
  const steps = [
    ["netns", "add", names[0]!],
    ["netns", "add", names[1]!],
    ["link", "add", `lm${tag}a`, "type", "veth", "peer", "name", `lm${tag}b`],
    ["link", "set", `lm${tag}a`, "netns", names[0]!],
    ["link", "set", `lm${tag}b`, "netns", names[1]!],
    ["-n", names[0]!, "addr", "add", "10.231.0.1/24", "dev", `lm${tag}a`],
    ["-n", names[1]!, "addr", "add", "10.231.0.2/24", "dev", `lm${tag}b`],
    ["-n", names[0]!, "link", "set", `lm${tag}a`, "up"],
    ["-n", names[1]!, "link", "set", `lm${tag}b`, "up"],
    ["-n", names[0]!, "link", "set", "lo", "up"],
    ["-n", names[1]!, "link", "set", "lo", "up"],
  ];
  for (const s of steps) {
    const r = await ip(...s);
    if (!r.ok) return { names, why: `ip ${s.join(" ")}: ${r.err}` };
  }
  return { names, why: null };
}

Deno.test("train.ts across two hosts (network namespaces joined by a veth pair) equals one process", async () => {
  const tag = String(Deno.pid % 10000);
  const { names, why } = await makeHosts(tag);
  try {
    if (why !== null) {
      console.log(`skipped: cannot build two hosts here (needs root and iproute2): ${why}`);
      return;
    }
    const dir = tmp();
    const args = [...TINY, "--steps", "10", "--tp", "2"];
    await expectOk(await run([...args, "--dp", "2", "--out", `${dir}/one`]), "one process");
    const nodes = await Promise.all([0, 1].map((n) =>
      start(
        [
          ...args,
          "--nnodes=2",
          `--node-rank=${n}`,
          "--nproc-per-node=2",
          "--master-addr=10.231.0.1",
          "--master-port=29533",
          "--out",
          `${dir}/hosts`,
        ],
        { LOOM_SECRET: "two-hosts-test" },
        ["ip", "netns", "exec", names[n]!],
      ).done
    ));
    for (const [n, x] of nodes.entries()) await expectOk(x, `host ${n}`);
    const a = losses(`${dir}/one`), b = losses(`${dir}/hosts`);
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) < 1e-5, `step ${i + 1}`);
    Deno.removeSync(dir, { recursive: true });
  } finally {
    for (const n of names) await ip("netns", "del", n);
  }
});

Deno.test("a host that goes away (its link cut mid-run): the other fails naming it within --timeout", async () => {
  const tag = String((Deno.pid + 1) % 10000);
  const { names, why } = await makeHosts(tag);
  try {
    if (why !== null) {
      console.log(`skipped: cannot build two hosts here (needs root and iproute2): ${why}`);
      return;
    }
    const dir = tmp();
    const nodes = [0, 1].map((n) =>
      start(
        [
          ...TINY,
          ...["--steps", "1000000", "--timeout", "3", "--nnodes=2", `--node-rank=${n}`],
          ...["--nproc-per-node=1", "--master-addr=10.231.0.1", "--master-port=29534"],
          ...["--out", dir],
        ],
        { LOOM_SECRET: "two-hosts-test" },
        ["ip", "netns", "exec", names[n]!],
      )
    );
    await waitForSteps(dir, 20, 30_000);
    const cut = performance.now();
    assert.ok((await ip("-n", names[1]!, "link", "del", `lm${tag}b`)).ok, "cut the link");
    const [a, b] = await Promise.all(nodes.map((n) => n.done));
    const waited = performance.now() - cut;
    assert.equal(a!.code, 1, a!.stderr);
    assert.equal(b!.code, 1, b!.stderr);
    assert.match(a!.stderr, /error: rank 0 failed: .* timeout \(rank 1\)/);
    assert.match(b!.stderr, /error: rank 1 failed: \(node 1\) .* timeout \(rank 0\)/);
    assert.ok(waited < 15_000, `both failed ${waited.toFixed(0)} ms after the cut`);
    Deno.removeSync(dir, { recursive: true });
  } finally {
    for (const n of names) await ip("netns", "del", n);
  }
});

Deno.test("train.ts under mpirun -np 2, over MPI (its default there) and over TCP, equals --dp 2 as Workers; tp 2 over MPI equals tp 2 as Workers", async () => {
  let mpirun = true;
  try {
    await new Deno.Command("mpirun", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
  } catch {
    mpirun = false;
  }
  if (!mpirun || !mpiAvailable()) {
    console.log("skipped: mpirun or libmpi is not installed (Debian: apt-get install openmpi-bin)");
    return;
  }
  const dir = tmp();
  const args = [...TINY, "--steps", "12"];
  const underMpirun = async (extra: string[], out: string) => {
    const o = await new Deno.Command("mpirun", {
      args: ["--oversubscribe", "-np", "2", "-x", `MASTER_PORT=${freePort()}`, Deno.execPath()]
        .concat(["run", "-A", TRAIN, ...args, ...extra, "--out", out]),
      env: { OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(o.stdout);
    assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
    return stdout;
  };
  await expectOk(await run([...args, "--dp", "2", "--out", `${dir}/workers`]), "--dp 2");
  const mpi = await underMpirun([], `${dir}/mpi`);
  assert.match(mpi, /one process each, 1 node\(s\), over MPI/);
  assert.deepEqual(losses(`${dir}/mpi`), losses(`${dir}/workers`));
  const tcp = await underMpirun(["--transport", "tcp"], `${dir}/tcp`);
  assert.match(tcp, /over TCP/);
  assert.deepEqual(losses(`${dir}/tcp`), losses(`${dir}/workers`));
  await expectOk(await run([...args, "--tp", "2", "--out", `${dir}/tp-workers`]), "--tp 2");
  await underMpirun(["--tp", "2"], `${dir}/tp-mpi`);
  const [a, b] = [losses(`${dir}/tp-mpi`), losses(`${dir}/tp-workers`)];
  assert.equal(a.length, b.length);
  a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) <= 1e-5, `step ${i + 1}: ${x} vs ${b[i]}`));
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("--transport mpi outside mpirun, or an unknown transport, is refused before any work", async () => {
  const dir = tmp();
  const mpi = await run([...TINY, "--steps", "2", "--transport", "mpi", "--out", dir]);
  assert.notEqual(mpi.code, 0);
  assert.match(
    mpi.stderr,
    /The MPI transport needs one process per rank started by an MPI launcher/,
  );
  const bad = await run([...TINY, "--steps", "2", "--transport", "ib", "--out", dir]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /Unknown transport 'ib': use tcp or mpi/);
  assert.equal(existsSync(`${dir}/metrics.jsonl`), false);
  Deno.removeSync(dir, { recursive: true });
});
