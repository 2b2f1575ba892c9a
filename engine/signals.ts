/**
 * Stopping a run cleanly on SIGINT and SIGTERM: {@linkcode watchSignals} gives the flag that
 * `runTraining` reads at every step boundary (the ranks agree on the step, checkpoint, and
 * stop); a second signal ends the process at once.
 *
 * @module
 */

/** A running watch: the flag to pass as `RunOptions.stop`, and how to end the watch. */
export interface SignalWatch {
  /** Nonzero once a signal came: the key of its name in `STOP_REASONS` (run.ts). */
  readonly stop: Int32Array;
  /** Stop watching (the process can then exit). */
  close(): void;
}

/**
 * Watch SIGINT and SIGTERM on a Worker of their own, so that a signal is seen even while this
 * thread computes a step: the first sets the stop flag, the second exits at once (code 130 or
 * 143, as a shell reports a process killed by them). Needs `--allow-run` for signals and
 * `--allow-ffi` to exit at once (else the second signal kills the process).
 *
 * @returns the watch, once its Worker listens
 */
export async function watchSignals(): Promise<SignalWatch> {
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(new URL("./_signal_worker.ts", import.meta.url), { type: "module" });
  await new Promise<void>((resolve, reject) => {
    worker.onmessage = () => resolve();
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(`Cannot watch signals: ${e.message}`));
    };
    worker.postMessage({ stop });
  });
  return { stop, close: () => worker.terminate() };
}
