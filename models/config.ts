/**
 * The GPT configuration, its validation, and the GPT-2 names and shapes of its parameters.
 *
 * @module
 */

import type { ParamSpec } from "../optim/mod.ts";

/** The shape of a GPT. */
export interface GptConfig {
  /** Vocabulary size V. */
  vocab: number;
  /** Longest sequence (number of positions). */
  ctx: number;
  /** Model width C. */
  dim: number;
  /** Number of transformer blocks. */
  layers: number;
  /** Attention heads per block; must divide `dim`. */
  heads: number;
  /** Whether the output head reuses `wte` (default true, as GPT-2). */
  tied?: boolean;
  /** MLP hidden width (default 4 * dim). */
  hidden?: number;
  /** Layernorm epsilon (default 1e-5). */
  lnEps?: number;
}

/** A validated {@linkcode GptConfig} with every default filled in. */
export type ResolvedGptConfig = Readonly<Required<GptConfig>>;

const KEYS = ["vocab", "ctx", "dim", "layers", "heads", "tied", "hidden", "lnEps"];

/**
 * Check a GPT configuration and fill in its defaults.
 *
 * @example
 * ```ts
 * import { resolveGptConfig } from "./config.ts";
 * const c = resolveGptConfig({ vocab: 16, ctx: 8, dim: 32, layers: 2, heads: 4 });
 * console.assert(c.hidden === 128 && c.tied);
 * ```
 *
 * @param config the configuration
 * @returns the configuration with defaults
 * @throws {TypeError} for an unknown key or a value of the wrong type
 * @throws {RangeError} for a size that is not a positive integer, or heads not dividing dim
 */
export function resolveGptConfig(config: GptConfig): ResolvedGptConfig {
  if (config === null || typeof config !== "object") {
    throw new TypeError("The GPT config must be an object like { vocab, ctx, dim, layers, heads }");
  }
  for (const k of Object.keys(config)) {
    if (!KEYS.includes(k)) {
      throw new TypeError(`Unknown GPT config key "${k}": the keys are ${KEYS.join(", ")}`);
    }
  }
  const c = config as unknown as Record<string, unknown>;
  for (const k of ["vocab", "ctx", "dim", "layers", "heads", "hidden"]) {
    if (k === "hidden" && c[k] === undefined) continue;
    const v = c[k];
    if (typeof v !== "number") {
      throw new TypeError(`GPT config "${k}" must be a number, got ${JSON.stringify(v)}`);
    }
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`GPT config "${k}" must be a positive integer, got ${v}`);
    }
  }
  if (config.dim % config.heads !== 0) {
    throw new RangeError(
      `GPT config: dim ${config.dim} is not divisible by heads ${config.heads}; choose a dim ` +
        `that is a multiple of heads (e.g. ${Math.ceil(config.dim / config.heads) * config.heads})`,
    );
  }
  if (config.tied !== undefined && typeof config.tied !== "boolean") {
    throw new TypeError(
      `GPT config "tied" must be true or false, got ${JSON.stringify(config.tied)}`,
    );
  }
  const lnEps = config.lnEps ?? 1e-5;
  if (typeof lnEps !== "number" || !(lnEps > 0) || !Number.isFinite(lnEps)) {
    throw new RangeError(`GPT config "lnEps" must be a positive number, got ${lnEps}`);
  }
  return Object.freeze({
    vocab: config.vocab,
    ctx: config.ctx,
    dim: config.dim,
    layers: config.layers,
    heads: config.heads,
    tied: config.tied ?? true,
    hidden: config.hidden ?? 4 * config.dim,
    lnEps,
  });
}

/**
 * Every parameter of a GPT in GPT-2's naming, order and `[in, out]` layout: `wte`, `wpe`,
 * `h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}`, `ln_f.*`,
 * and `lm_head.weight` `[V, C]` when untied.
 *
 * @param config the configuration
 * @returns the parameter specs (2-D weights decay, vectors do not)
 */
export function gptParamSpecs(config: GptConfig): ParamSpec[] {
  const { vocab: V, ctx, dim: C, layers, tied, hidden: F } = resolveGptConfig(config);
  const s: ParamSpec[] = [{ name: "wte", shape: [V, C] }, { name: "wpe", shape: [ctx, C] }];
  for (let i = 0; i < layers; i++) {
    const p = `h.${i}`;
    s.push(
      { name: `${p}.ln_1.weight`, shape: [C] },
      { name: `${p}.ln_1.bias`, shape: [C] },
      { name: `${p}.attn.c_attn.weight`, shape: [C, 3 * C] },
      { name: `${p}.attn.c_attn.bias`, shape: [3 * C] },
      { name: `${p}.attn.c_proj.weight`, shape: [C, C] },
      { name: `${p}.attn.c_proj.bias`, shape: [C] },
      { name: `${p}.ln_2.weight`, shape: [C] },
      { name: `${p}.ln_2.bias`, shape: [C] },
      { name: `${p}.mlp.c_fc.weight`, shape: [C, F] },
      { name: `${p}.mlp.c_fc.bias`, shape: [F] },
      { name: `${p}.mlp.c_proj.weight`, shape: [F, C] },
      { name: `${p}.mlp.c_proj.bias`, shape: [C] },
    );
  }
  s.push({ name: "ln_f.weight", shape: [C] }, { name: "ln_f.bias", shape: [C] });
  if (!tied) s.push({ name: "lm_head.weight", shape: [V, C] });
  return s;
}
