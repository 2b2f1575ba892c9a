/**
 * What the engine asks of a data set: a tokenizer, a training stream, fixed validation batches
 * and, for a task, a held-out score.
 *
 * @module
 */
import type { Batch, BatchSource } from "./batches.ts";
import type { Tokenizer, TokenizerJSON } from "./tokenizers.ts";

/**
 * Logits of a model for a batch: given inputs [B, T], returns logits [B, T, V] row-major. With
 * `past`, decoding with a key/value cache: `past` positions of every row went in before (0
 * starts new rows) and the inputs are the next T of each.
 */
export type LogitsFn = (
  inputs: Int32Array,
  B: number,
  T: number,
  past?: number,
) => Promise<Float32Array>;

/** One scored problem, in readable form. */
export interface Sample {
  /** The prompt, e.g. `"123+045="`. */
  prompt: string;
  /** The right answer. */
  expected: string;
  /** What the model answered. */
  predicted: string;
  /** Whether they match exactly. */
  correct: boolean;
}

/** A held-out score. */
export interface Score {
  /** Problems answered exactly right. */
  correct: number;
  /** Problems scored. */
  total: number;
  /** correct / total. */
  accuracy: number;
  /** The first few problems. */
  samples: Sample[];
}

/** A data set the engine trains on. */
export interface Dataset {
  /** A short description, e.g. `"addition of 3-digit numbers"` or the file's path. */
  readonly name: string;
  /** The tokenizer (saved with the run). */
  readonly tokenizer: Tokenizer;
  /** Sequence length of the batches. */
  readonly seqLen: number;
  /** A deterministic training stream of batches of `B` rows from `seed`. */
  trainBatches(B: number, seed: number): BatchSource;
  /** Fixed validation batches of up to `B` rows, at most `maxBatches` of them. */
  validationBatches(B: number, maxBatches: number): Batch[];
  /**
   * Score the model on held-out problems by greedy decoding (tasks only; text data sets have
   * no such score and leave this undefined).
   */
  score?(logits: LogitsFn, B: number, limit?: number): Promise<Score>;
}

/**
 * A data set as plain, structured-clonable data, to hand to the ranks of a run: the embedded
 * task by its options, a text by its tokens (on a SharedArrayBuffer, so Workers map the same
 * memory instead of reading and tokenizing the file again) and its tokenizer.
 */
export type DatasetDescriptor =
  | { readonly kind: "addition"; readonly digits: number; readonly heldOut?: number }
  | {
    readonly kind: "text";
    readonly name: string;
    readonly tokens: Int32Array;
    readonly tokenizer: TokenizerJSON;
    readonly seqLen: number;
    readonly valTokens: number;
  };
