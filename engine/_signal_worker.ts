/**
 * The Worker behind `watchSignals` (signals.ts): it waits for SIGINT and SIGTERM on a thread of
 * its own, so a signal is seen at once even while the training thread computes. The first sets
 * the shared stop flag; the second ends the process at once with 128 + the signal's number.
 *
 * @module
 */
/// <reference lib="deno.worker" />

const CODES = { SIGINT: [1, 130], SIGTERM: [2, 143] } as const;

function exitNow(code: number): void {
  try {
    const libc = Deno.dlopen("libc.so.6", { _exit: { parameters: ["i32"], result: "void" } });
    libc.symbols._exit(code);
  } catch {
    // No FFI here: the next best is a kill that cannot be caught.
    Deno.kill(Deno.pid, "SIGKILL");
  }
}

self.onmessage = (e: MessageEvent<{ stop: Int32Array }>) => {
  const { stop } = e.data;
  for (const [sig, [flag, code]] of Object.entries(CODES)) {
    Deno.addSignalListener(sig as Deno.Signal, () => {
      if (Atomics.load(stop, 0) !== 0) exitNow(code);
      Atomics.store(stop, 0, flag);
      console.error(`${sig}: saving at the next step boundary (again to exit at once)`);
    });
  }
  self.postMessage("ready");
};
