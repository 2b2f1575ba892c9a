/**
 * Run records: `metrics.jsonl` (one JSON object per logged step or evaluation) and
 * `summary.json` at the end.
 *
 * @module
 */

/** A logged training step. */
export interface StepRecord {
  /** 1-based optimizer step. */
  step: number;
  /** Mean training loss of the step. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Training throughput over the last logging interval. */
  tokens_per_s: number;
  /** Wall-clock milliseconds from the end of the previous step to the end of this one. */
  step_wall_ms?: number;
  /** Tokens trained on so far, this step's included (over every replica, across resumes). */
  tokens?: number;
  /** Global gradient norm before clipping (when computed). */
  grad_norm?: number;
  /** The fp16 loss scale the step used. */
  loss_scale?: number;
  /** Whether the step was skipped (fp16 overflow). */
  skipped?: boolean;
  /** With `wall_clock_breakdown`: milliseconds of forward, backward, pipeline idle, reduce, step. */
  forward_ms?: number;
  /** Backward passes. */
  backward_ms?: number;
  /** Waiting for pipeline peers. */
  pipelineIdle_ms?: number;
  /** Gradient reductions after backward and the norm. */
  reduce_ms?: number;
  /** The optimizer step. */
  step_ms?: number;
}

/** A logged evaluation. */
export interface EvalRecord {
  /** Step after which it ran. */
  step: number;
  /** Always `"eval"`. */
  kind: "eval";
  /** Mean validation loss. */
  val_loss: number | null;
  /** Held-out exact-match accuracy (tasks only). */
  heldout_accuracy?: number;
  /** Seconds the evaluation took (validation loss and held-out score). */
  eval_s?: number;
}

/** Appends records to a JSON-lines file, one object per line. */
export class MetricsWriter {
  readonly #file: Deno.FsFile;
  readonly #enc = new TextEncoder();

  private constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  /**
   * Open (append to) a metrics file.
   *
   * @param path the `metrics.jsonl` path
   * @param append keep earlier lines (a resumed run) instead of truncating
   * @returns the writer
   */
  static async open(path: string, append: boolean): Promise<MetricsWriter> {
    const file = await Deno.open(path, { write: true, create: true, append, truncate: !append });
    return new MetricsWriter(file);
  }

  /**
   * Write one record as a line.
   *
   * @param rec the record
   */
  async write(rec: StepRecord | EvalRecord): Promise<void> {
    const bytes = this.#enc.encode(JSON.stringify(rec) + "\n");
    let off = 0;
    while (off < bytes.length) off += await this.#file.write(bytes.subarray(off));
  }

  /** Close the file. */
  close(): void {
    this.#file.close();
  }
}

/**
 * Read a JSON-lines file back (`metrics.jsonl`, `ranks.jsonl`): one value per non-empty line.
 *
 * @param path the file
 * @returns its records in order
 */
export async function readJsonLines<T>(path: string): Promise<T[]> {
  const text = await Deno.readTextFile(path);
  return text.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l) as T);
}

/**
 * Read a `metrics.jsonl` back.
 *
 * @param path the file
 * @returns its records in order
 */
export function readMetrics(path: string): Promise<(StepRecord | EvalRecord)[]> {
  return readJsonLines<StepRecord | EvalRecord>(path);
}

/**
 * Drop the records of a JSON-lines file logged after `step` (a resumed run logs those steps
 * again); a missing file is left missing.
 *
 * @param path the file
 * @param step the last step to keep
 */
export async function keepRecordsUpTo(path: string, step: number): Promise<void> {
  let records: { step: number }[];
  try {
    records = await readJsonLines<{ step: number }>(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  const kept = records.filter((r) => r.step <= step);
  await Deno.writeTextFile(path, kept.map((r) => JSON.stringify(r) + "\n").join(""));
}
