/**
 * The embedded default task, which needs no file and no download: addition of two D-digit
 * numbers written as `"123+045="` followed by the sum's D+1 digits in reverse order (the carry
 * then flows in reading order, which a small model learns quickly). Only the answer is scored:
 * the prompt's targets are -1. A held-out set of problems never appears in training; the model
 * is scored on it by exact match of greedy decoding.
 *
 * @module
 */
import { Rng } from "../kernels/rng.ts";
import {
  type Batch,
  type BatchSource,
  type BatchState,
  checkRows,
  type RowRange,
} from "./batches.ts";
import type { Dataset, LogitsFn, Sample, Score } from "./dataset.ts";
import { CharTokenizer } from "./tokenizers.ts";

/** Options of {@linkcode AdditionTask}. */
export interface AdditionOptions {
  /** Digits of each operand; default 3. */
  digits?: number;
  /** Problems held out of training for the score; default 1000. */
  heldOut?: number;
  /** Seed that picks the held-out problems; default 1234. */
  seed?: number;
}

/** Multi-digit addition as next-token prediction. */
export class AdditionTask implements Dataset {
  /** Digits of each operand. */
  readonly digits: number;
  /** Vocabulary: `+`, the ten digits and `=`. */
  readonly tokenizer: CharTokenizer;
  /** Length of the prompt `"123+045="` (2 D + 2). */
  readonly promptLen: number;
  /** Sequence length of the batches: prompt plus answer minus one (3 D + 2). */
  readonly seqLen: number;
  /** The held-out problems as [a, b] pairs. */
  readonly heldOut: readonly (readonly [number, number])[];
  readonly #heldOutKeys: Set<number>;
  readonly #limit: number;

  /**
   * Build the task and pick its held-out problems.
   *
   * @param opts digits, held-out count, seed
   */
  constructor(opts: AdditionOptions = {}) {
    const D = opts.digits ?? 3;
    if (!Number.isInteger(D) || D < 1 || D > 7) {
      throw new RangeError(`Addition digits must be an integer in [1, 7], got ${D}`);
    }
    this.#limit = 10 ** D;
    const pairs = this.#limit * this.#limit;
    const n = opts.heldOut ?? 1000;
    if (!Number.isInteger(n) || n < 1 || n > pairs / 4) {
      throw new RangeError(
        `Held-out problems must be an integer in [1, ${pairs / 4}] for ${D} digits, got ${n}`,
      );
    }
    this.digits = D;
    this.tokenizer = new CharTokenizer([..."+0123456789="]);
    this.promptLen = 2 * D + 2;
    this.seqLen = 3 * D + 2;
    const rng = new Rng(opts.seed ?? 1234);
    this.#heldOutKeys = new Set();
    const held: [number, number][] = [];
    while (held.length < n) {
      const a = rng.int(this.#limit), b = rng.int(this.#limit);
      const key = a * this.#limit + b;
      if (this.#heldOutKeys.has(key)) continue;
      this.#heldOutKeys.add(key);
      held.push([a, b]);
    }
    this.heldOut = held;
  }

  /** A description. */
  get name(): string {
    return `addition of ${this.digits}-digit numbers`;
  }

  /**
   * Whether a problem is held out of training.
   *
   * @param a first operand
   * @param b second operand
   * @returns true when held out
   */
  isHeldOut(a: number, b: number): boolean {
    return this.#heldOutKeys.has(a * this.#limit + b);
  }

  /**
   * The prompt of a problem, e.g. `"123+045="`.
   *
   * @param a first operand
   * @param b second operand
   * @returns the prompt
   */
  prompt(a: number, b: number): string {
    const D = this.digits;
    return `${String(a).padStart(D, "0")}+${String(b).padStart(D, "0")}=`;
  }

  /**
   * The answer as the model writes it: the sum's D+1 digits, reversed.
   *
   * @param a first operand
   * @param b second operand
   * @returns the answer
   */
  answer(a: number, b: number): string {
    return [...String(a + b).padStart(this.digits + 1, "0")].reverse().join("");
  }

  /**
   * Write one problem as a row of a batch: inputs are the whole text but its last character,
   * targets the next characters, -1 on prompt positions.
   */
  #writeRow(a: number, b: number, inputs: Int32Array, targets: Int32Array, row: number): void {
    const ids = this.tokenizer.encode(this.prompt(a, b) + this.answer(a, b));
    const T = this.seqLen, o = row * T;
    for (let t = 0; t < T; t++) {
      inputs[o + t] = ids[t];
      targets[o + t] = t + 1 >= this.promptLen ? ids[t + 1] : -1;
    }
  }

  /**
   * Problems drawn uniformly from those not held out.
   *
   * @param B problems per batch
   * @param seed the seed
   * @returns the stream
   */
  trainBatches(B: number, seed: number): BatchSource {
    if (!Number.isInteger(B) || B < 1) {
      throw new RangeError(`Batch size must be an integer >= 1, got ${B}`);
    }
    const rng = new Rng(seed);
    let batches = 0;
    const T = this.seqLen;
    return {
      B,
      T,
      next: (rows?: RowRange): Batch => {
        const { from, to } = checkRows(rows, B);
        const inputs = new Int32Array((to - from) * T), targets = new Int32Array((to - from) * T);
        for (let r = 0; r < B; r++) {
          let a: number, b: number;
          do {
            a = rng.int(this.#limit);
            b = rng.int(this.#limit);
          } while (this.isHeldOut(a, b));
          if (r >= from && r < to) this.#writeRow(a, b, inputs, targets, r - from);
        }
        batches++;
        return { inputs, targets, B: to - from, T };
      },
      getState: (): BatchState => ({ batches, rng: rng.getState() }),
      setState: (s: BatchState): void => {
        rng.setState(s.rng);
        batches = s.batches;
      },
    };
  }

  /**
   * The held-out problems as teacher-forced batches (for a validation loss).
   *
   * @param B rows per batch (the last batch may have fewer)
   * @param maxBatches at most this many
   * @returns the batches
   */
  validationBatches(B: number, maxBatches: number): Batch[] {
    const out: Batch[] = [];
    const T = this.seqLen;
    for (let i = 0; i < this.heldOut.length && out.length < maxBatches; i += B) {
      const rows = Math.min(B, this.heldOut.length - i);
      const inputs = new Int32Array(rows * T), targets = new Int32Array(rows * T);
      for (let r = 0; r < rows; r++) {
        const [a, b] = this.heldOut[i + r];
        this.#writeRow(a, b, inputs, targets, r);
      }
      out.push({ inputs, targets, B: rows, T });
    }
    return out;
  }

  /**
   * Exact-match score of greedy decoding on the held-out problems: the model reads the prompts
   * of B problems at once, then its most likely next token is appended, D+1 times, each pass
   * one token per problem through the model's key/value cache; a problem counts when all D+1
   * answer digits are right. Samples show the sums the usual way round.
   *
   * @param logits the model's logits for inputs [B, T] after `past` cached positions
   * @param B rows per pass (the last chunk is padded)
   * @param limit score only the first `limit` held-out problems
   * @returns the score with a few samples
   */
  async score(logits: LogitsFn, B: number, limit = Infinity): Promise<Score> {
    const P = this.promptLen, V = this.tokenizer.vocabSize, D = this.digits;
    const problems = this.heldOut.slice(0, Math.min(limit, this.heldOut.length));
    let correct = 0;
    const samples: Sample[] = [];
    for (let i = 0; i < problems.length; i += B) {
      const chunk = problems.slice(i, i + B);
      const prompts = new Int32Array(B * P);
      for (let r = 0; r < B; r++) {
        const [a, b] = chunk[Math.min(r, chunk.length - 1)];
        prompts.set(this.tokenizer.encode(this.prompt(a, b)), r * P);
      }
      const answers = Array.from({ length: chunk.length }, () => new Int32Array(D + 1));
      const next = new Int32Array(B);
      let out = await logits(prompts, B, P, 0);
      let T = P;
      for (let k = 0; k <= D; k++) {
        for (let r = 0; r < B; r++) {
          const base = (r * T + T - 1) * V;
          let best = 0;
          for (let v = 1; v < V; v++) if (out[base + v] > out[base + best]) best = v;
          if (r < chunk.length) answers[r][k] = best;
          next[r] = best;
        }
        if (k < D) {
          out = await logits(next, B, 1, P + k);
          T = 1;
        }
      }
      for (let r = 0; r < chunk.length; r++) {
        const [a, b] = chunk[r];
        const got = this.tokenizer.decode(answers[r]);
        const ok = got === this.answer(a, b);
        if (ok) correct++;
        if (samples.length < 8) {
          samples.push({
            prompt: `${a}+${b}=`,
            expected: String(a + b),
            predicted: [...got].reverse().join("").replace(/^0+(?=.)/, ""),
            correct: ok,
          });
        }
      }
    }
    const total = problems.length;
    return { correct, total, accuracy: total ? correct / total : 0, samples };
  }
}
