/**
 * Collectives: a {@linkcode Communicator} with all-reduce, reduce-scatter, all-gather,
 * broadcast, reduce, all-to-all, send/recv, barrier and sub-groups, over shared memory
 * (Worker ranks in one process), TCP (processes and nodes), both (hierarchical), or the
 * system's MPI library under `mpirun` ({@linkcode connectMpi}).
 *
 * Allocate the buffers you reduce with {@linkcode sharedArray}: in a world's shared arena,
 * reductions fold in WebAssembly SIMD straight between the ranks' buffers.
 *
 * Over TCP, give every rank the same job secret (`LOOM_SECRET`, or {@linkcode connectTcp}'s
 * `secret`): every connection then proves it before anything else is accepted. Without one,
 * anyone who can reach a rank's port can join the job.
 *
 * @module
 */
export * from "./communicator.ts";
export * from "./reduce.ts";
export * from "./shm.ts";
export * from "./world.ts";
export * from "./solo.ts";
export * from "./arena.ts";
export * from "./json.ts";
export { connectTcp, type TcpOptions } from "./tcp.ts";
export type { RendezvousOptions } from "./rendezvous.ts";
export { createHierarchical } from "./hierarchical.ts";
export {
  connectMpi,
  launchedByMpirun,
  mpiAvailable,
  MpiLoadError,
  type MpiOptions,
} from "./mpi.ts";
export * from "./launch.ts";
