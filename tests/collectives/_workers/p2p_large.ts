// Rank module: messages longer than a channel chunk, sent before their receiver is ready.
import type { Communicator } from "../../../collectives/mod.ts";

function filled(len: number, seed: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = seed * 1000 + (i % 997);
  return a;
}

function same(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export async function main(comm: Communicator): Promise<boolean[]> {
  const o = { timeoutMs: 10_000 };
  const sizes = [100_000, 500_000, 60_000, 500_001];
  if (comm.rank === 0) {
    // Both sends must resolve while rank 1 still waits in the barrier.
    await comm.send(filled(200_000, 1), 1, 1, o);
    await comm.send(filled(300_000, 2), 1, 2, o);
    await comm.barrier(o);
    for (const [k, len] of sizes.entries()) await comm.send(filled(len, 10 + k), 1, 3, o);
    const back = new Float32Array(250_000);
    await comm.recv(back, 1, 4, o);
    return [same(back, filled(250_000, 20))];
  }
  await comm.barrier(o);
  const b = new Float32Array(300_000), a = new Float32Array(200_000);
  await comm.recv(b, 0, 2, o);
  await comm.recv(a, 0, 1, o);
  const ok = [same(a, filled(200_000, 1)), same(b, filled(300_000, 2))];
  for (const [k, len] of sizes.entries()) {
    const got = new Float32Array(len);
    await comm.recv(got, 0, 3, o);
    ok.push(same(got, filled(len, 10 + k)));
  }
  await comm.send(filled(250_000, 20), 0, 4, o);
  return ok;
}
