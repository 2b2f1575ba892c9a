/**
 * How fast a job notices a lost rank: train.ts runs as two processes under torchrun's
 * environment (one rank each, over TCP on loopback), rank 1 kills itself with SIGKILL after a
 * step (`LOOM_FAULT`), and this measures the time from its last word to the moment rank 0
 * reports the error naming it. Also the same for a Worker that fails inside a one-process
 * `--dp 2` job. The figure is the median over `--kills` runs; the collective timeout
 * (`--timeout`, 60 s by default) is the bound every detection must beat.
 *
 * ```sh
 * deno run -A bench/faults.ts             # 10 kills of each kind
 * deno run -A bench/faults.ts --kills 3 --json
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { freeLoopbackPort as freePort } from "../collectives/launch.ts";
import { median } from "./_median.ts";

const TRAIN = new URL("../train.ts", import.meta.url).pathname;
const ARGS = ["--dim", "16", "--layers", "1", "--heads", "2", "--batch", "8", "--eval-every", "0"]
  .concat(["--steps", "100000", "--quiet"]);

/** Run one process, calling `onLine` with each stderr line and the time it arrived. */
async function spawn(
  args: string[],
  env: Record<string, string>,
  onLine: (line: string, at: number) => void,
): Promise<number> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, ...args],
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let rest = "";
  for await (const chunk of p.stderr.pipeThrough(new TextDecoderStream())) {
    const at = Date.now();
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf("\n")) >= 0) {
      onLine(rest.slice(0, nl), at);
      rest = rest.slice(nl + 1);
    }
  }
  return (await p.status).code;
}

const KILLED = /fault injection: rank 1 fails after step \d+ at (\d+) ms/;

async function killProcess(dir: string): Promise<number> {
  const port = String(freePort());
  let killedAt = NaN, reportedAt = NaN;
  const codes = await Promise.all([0, 1].map((r) =>
    spawn([...ARGS, "--out", dir], {
      RANK: String(r),
      WORLD_SIZE: "2",
      LOCAL_RANK: String(r),
      LOCAL_WORLD_SIZE: "2",
      MASTER_ADDR: "127.0.0.1",
      MASTER_PORT: port,
      LOOM_FAULT: "1@20",
    }, (line, at) => {
      const m = KILLED.exec(line);
      if (m) killedAt = Number(m[1]);
      if (r === 0 && /error: .*rank 1/.test(line)) reportedAt = at;
    })
  ));
  if (codes[0] !== 1 || codes[1] !== 137 || !Number.isFinite(reportedAt)) {
    throw new Error(`unexpected exit codes ${codes} or no report naming rank 1`);
  }
  return reportedAt - killedAt;
}

async function failWorker(dir: string): Promise<number> {
  let killedAt = NaN, reportedAt = NaN;
  const code = await spawn(
    [...ARGS, "--dp", "2", "--out", dir],
    { LOOM_FAULT: "1@20" },
    (l, at) => {
      const m = KILLED.exec(l);
      if (m) killedAt = Number(m[1]);
      if (/error: rank 1 failed/.test(l)) reportedAt = at;
    },
  );
  if (code !== 1 || !Number.isFinite(reportedAt)) throw new Error(`exit code ${code}`);
  return reportedAt - killedAt;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { kills: { type: "string", default: "10" }, json: { type: "boolean" } },
  });
  const kills = Number(values.kills);
  if (!Number.isInteger(kills) || kills < 1) {
    throw new RangeError(`--kills must be a positive integer, got ${values.kills}`);
  }
  const dir = await Deno.makeTempDir({ prefix: "loom-faults-" });
  try {
    for (
      const [name, once] of [
        ["process killed (SIGKILL), TCP", killProcess],
        ["Worker throws, shared memory", failWorker],
      ] as const
    ) {
      const ms: number[] = [];
      for (let i = 0; i < kills; i++) ms.push(await once(`${dir}/${i}`));
      const row = {
        fault: name,
        kills,
        median_ms: median(ms),
        max_ms: Math.max(...ms),
        timeout_ms: 60_000,
      };
      if (values.json) console.log(JSON.stringify(row));
      else {
        console.log(
          `${name.padEnd(32)} median ${row.median_ms.toFixed(0)} ms, max ` +
            `${row.max_ms.toFixed(0)} ms over ${kills} kills (timeout ${row.timeout_ms} ms)`,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
