/**
 * Data sets handed from the process that read them to the ranks that train on them, as
 * {@linkcode DatasetDescriptor}s.
 *
 * @module
 */
import type { Dataset, DatasetDescriptor } from "./dataset.ts";
import { AdditionTask } from "./tasks.ts";
import { TextDataset } from "./text.ts";
import { tokenizerFromJSON } from "./tokenizers.ts";

/**
 * Describe a data set so that {@linkcode openDataset} rebuilds it elsewhere (a text's tokens
 * are copied once into shared memory).
 *
 * @example
 * ```ts
 * import { AdditionTask, describeDataset, openDataset } from "./mod.ts";
 * const copy = await openDataset(describeDataset(new AdditionTask({ digits: 2 })));
 * console.assert(copy.seqLen === 8);
 * ```
 *
 * @param ds an addition task or a text data set
 * @returns the descriptor
 * @throws {TypeError} for another kind of data set
 */
export function describeDataset(ds: Dataset): DatasetDescriptor {
  if (ds instanceof AdditionTask) {
    return { kind: "addition", digits: ds.digits, heldOut: ds.heldOut.length };
  }
  if (ds instanceof TextDataset) {
    const n = ds.train.length + ds.val.length;
    const tokens = new Int32Array(new SharedArrayBuffer(4 * n));
    tokens.set(ds.train, 0);
    tokens.set(ds.val, ds.train.length);
    return {
      kind: "text",
      name: ds.name,
      tokens,
      tokenizer: ds.tokenizer.toJSON(),
      seqLen: ds.seqLen,
      valTokens: ds.val.length,
    };
  }
  throw new TypeError(`Cannot hand this data set to other ranks: ${ds.name}`);
}

/**
 * Rebuild a data set from its descriptor.
 *
 * @param d the descriptor
 * @returns the data set
 */
export async function openDataset(d: DatasetDescriptor): Promise<Dataset> {
  if (d.kind === "addition") return new AdditionTask({ digits: d.digits, heldOut: d.heldOut });
  // The fraction that gives back exactly `valTokens` validation tokens.
  const valFraction = (d.valTokens + 0.5) / d.tokens.length;
  const tokenizer = await tokenizerFromJSON(d.tokenizer);
  return new TextDataset(d.name, tokenizer, d.tokens, d.seqLen, valFraction);
}
