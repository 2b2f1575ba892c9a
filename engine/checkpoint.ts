/**
 * Checkpoints in the safetensors format, readable by other tools: parameters under their
 * GPT-2 names, optimizer state as `optimizer.<buffer>.<name>` (AdamW: `m`, `v`; SGD:
 * `momentum`), and in the metadata the step, RNG and loss-scaler state and the run's own state
 * (e.g. the data position). A `config.json` beside it holds the configuration.
 *
 * @module
 */
import type { Backend, HostArray, Tensor } from "../kernels/mod.ts";
import type { ResolvedGptConfig } from "../models/mod.ts";
import { readSafetensors, type SafetensorsInput, writeSafetensors } from "../models/mod.ts";
import type { FlatLayout, LossScalerState, Optimizer } from "../optim/mod.ts";

/** The checkpoint file inside a run directory. */
export const CHECKPOINT_FILE = "checkpoint.safetensors";
/** The configuration file inside a run directory. */
export const CONFIG_FILE = "config.json";
const FORMAT = "loom-checkpoint-1";

/** The state kept in a checkpoint's metadata. */
export interface CheckpointMeta {
  /** Steps taken (the next step's schedule index). */
  step: number;
  /** Steps the optimizer took (AdamW's bias correction). */
  optimizerSteps: number;
  /** The engine RNG's state. */
  rng: number[];
  /** The loss scaler's state, or null without fp16. */
  lossScaler: LossScalerState | null;
  /** The run's own state (data position, ...). */
  extra: Record<string, unknown>;
}

/** What a checkpoint is written from and read into. */
export interface CheckpointTarget {
  /** The backend holding the buffers. */
  readonly backend: Backend;
  /** The model's buffers and shape. */
  readonly model: {
    readonly config: ResolvedGptConfig;
    readonly layout: FlatLayout;
    readonly store: { readonly params: Tensor };
  };
  /** The optimizer and its state buffers. */
  readonly optimizer: Optimizer;
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

/**
 * Write `checkpoint.safetensors` and `config.json` into `dir`, each through a temporary file
 * renamed into place, so that an interrupted save leaves the previous checkpoint whole.
 *
 * @param dir the directory (created if needed)
 * @param target the model and optimizer
 * @param meta the state for the metadata
 * @param config the configuration to write as JSON
 */
export async function writeCheckpoint(
  dir: string,
  target: CheckpointTarget,
  meta: CheckpointMeta,
  config: Record<string, unknown>,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const { backend, model, optimizer } = target;
  const tensors = new Map<string, SafetensorsInput>();
  const add = (prefix: string, flat: HostArray) => {
    for (const s of model.layout.slots) {
      const data = Float32Array.from(flat.subarray(s.offset, s.offset + s.size));
      tensors.set(prefix + s.name, { shape: s.shape, data });
    }
  };
  add("", await backend.read(model.store.params));
  for (const [key, t] of Object.entries(optimizer.stateTensors())) {
    add(`optimizer.${key}.`, await backend.read(t));
  }
  const metadata = {
    format: FORMAT,
    model: JSON.stringify(model.config),
    optimizer: optimizer.kind,
    state: JSON.stringify(meta),
  };
  const file = join(dir, CHECKPOINT_FILE);
  await writeSafetensors(file + ".tmp", tensors, metadata);
  await Deno.rename(file + ".tmp", file);
  const cfg = join(dir, CONFIG_FILE);
  await Deno.writeTextFile(cfg + ".tmp", JSON.stringify(config, null, 2) + "\n");
  await Deno.rename(cfg + ".tmp", cfg);
}

/**
 * Read the `config.json` of a checkpoint directory.
 *
 * @param dir the directory
 * @returns the parsed configuration
 * @throws {TypeError} when there is no checkpoint there or the file is not JSON
 */
export async function readCheckpointConfig(dir: string): Promise<Record<string, unknown>> {
  const path = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new TypeError(
      `No checkpoint in "${dir}": ${path} is missing (pass --resume the --out directory ` +
        `of an earlier run)`,
    );
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object") throw new Error("not an object");
    return v;
  } catch (e) {
    throw new TypeError(`Corrupt checkpoint config ${path}: ${(e as Error).message}`);
  }
}

/**
 * Read `checkpoint.safetensors` from `dir` into the target's parameter and optimizer buffers,
 * after checking its header, its model shape, its optimizer and every tensor's shape.
 *
 * @param dir the directory
 * @param target the model and optimizer to fill
 * @returns the saved state
 * @throws {TypeError} when the file is missing or corrupt, or was saved from another model
 *   shape or optimizer
 */
export async function readCheckpoint(
  dir: string,
  target: CheckpointTarget,
): Promise<CheckpointMeta> {
  const path = join(dir, CHECKPOINT_FILE);
  try {
    await Deno.stat(path);
  } catch {
    throw new TypeError(`No checkpoint in "${dir}": ${path} is missing`);
  }
  const file = await readSafetensors(path);
  const md = file.metadata;
  if (md.format !== FORMAT) {
    throw new TypeError(`${path} is not a Loom checkpoint (metadata format is "${md.format}")`);
  }
  let meta: CheckpointMeta, saved: Record<string, unknown>;
  try {
    meta = JSON.parse(md.state);
    saved = JSON.parse(md.model);
  } catch (e) {
    throw new TypeError(`Corrupt checkpoint ${path}: bad metadata (${(e as Error).message})`);
  }
  if (
    !Number.isInteger(meta?.step) || !Number.isInteger(meta?.optimizerSteps) ||
    !Array.isArray(meta?.rng) || meta.rng.length !== 5
  ) {
    throw new TypeError(`Corrupt checkpoint ${path}: its state lacks step or RNG`);
  }
  const { backend, model, optimizer } = target;
  const mine = model.config as unknown as Record<string, unknown>;
  const diffs = Object.keys(mine).filter((k) => saved[k] !== mine[k]);
  if (diffs.length > 0) {
    throw new TypeError(
      `Checkpoint ${path} is of another model shape: ` +
        diffs.map((k) => `${k} ${saved[k]} there vs ${mine[k]} here`).join(", ") +
        ": give the same model flags as the saved run (or none)",
    );
  }
  if (md.optimizer !== optimizer.kind) {
    throw new TypeError(
      `Checkpoint ${path} was saved with optimizer "${md.optimizer}", this run uses ` +
        `"${optimizer.kind}"`,
    );
  }
  const load = (prefix: string, t: Tensor) => {
    for (const s of model.layout.slots) {
      const e = file.tensors.get(prefix + s.name);
      if (!e) {
        throw new TypeError(`Corrupt checkpoint ${path}: tensor "${prefix}${s.name}" is missing`);
      }
      if (e.dtype !== "F32" || e.shape.join(",") !== s.shape.join(",")) {
        throw new TypeError(
          `Corrupt checkpoint ${path}: "${prefix}${s.name}" is ${e.dtype} [${e.shape}], ` +
            `expected F32 [${s.shape}]`,
        );
      }
      const b = e.bytes;
      const data = b.byteOffset % 4 === 0
        ? new Float32Array(b.buffer, b.byteOffset, s.size)
        : new Float32Array(b.slice().buffer);
      backend.write(t, data, s.offset);
    }
  };
  load("", model.store.params);
  for (const [key, t] of Object.entries(optimizer.stateTensors())) load(`optimizer.${key}.`, t);
  return meta;
}
