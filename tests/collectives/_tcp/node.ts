// One node of a multi-node job: `deno run -A node.ts --nnodes 2 --node-rank R --nproc-per-node 2
// --master-addr 127.0.0.1 --master-port P`. Runs the battery on every local rank (Workers) and
// prints the reports as one JSON line.
import { launch, parseLaunch } from "../../../collectives/launch.ts";

const config = parseLaunch(Deno.args, Deno.env.toObject());
const results = await launch(config, {
  module: new URL("./battery.ts", import.meta.url),
  data: { sizes: [0, 1, 7, 30_001] },
  timeoutMs: 30_000,
});
console.log(JSON.stringify({ config, results }));
