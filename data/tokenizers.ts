/**
 * Tokenizers: a character-level one whose vocabulary comes from the text (and is saved with the
 * run), and GPT-2's byte-level BPE from the pinned npm package `gpt-tokenizer`, loaded only when
 * asked for.
 *
 * @module
 */

/** The kinds of tokenizer. */
export type TokenizerKind = "char" | "gpt2";

/** The kinds, for command-line checks. */
export const TOKENIZER_KINDS: readonly TokenizerKind[] = ["char", "gpt2"];

/** What a run saves to rebuild its tokenizer. */
export type TokenizerJSON = { kind: "char"; chars: string[] } | { kind: "gpt2" };

/** Text to token ids and back. */
export interface Tokenizer {
  /** `"char"` or `"gpt2"`. */
  readonly kind: TokenizerKind;
  /** Number of distinct ids; every id is in [0, vocabSize). */
  readonly vocabSize: number;
  /** Token ids of `text`. */
  encode(text: string): Int32Array;
  /** The text of `ids`. */
  decode(ids: ArrayLike<number>): string;
  /** What to save so that {@linkcode tokenizerFromJSON} rebuilds the same tokenizer. */
  toJSON(): TokenizerJSON;
}

/**
 * A character-level tokenizer over Unicode code points; ids follow the sorted characters.
 *
 * @example
 * ```ts
 * import { CharTokenizer } from "./tokenizers.ts";
 * const tok = CharTokenizer.fromText("hello");
 * console.assert(tok.vocabSize === 4 && tok.decode(tok.encode("hole")) === "hole");
 * ```
 */
export class CharTokenizer implements Tokenizer {
  /** Always `"char"`. */
  readonly kind = "char";
  /** The characters, in id order. */
  readonly chars: readonly string[];
  readonly #ids: Map<string, number>;

  /**
   * A tokenizer over the given characters (one code point each, no repeats).
   *
   * @param chars the vocabulary in id order
   */
  constructor(chars: readonly string[]) {
    if (chars.length === 0) throw new RangeError("A character vocabulary cannot be empty");
    this.chars = [...chars];
    this.#ids = new Map();
    for (const [i, c] of this.chars.entries()) {
      if (typeof c !== "string" || [...c].length !== 1) {
        throw new TypeError(
          `Vocabulary entry ${i} must be one character, got ${JSON.stringify(c)}`,
        );
      }
      if (this.#ids.has(c)) throw new RangeError(`Character ${JSON.stringify(c)} appears twice`);
      this.#ids.set(c, i);
    }
  }

  /**
   * The tokenizer whose vocabulary is every distinct character of `text`, sorted.
   *
   * @param text the corpus
   * @returns the tokenizer
   */
  static fromText(text: string): CharTokenizer {
    return new CharTokenizer([...new Set(text)].sort());
  }

  /** Number of characters in the vocabulary. */
  get vocabSize(): number {
    return this.chars.length;
  }

  /**
   * Encode; a character outside the vocabulary is a `RangeError`.
   *
   * @param text the text
   * @returns the ids
   */
  encode(text: string): Int32Array {
    const cps = [...text];
    const out = new Int32Array(cps.length);
    for (let i = 0; i < cps.length; i++) {
      const id = this.#ids.get(cps[i]);
      if (id === undefined) {
        throw new RangeError(
          `Character ${JSON.stringify(cps[i])} is not in this tokenizer's vocabulary of ` +
            `${this.chars.length} characters`,
        );
      }
      out[i] = id;
    }
    return out;
  }

  /**
   * Decode.
   *
   * @param ids token ids
   * @returns the text
   */
  decode(ids: ArrayLike<number>): string {
    let s = "";
    for (let i = 0; i < ids.length; i++) {
      const c = this.chars[ids[i]];
      if (c === undefined) {
        throw new RangeError(`Token id ${ids[i]} is outside [0, ${this.vocabSize})`);
      }
      s += c;
    }
    return s;
  }

  /**
   * The vocabulary, to save with a run.
   *
   * @returns `{ kind: "char", chars }`
   */
  toJSON(): TokenizerJSON {
    return { kind: "char", chars: [...this.chars] };
  }
}

/** The pinned package that ships GPT-2's vocabulary and merges (`r50k_base`). */
export const GPT2_TOKENIZER_MODULE = "npm:gpt-tokenizer@3.4.0/encoding/r50k_base";

interface Gpt2Module {
  encode(text: string): number[];
  decode(ids: Iterable<number>): string;
}

/**
 * GPT-2's byte-level BPE (50,257 ids), from {@linkcode GPT2_TOKENIZER_MODULE}. The package is
 * fetched from the npm registry on first use and cached by Deno.
 *
 * @example
 * ```ts ignore
 * import { loadGpt2Tokenizer } from "./tokenizers.ts";
 * const tok = await loadGpt2Tokenizer();
 * console.log(tok.encode("Hello world")); // Int32Array [15496, 995]
 * ```
 *
 * @returns the tokenizer
 */
export async function loadGpt2Tokenizer(): Promise<Tokenizer> {
  let mod: Gpt2Module;
  try {
    mod = await import(GPT2_TOKENIZER_MODULE) as Gpt2Module;
  } catch (e) {
    throw new Error(
      `Could not load the GPT-2 tokenizer (${GPT2_TOKENIZER_MODULE}): ${(e as Error).message}. ` +
        "It comes from the npm registry on first use; use --tokenizer char offline.",
    );
  }
  return {
    kind: "gpt2",
    vocabSize: 50257,
    encode: (text: string) => Int32Array.from(mod.encode(text)),
    decode: (ids: ArrayLike<number>) => mod.decode(Array.from(ids)),
    toJSON: (): TokenizerJSON => ({ kind: "gpt2" }),
  };
}

/**
 * Rebuild a tokenizer saved with {@linkcode Tokenizer.toJSON}.
 *
 * @param json the saved form
 * @returns the tokenizer
 */
export async function tokenizerFromJSON(json: TokenizerJSON): Promise<Tokenizer> {
  if (json?.kind === "char") return new CharTokenizer(json.chars);
  if (json?.kind === "gpt2") return await loadGpt2Tokenizer();
  throw new TypeError(`Unknown tokenizer in saved run: ${JSON.stringify(json)?.slice(0, 80)}`);
}
