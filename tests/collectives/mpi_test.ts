// The MPI communicator across processes started by Open MPI's mpirun. Each world runs
// _mpi/rank.ts on every rank; the ranks check every result against a serial reference and write
// a report each, which this file checks. Skipped (with the reason in the test name) where
// mpirun or libmpi is missing: `apt-get install openmpi-bin` provides both.
//
// What mpirun needs here (a container, as root, 2 cores): --allow-run-as-root, --oversubscribe
// for more ranks than cores, and the shared-memory and loopback layers (btl self,vader; pml
// ob1), so that it does not probe for network hardware.
import assert from "node:assert/strict";
import { mpiAvailable } from "../../collectives/mpi.ts";

const RANK = new URL("./_mpi/rank.ts", import.meta.url).pathname;

async function whyNot(): Promise<string | null> {
  if (!mpiAvailable()) return "libmpi.so.40 not found";
  try {
    const out = await new Deno.Command("mpirun", { args: ["--version"], stdout: "piped" })
      .output();
    if (!out.success) return "mpirun --version failed";
  } catch {
    return "mpirun not found";
  }
  return null;
}

const skip = await whyNot();
const suffix = skip === null ? "" : ` (skipped: ${skip}; apt-get install openmpi-bin)`;
if (skip !== null) console.warn(`mpi_test: skipping: ${skip}; apt-get install openmpi-bin`);

/** Environment for mpirun and its ranks. */
const MPI_ENV = {
  NO_COLOR: "1",
  OMPI_ALLOW_RUN_AS_ROOT: "1",
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1",
  OMPI_MCA_btl: "self,vader",
  OMPI_MCA_pml: "ob1",
  // Quiet about the InfiniBand and fabric components that find no hardware here.
  OMPI_MCA_btl_base_warn_component_unused: "0",
};

interface Report {
  rank: number;
  size: number;
  checks: number;
  failures: string[];
  [k: string]: unknown;
}

async function mpirun(np: number, scenario: string, limitS = 240): Promise<Report[]> {
  const dir = await Deno.makeTempDir({ prefix: "loom-mpi-" });
  try {
    const child = new Deno.Command("mpirun", {
      args: [
        "--allow-run-as-root",
        "--oversubscribe",
        "--timeout",
        String(limitS),
        "-np",
        String(np),
        Deno.execPath(),
        "run",
        "-A",
        RANK,
        scenario,
        dir,
      ],
      env: MPI_ENV,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = await child.output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `mpirun -np ${np} ${scenario} exited with ${out.code}:\n${text}`);
    const reports: Report[] = [];
    for (let r = 0; r < np; r++) {
      reports.push(JSON.parse(await Deno.readTextFile(`${dir}/rank${r}.json`)) as Report);
    }
    return reports;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function checkOps(reports: Report[], size: number): void {
  assert.equal(reports.length, size);
  for (const r of reports) {
    assert.equal(r.size, size);
    assert.equal(r.transport, "mpi");
    assert.deepEqual(r.failures, [], `rank ${r.rank} of ${size}`);
    assert.ok(r.checks >= 200, `rank ${r.rank} ran only ${r.checks} checks`);
    // Floating-point sums of non-integers: every rank must hold the very same bits.
    assert.deepEqual(r.digests, reports[0]!.digests);
    const bad = r.badArgs as Record<string, { ok: boolean; name: string; message: string }>;
    const types: Record<string, string> = {
      wrongDtype: "TypeError",
      noDtype: "TypeError",
      badOp: "TypeError",
      badRoot: "RangeError",
      badGather: "RangeError",
      mixedTypes: "TypeError",
      badScatter: "RangeError",
      badAllToAll: "RangeError",
      selfSend: "RangeError",
      badPeer: "RangeError",
      badTag: "RangeError",
      badTimeout: "RangeError",
      badColor: "RangeError",
    };
    for (const [k, t] of Object.entries(types)) {
      assert.equal(bad[k]!.ok, false, k);
      assert.equal(bad[k]!.name, t, `${k}: ${bad[k]!.message}`);
    }
    // Nothing in the argument checks communicated: the group still works.
    assert.equal(r.badArgsSum, size);
  }
}

const opts = { sanitizeOps: true, sanitizeResources: true, ignore: skip !== null };

Deno.test({
  name: `every op over MPI matches the serial reference with 2 and 3 ranks${suffix}`,
  ...opts,
  async fn() {
    checkOps(await mpirun(2, "ops"), 2);
    checkOps(await mpirun(3, "ops"), 3);
  },
});

Deno.test({
  name: `every op over MPI matches the serial reference with 4 ranks${suffix}`,
  ...opts,
  async fn() {
    checkOps(await mpirun(4, "ops"), 4);
  },
});

Deno.test({
  name: `send/recv over MPI: tags out of order, a long message, a mismatch, a timeout${suffix}`,
  ...opts,
  async fn() {
    const [r0, r1] = await mpirun(2, "p2p");
    assert.deepEqual(r0!.failures, []);
    const tags = r1!.tags as { got: unknown[]; wrong: Record<string, unknown> };
    assert.deepEqual(tags.got, [[3, 3, 3], true, [1, 1]]);
    assert.equal(tags.wrong.reason, "mismatch");
    assert.equal(tags.wrong.peer, 0);
    assert.match(String(tags.wrong.message), /tag 4 expected 5 int32 but rank 0 sent 4 int32/);
    const t = (r1!.timeout as { first: Record<string, unknown> }).first;
    assert.equal(t.reason, "timeout", String(t.message));
    assert.equal(t.op, "recv");
    assert.equal(t.peer, 0);
    const ms = t.ms as number;
    assert.ok(ms >= 290 && ms < 3_000, `took ${ms} ms`);
  },
});

Deno.test({
  name: `an all-reduce a rank never joins times out naming the op; the group stays failed${suffix}`,
  ...opts,
  async fn() {
    const reports = await mpirun(3, "stall");
    assert.equal((reports[2]! as Record<string, unknown>).caught, null);
    for (const r of reports.slice(0, 2)) {
      const c = r.caught as Record<string, unknown>;
      assert.equal(c.reason, "timeout", JSON.stringify(r));
      assert.equal(c.op, "allReduce");
      assert.equal(c.group, "world");
      assert.match(String(c.message), /within 1000 ms/);
      assert.match(String(c.message), /cannot cancel/);
      const ms = r.ms as number;
      assert.ok(ms >= 990 && ms < 5_000, `rejected after ${ms} ms`);
      // A later op on the failed group rejects at once, with the same reason.
      const after = r.after as Record<string, unknown>;
      assert.equal(after.reason, "timeout");
      assert.equal(after.op, "barrier");
      assert.ok((after.ms as number) < 100, `the later op took ${after.ms} ms`);
      // A group made before the failure still works.
      assert.equal(r.subSum, 2);
    }
  },
});
