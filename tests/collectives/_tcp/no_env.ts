// Run without the env permission (and with LOOM_SECRET set): joins a world of one and prints
// whether a secret was found, which must be "none" (the variable is queried, never prompted for).
import { connectTcp } from "../../../collectives/tcp.ts";
import { resolveSecret } from "../../../collectives/_wire_auth.ts";

const comm = await connectTcp({ rank: 0, size: 1, masterAddr: "127.0.0.1", masterPort: 0 });
await comm.close();
console.log(resolveSecret(undefined) ?? "none");
