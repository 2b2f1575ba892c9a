/**
 * Entry point of every rank Worker started by `startWorkers` (world.ts): receives the group spec
 * and links, builds the rank's communicator, imports the user's module and runs its `main`.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import { EXITED, exitedBefore, ShmLink, type ShmLinkInit } from "./_shm_link.ts";
import { ShmCommunicator, type ShmGroupSpec, type ShmOptions } from "./shm.ts";
import { useArena } from "./arena.ts";

/** The first message a rank Worker receives. */
export interface WorldInit {
  type: "init";
  rank: number;
  spec: ShmGroupSpec;
  link: ShmLinkInit;
  options: ShmOptions;
  module: string;
  data: unknown;
  /** The parent's arena ({@link ./arena.ts}), which becomes this rank's. */
  arena?: WebAssembly.Memory;
}

/** Plain-object form of an error thrown by a rank, posted to the parent. */
export interface RankErrorInfo {
  name: string;
  message: string;
  stack?: string;
  reason?: string;
  op?: string;
  group?: string;
  peer?: number;
  /** The world rank whose main had ended when this rank's op failed (it learned second-hand). */
  after?: number;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(msg: unknown): void;
  close(): void;
};

scope.onmessage = async (e: MessageEvent) => {
  const init = e.data as WorldInit;
  if (init?.type !== "init") return;
  scope.onmessage = null;
  if (init.arena !== undefined) useArena(init.arena);
  const link = new ShmLink(init.link);
  const comm = new ShmCommunicator(init.spec, init.rank, link, init.options);
  // A Worker that ends itself (Deno.exit or close) sends its parent no event: say so first, and
  // mark the rank as gone so that its peers do not wait for it until their timeouts.
  let done = false;
  const leaving = (how: string) => {
    if (done) return;
    done = true;
    Atomics.store(link.alive, init.link.worldRank, EXITED);
    const info: RankErrorInfo = {
      name: "Error",
      message: `${how} ended the rank's Worker before its main function returned`,
    };
    scope.postMessage({ loomWorld: "error", error: info });
  };
  const deno = Deno as unknown as { exit: (code?: number) => never };
  const exit = deno.exit;
  deno.exit = (code?: number): never => {
    leaving(`Deno.exit(${code ?? ""})`);
    return exit(code);
  };
  const close = scope.close.bind(scope);
  scope.close = () => {
    leaving("close()");
    close();
  };
  try {
    const mod = await import(init.module);
    if (typeof mod.main !== "function") {
      throw new TypeError(
        `${init.module} exports no main function: add \`export async function main(comm, data)\``,
      );
    }
    const value = await mod.main(comm, init.data);
    if (done) return;
    done = true;
    Atomics.store(link.alive, init.link.worldRank, EXITED);
    scope.postMessage({ loomWorld: "result", value });
  } catch (err) {
    if (done) return;
    done = true;
    Atomics.store(link.alive, init.link.worldRank, EXITED);
    const info: RankErrorInfo = err instanceof Error
      ? { name: err.name, message: err.message, stack: err.stack }
      : { name: "Error", message: String(err) };
    if (err instanceof CollectiveError) {
      Object.assign(info, { reason: err.reason, op: err.op, group: err.group, peer: err.peer });
    }
    info.after = exitedBefore(err);
    scope.postMessage({ loomWorld: "error", error: info });
  }
};
