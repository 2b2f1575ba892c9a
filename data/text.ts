/**
 * Any UTF-8 text file as a data set: tokenized whole, the first part for training and the last
 * part for validation.
 *
 * @module
 */
import { type Batch, type BatchSource, sequentialBatches, WindowSampler } from "./batches.ts";
import type { Dataset } from "./dataset.ts";
import {
  CharTokenizer,
  loadGpt2Tokenizer,
  type Tokenizer,
  type TokenizerKind,
} from "./tokenizers.ts";

/** Options of {@linkcode loadTextDataset}. */
export interface TextDatasetOptions {
  /** Sequence length of the batches. */
  seqLen: number;
  /** `"char"` (default) or `"gpt2"`. */
  tokenizer?: TokenizerKind;
  /** A tokenizer to reuse (a resumed run's); overrides `tokenizer`. */
  reuse?: Tokenizer;
  /** Fraction of the tokens kept for validation, default 0.1. */
  valFraction?: number;
}

/** A tokenized text split into training and validation tokens. */
export class TextDataset implements Dataset {
  /** The file's path. */
  readonly name: string;
  /** The tokenizer. */
  readonly tokenizer: Tokenizer;
  /** Sequence length. */
  readonly seqLen: number;
  /** Training tokens. */
  readonly train: Int32Array;
  /** Validation tokens. */
  readonly val: Int32Array;

  /**
   * Split tokens; checks there are enough for the sequence length.
   *
   * @param name a description
   * @param tokenizer the tokenizer that made the tokens
   * @param tokens all tokens
   * @param seqLen sequence length
   * @param valFraction fraction kept for validation
   */
  constructor(
    name: string,
    tokenizer: Tokenizer,
    tokens: Int32Array,
    seqLen: number,
    valFraction = 0.1,
  ) {
    if (!(valFraction >= 0 && valFraction < 1)) {
      throw new RangeError(`valFraction must be in [0, 1), got ${valFraction}`);
    }
    const nVal = Math.floor(tokens.length * valFraction);
    this.name = name;
    this.tokenizer = tokenizer;
    this.seqLen = seqLen;
    this.train = tokens.subarray(0, tokens.length - nVal);
    this.val = tokens.subarray(tokens.length - nVal);
    if (this.train.length < seqLen + 1) {
      throw new RangeError(
        `${name} has ${tokens.length} tokens (${this.train.length} for training), too few for ` +
          `a sequence length of ${seqLen}: lower --ctx below ${
            Math.max(1, this.train.length - 1)
          } ` +
          `or use a longer text`,
      );
    }
  }

  /**
   * Random windows of the training tokens.
   *
   * @param B batch size
   * @param seed the seed
   * @returns the stream
   */
  trainBatches(B: number, seed: number): BatchSource {
    return new WindowSampler(this.train, B, this.seqLen, seed);
  }

  /**
   * Consecutive windows of the validation tokens (fewer rows when the text is short).
   *
   * @param B batch size
   * @param maxBatches at most this many
   * @returns the batches (none when the validation part is shorter than one sequence)
   */
  validationBatches(B: number, maxBatches: number): Batch[] {
    const rows = Math.min(B, Math.floor((this.val.length - 1) / this.seqLen));
    if (rows < 1) return [];
    return sequentialBatches(this.val, rows, this.seqLen, maxBatches);
  }
}

/**
 * Read a UTF-8 text file and tokenize it. A missing, empty or non-UTF-8 file is an error that
 * says so, raised before any work.
 *
 * @example
 * ```ts
 * import { loadTextDataset } from "./text.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "to be or not to be, ".repeat(20));
 * const ds = await loadTextDataset(path, { seqLen: 16 });
 * console.assert(ds.trainBatches(4, 1).next().inputs.length === 64);
 * ```
 *
 * @param path the file
 * @param opts sequence length, tokenizer, validation fraction
 * @returns the data set
 */
export async function loadTextDataset(
  path: string,
  opts: TextDatasetOptions,
): Promise<TextDataset> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new TypeError(`Data file "${path}" does not exist: pass --data a UTF-8 text file`);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new TypeError(`Data path "${path}" is a directory: pass --data a UTF-8 text file`);
    }
    throw new TypeError(`Cannot read data file "${path}": ${(e as Error).message}`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new TypeError(`Data file "${path}" is not valid UTF-8 text`);
  }
  if (text.trim().length === 0) {
    throw new TypeError(`Data file "${path}" is empty: it needs some text to train on`);
  }
  const tokenizer = opts.reuse ??
    (opts.tokenizer === "gpt2" ? await loadGpt2Tokenizer() : CharTokenizer.fromText(text));
  return new TextDataset(path, tokenizer, tokenizer.encode(text), opts.seqLen, opts.valFraction);
}
