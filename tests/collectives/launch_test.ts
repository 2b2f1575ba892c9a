import assert from "node:assert/strict";
import {
  firstSlurmHost,
  parseLaunch,
  runProcesses,
  tcpStreamBaseline,
} from "../../collectives/launch.ts";
import type { BatteryReport } from "./_tcp/battery.ts";

Deno.test("parseLaunch() reads node-mode flags in both --flag=value and --flag value forms", () => {
  const c = parseLaunch(
    ["--lr", "3", "--nnodes=2", "--node-rank", "1", "--nproc-per-node=4", "--master-addr=10.1.2.3"]
      .concat(["--master-port", "1234", "data.txt"]),
    {},
  );
  assert.equal(c.source, "flags");
  assert.equal(c.mode, "node");
  assert.equal(c.worldSize, 8);
  assert.deepEqual(c.ranks, [4, 5, 6, 7]);
  assert.deepEqual(c.localRanks, [0, 1, 2, 3]);
  assert.equal(c.masterAddr, "10.1.2.3");
  assert.equal(c.masterPort, 1234);
  assert.deepEqual(c.rest, ["--lr", "3", "data.txt"]);
});

Deno.test("parseLaunch() with nothing set is one node with one rank", () => {
  const c = parseLaunch([], {});
  assert.equal(c.source, "default");
  assert.equal(c.worldSize, 1);
  assert.deepEqual(c.ranks, [0]);
});

Deno.test("parseLaunch() reads the torchrun environment", () => {
  const c = parseLaunch([], {
    RANK: "5",
    WORLD_SIZE: "8",
    LOCAL_RANK: "1",
    LOCAL_WORLD_SIZE: "4",
    GROUP_RANK: "1",
    MASTER_ADDR: "node0",
    MASTER_PORT: "29400",
  });
  assert.equal(c.source, "torchrun");
  assert.equal(c.mode, "process");
  assert.deepEqual([c.ranks, c.localRanks, c.nnodes, c.nodeRank], [[5], [1], 2, 1]);
  assert.deepEqual([c.nprocPerNode, c.masterAddr, c.masterPort], [4, "node0", 29400]);
});

Deno.test("parseLaunch() reads the SLURM environment and finds rank 0's host", () => {
  const c = parseLaunch([], {
    SLURM_PROCID: "6",
    SLURM_NTASKS: "8",
    SLURM_LOCALID: "2",
    SLURM_NODEID: "1",
    SLURM_NNODES: "2",
    SLURM_NTASKS_PER_NODE: "4(x2)",
    SLURM_JOB_NODELIST: "gpu[07-08]",
    SLURM_LAUNCH_NODE_IPADDR: "10.0.0.9",
  });
  assert.equal(c.source, "slurm");
  assert.deepEqual([c.ranks, c.localRanks, c.nnodes, c.nodeRank], [[6], [2], 2, 1]);
  assert.deepEqual([c.nprocPerNode, c.masterAddr, c.masterPort], [4, "gpu07", 29500]);
  const launchNode = parseLaunch([], {
    SLURM_PROCID: "0",
    SLURM_NTASKS: "2",
    SLURM_NNODES: "2",
    SLURM_LAUNCH_NODE_IPADDR: "10.0.0.9",
  });
  assert.equal(launchNode.masterAddr, "10.0.0.9");
  assert.equal(launchNode.nprocPerNode, 1);
  assert.equal(firstSlurmHost("a-[3-5,9]-b,c"), "a-3-b");
  assert.equal(firstSlurmHost("x1,x2"), "x1");
});

Deno.test("parseLaunch() reads the Open MPI environment", () => {
  const c = parseLaunch([], {
    OMPI_COMM_WORLD_RANK: "3",
    OMPI_COMM_WORLD_SIZE: "4",
    OMPI_COMM_WORLD_LOCAL_RANK: "1",
    OMPI_COMM_WORLD_LOCAL_SIZE: "2",
    MASTER_ADDR: "h0",
  });
  assert.equal(c.source, "openmpi");
  assert.deepEqual([c.ranks, c.localRanks, c.nnodes, c.nodeRank, c.masterAddr], [
    [3],
    [1],
    2,
    1,
    "h0",
  ]);
  const single = parseLaunch([], { OMPI_COMM_WORLD_RANK: "0", OMPI_COMM_WORLD_SIZE: "2" });
  assert.equal(single.masterAddr, "127.0.0.1");
});

Deno.test("parseLaunch() flags win over the environment", () => {
  const c = parseLaunch(["--nproc-per-node=2"], { RANK: "1", WORLD_SIZE: "2", MASTER_PORT: "777" });
  assert.equal(c.source, "flags");
  assert.equal(c.masterPort, 777);
});

Deno.test("parseLaunch() explains how to fix bad or missing values", () => {
  assert.throws(() => parseLaunch(["--nnodes=two"], {}), /--nnodes must be a non-negative integer/);
  assert.throws(() => parseLaunch(["--nnodes=2"], {}), /needs --master-addr/);
  assert.throws(
    () => parseLaunch(["--nnodes=2", "--node-rank=2", "--master-addr=h"], {}),
    (e) => e instanceof RangeError && /node ranks go from 0 to 1/.test(e.message),
  );
  assert.throws(() => parseLaunch(["--nproc-per-node"], {}), /needs a value/);
  assert.throws(() => parseLaunch(["--nproc-per-node=0"], {}), RangeError);
  assert.throws(() => parseLaunch(["--master-port=70000"], {}), /not a TCP port/);
  assert.throws(() => parseLaunch([], { RANK: "0" }), /WORLD_SIZE is not set.*torchrun/);
  assert.throws(
    () => parseLaunch([], { RANK: "4", WORLD_SIZE: "4", MASTER_ADDR: "h" }),
    (e) => e instanceof RangeError && /ranks go from 0 to 3/.test(e.message),
  );
  assert.throws(() => parseLaunch([], { RANK: "1", WORLD_SIZE: "2" }), /MASTER_ADDR is not set/);
  assert.throws(
    () =>
      parseLaunch([], {
        OMPI_COMM_WORLD_RANK: "0",
        OMPI_COMM_WORLD_SIZE: "4",
        OMPI_COMM_WORLD_LOCAL_SIZE: "2",
      }),
    /mpirun -x MASTER_ADDR/,
  );
  assert.throws(
    () => parseLaunch([], { SLURM_PROCID: "0", SLURM_NTASKS: "4", SLURM_NNODES: "2" }),
    /export MASTER_ADDR/,
  );
});

Deno.test({
  name: "runProcesses() runs a rank module in 3 processes over TCP and returns every result",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const reports = await runProcesses<BatteryReport>({
      size: 3,
      module: new URL("./_tcp/battery.ts", import.meta.url),
      data: { sizes: [0, 5, 70_001] },
      timeoutMs: 30_000,
    });
    assert.deepEqual(reports.map((r) => r.rank), [0, 1, 2]);
    for (const r of reports) {
      assert.equal(r.transport, "tcp");
      assert.deepEqual(r.failures, [], `rank ${r.rank}`);
      assert.ok(r.checks >= 30);
    }
  },
});

Deno.test({
  name: "runProcesses() rejects naming the rank whose main threw",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    await assert.rejects(
      () =>
        runProcesses({
          size: 2,
          module: new URL("./_tcp/battery.ts", import.meta.url),
          data: { sizes: [-1] }, // new Float32Array(-1) throws
        }),
      /rank \d of 2 failed/,
    );
  },
});

Deno.test({
  name: "tcpStreamBaseline() measures a positive rate between two processes",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const gbps = await tcpStreamBaseline(1 << 20, 2);
    assert.ok(gbps > 0 && Number.isFinite(gbps), `got ${gbps}`);
  },
});
