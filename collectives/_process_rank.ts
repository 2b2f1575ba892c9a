/**
 * Entry point of every process started by `runProcesses` (launch.ts): joins the TCP world
 * described by the torchrun-style environment, runs the rank module's `main` and prints its
 * result on a marked stdout line.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import { parseLaunch, type RankMain } from "./launch.ts";
import { connectTcp } from "./tcp.ts";

const MARK = "\u0001loom-result ";
const env = Deno.env.toObject();
let code = 0;
try {
  const config = parseLaunch([], env);
  const timeout = env.LOOM_TIMEOUT_MS ? Number(env.LOOM_TIMEOUT_MS) : undefined;
  const comm = await connectTcp({
    rank: config.ranks[0]!,
    size: config.worldSize,
    masterAddr: config.masterAddr,
    masterPort: config.masterPort,
    opTimeoutMs: timeout,
  });
  try {
    const mod = await import(env.LOOM_RANK_MODULE!);
    if (typeof mod.main !== "function") {
      throw new TypeError(
        `${env.LOOM_RANK_MODULE} exports no main function: add ` +
          "`export async function main(comm, data)`",
      );
    }
    const value = await (mod.main as RankMain<unknown>)(comm, JSON.parse(env.LOOM_RANK_DATA!));
    console.log(MARK + JSON.stringify({ ok: true, value: value ?? null }));
  } finally {
    await comm.close();
  }
} catch (e) {
  const detail = e instanceof CollectiveError ? ` [${e.reason}, rank ${e.peer}]` : "";
  console.log(MARK + JSON.stringify({ ok: false, error: `${(e as Error).message}${detail}` }));
  code = 1;
}
Deno.exit(code);
