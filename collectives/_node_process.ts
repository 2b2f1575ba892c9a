/**
 * Entry point of every node process started by `runNodes` (launch.ts): reads the launch flags,
 * runs the node's Worker ranks with `launch`, and prints their results on a marked stdout line.
 *
 * @module
 */
import { launch, parseLaunch } from "./launch.ts";

const MARK = "\u0001loom-result ";
const env = Deno.env.toObject();
let code = 0;
try {
  const config = parseLaunch(Deno.args, {});
  const value = await launch(config, {
    module: env.LOOM_RANK_MODULE!,
    data: JSON.parse(env.LOOM_RANK_DATA ?? "null"),
    timeoutMs: env.LOOM_TIMEOUT_MS ? Number(env.LOOM_TIMEOUT_MS) : undefined,
  });
  console.log(MARK + JSON.stringify({ ok: true, value }));
} catch (e) {
  console.log(MARK + JSON.stringify({ ok: false, error: (e as Error).message ?? String(e) }));
  code = 1;
}
Deno.exit(code);
