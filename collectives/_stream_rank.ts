/**
 * Rank module of `tcpStreamBaseline` (launch.ts): rank 0 writes `bytes` to rank 1 over a plain
 * loopback socket of its own, rank 1 reads them and acknowledges; rank 0 returns the best rate.
 *
 * @module
 */
import type { Communicator } from "./communicator.ts";
import { writeAll } from "./frame.ts";

/**
 * Measure a raw one-way stream between ranks 0 and 1.
 *
 * @param comm the world (used to pass the port and to line the ranks up)
 * @param data bytes per run and number of runs
 * @returns on rank 0, the best rate in GB/s; on rank 1, 0
 */
export async function main(
  comm: Communicator,
  data: { bytes: number; iters: number },
): Promise<number> {
  const port = new Int32Array(1);
  let listener: Deno.TcpListener | undefined;
  if (comm.rank === 0) {
    listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    port[0] = listener.addr.port;
  }
  await comm.broadcast(port, 0);
  const [conn] = await Promise.all([
    comm.rank === 0 ? listener!.accept() : Deno.connect({ hostname: "127.0.0.1", port: port[0]! }),
  ]);
  listener?.close();
  conn!.setNoDelay(true);
  const buf = new Uint8Array(data.bytes);
  const ack = new Uint8Array(1);
  let best = Infinity;
  for (let i = 0; i < data.iters + 1; i++) {
    await comm.barrier();
    const t0 = performance.now();
    if (comm.rank === 0) {
      await writeAll(conn!, buf);
      await conn!.read(ack);
    } else {
      let got = 0;
      while (got < buf.length) {
        const n = await conn!.read(buf.subarray(got));
        if (n === null) throw new Error("stream closed early");
        got += n;
      }
      await writeAll(conn!, ack);
    }
    if (i > 0) best = Math.min(best, performance.now() - t0); // the first run warms up
  }
  conn!.close();
  return comm.rank === 0 ? data.bytes / best / 1e6 : 0;
}
