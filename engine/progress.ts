/**
 * The live progress line: step, loss, learning rate, tokens/s and ETA, redrawn in place on a
 * terminal and printed every few steps otherwise.
 *
 * @module
 */

/** What one progress update shows. */
export interface ProgressInfo {
  /** Steps done. */
  step: number;
  /** Steps in the run. */
  total: number;
  /** Latest training loss. */
  loss: number;
  /** Latest learning rate. */
  lr: number;
  /** Recent throughput. */
  tokensPerS: number;
  /** Seconds since the start of the run (this process). */
  elapsed: number;
  /** Steps done by this process (a resumed run starts later). */
  stepsThisRun: number;
}

/**
 * Format a duration as `1m05s` or `42s`.
 *
 * @param s seconds
 * @returns the text
 */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const total = Math.round(s), m = Math.floor(total / 60), r = total - 60 * m;
  return m > 0 ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}

/**
 * One progress line, e.g. `step   120/2000 | loss 1.2345 | lr 1.00e-3 | 25,000 tok/s | ETA 1m05s`.
 *
 * @param p the figures
 * @returns the line
 */
export function formatProgress(p: ProgressInfo): string {
  const w = String(p.total).length;
  const eta = p.stepsThisRun > 0 ? (p.elapsed / p.stepsThisRun) * (p.total - p.step) : NaN;
  return `step ${String(p.step).padStart(w)}/${p.total} | loss ${p.loss.toFixed(4)} | ` +
    `lr ${p.lr.toExponential(2)} | ${Math.round(p.tokensPerS).toLocaleString("en-US")} tok/s | ` +
    `ETA ${formatDuration(eta)}`;
}

/** Writes progress lines to stdout: in place on a terminal, one per `every` steps otherwise. */
export class Progress {
  readonly #tty: boolean;
  readonly #every: number;
  readonly #enc = new TextEncoder();
  #open = false;

  /**
   * Create a progress writer.
   *
   * @param every print every this many steps when stdout is not a terminal
   * @param quiet print nothing
   */
  constructor(every: number, readonly quiet = false) {
    this.#tty = Deno.stdout.isTerminal();
    this.#every = Math.max(1, every);
  }

  /**
   * Show an update.
   *
   * @param p the figures
   */
  update(p: ProgressInfo): void {
    if (this.quiet) return;
    const line = formatProgress(p);
    if (this.#tty) {
      Deno.stdout.writeSync(this.#enc.encode(`\r\x1b[2K${line}`));
      this.#open = true;
    } else if (p.step % this.#every === 0 || p.step === p.total) {
      console.log(line);
    }
  }

  /**
   * Print a whole line (an evaluation, a message) without breaking the progress line.
   *
   * @param text the line
   */
  log(text: string): void {
    if (this.quiet) return;
    this.done();
    console.log(text);
  }

  /** End the in-place line. */
  done(): void {
    if (this.#open) {
      Deno.stdout.writeSync(this.#enc.encode("\n"));
      this.#open = false;
    }
  }
}
