/**
 * Checkpoints in the safetensors format, readable by other tools: parameters under their
 * GPT-2 names with their serial shapes, optimizer state as `optimizer.<buffer>.<name>` (AdamW:
 * `m`, `v`; SGD: `momentum`), and in the metadata the step, RNG and loss-scaler state and the
 * run's own state (e.g. the data position). A `config.json` beside it holds the configuration.
 *
 * The leader writes the file one tensor at a time as the ranks send their pieces (nothing is
 * built in memory); every rank reads the tensors it needs one at a time.
 *
 * @module
 */
import type { ResolvedGptConfig } from "../models/mod.ts";
import {
  openSafetensors,
  type SafetensorsReader,
  SafetensorsWriter,
  toFloat32,
} from "../models/mod.ts";
import type { LossScalerState } from "../optim/mod.ts";

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

/** A tensor of a checkpoint: its name and serial shape. */
export interface CheckpointTensor {
  /** GPT-2 name, or `optimizer.<buffer>.<name>`. */
  readonly name: string;
  /** Serial shape. */
  readonly shape: readonly number[];
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

/** The leader's side of a save: one tensor at a time, then the configuration. */
export interface CheckpointWriter {
  /**
   * Write the next tensor of the plan.
   *
   * @param name its name
   * @param data its serial values
   */
  write(name: string, data: Float32Array): Promise<void>;
  /**
   * Close the file, move it into place, and write `config.json` beside it.
   *
   * @param config the configuration to write as JSON
   */
  finish(config: Record<string, unknown>): Promise<void>;
}

/**
 * Start writing a checkpoint into `dir` (created if needed). The file goes to a temporary
 * name and is renamed into place by `finish`, so an interrupted save leaves the previous
 * checkpoint whole.
 *
 * @param dir the directory
 * @param plan every tensor in the order they will be written
 * @param meta the state for the metadata
 * @param model the model's configuration
 * @param optimizer the optimizer's kind
 * @returns the writer
 */
export async function createCheckpointWriter(
  dir: string,
  plan: readonly CheckpointTensor[],
  meta: CheckpointMeta,
  model: ResolvedGptConfig,
  optimizer: string,
): Promise<CheckpointWriter> {
  await Deno.mkdir(dir, { recursive: true });
  const file = join(dir, CHECKPOINT_FILE);
  const w = await SafetensorsWriter.create(
    file + ".tmp",
    plan.map((p) => ({ name: p.name, dtype: "F32" as const, shape: p.shape })),
    {
      format: FORMAT,
      model: JSON.stringify(model),
      optimizer,
      state: JSON.stringify(meta),
    },
  );
  return {
    write: (name, data) => w.write(name, data),
    async finish(config) {
      await w.close();
      await Deno.rename(file + ".tmp", file);
      const cfg = join(dir, CONFIG_FILE);
      await Deno.writeTextFile(cfg + ".tmp", JSON.stringify(config, null, 2) + "\n");
      await Deno.rename(cfg + ".tmp", cfg);
    },
  };
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

/** A checkpoint opened for reading, tensor by tensor. */
export interface CheckpointReader {
  /** The saved state. */
  readonly meta: CheckpointMeta;
  /**
   * One tensor, checked against the serial shape the caller expects.
   *
   * @param name its name
   * @param shape the expected serial shape
   * @returns its values
   */
  tensor(name: string, shape: readonly number[]): Promise<Float32Array>;
  /** Close the file. */
  close(): void;
}

/**
 * Open `checkpoint.safetensors` in `dir` after checking its header, that it was saved from a
 * model of this shape, and with this optimizer.
 *
 * @param dir the directory
 * @param model the model's configuration
 * @param optimizer the optimizer's kind
 * @returns the reader
 * @throws {TypeError} when the file is missing or corrupt, or was saved from another model
 *   shape or optimizer
 */
export async function openCheckpoint(
  dir: string,
  model: ResolvedGptConfig,
  optimizer: string,
): Promise<CheckpointReader> {
  const path = join(dir, CHECKPOINT_FILE);
  try {
    await Deno.stat(path);
  } catch {
    throw new TypeError(`No checkpoint in "${dir}": ${path} is missing`);
  }
  const file: SafetensorsReader = await openSafetensors(path);
  try {
    const md = file.metadata;
    if (md.format !== FORMAT) {
      throw new TypeError(`${path} is not a Loom checkpoint (metadata format is "${md.format}")`);
    }
    let meta: CheckpointMeta, saved: Record<string, unknown>;
    try {
      meta = JSON.parse(md.state!);
      saved = JSON.parse(md.model!);
    } catch (e) {
      throw new TypeError(`Corrupt checkpoint ${path}: bad metadata (${(e as Error).message})`);
    }
    if (
      !Number.isInteger(meta?.step) || !Number.isInteger(meta?.optimizerSteps) ||
      !Array.isArray(meta?.rng) || meta.rng.length !== 5
    ) {
      throw new TypeError(`Corrupt checkpoint ${path}: its state lacks step or RNG`);
    }
    const mine = model as unknown as Record<string, unknown>;
    const diffs = Object.keys(mine).filter((k) => saved[k] !== mine[k]);
    if (diffs.length > 0) {
      throw new TypeError(
        `Checkpoint ${path} is of another model shape: ` +
          diffs.map((k) => `${k} ${saved[k]} there vs ${mine[k]} here`).join(", ") +
          ": give the same model flags as the saved run (or none)",
      );
    }
    if (md.optimizer !== optimizer) {
      throw new TypeError(
        `Checkpoint ${path} was saved with optimizer "${md.optimizer}", this run uses ` +
          `"${optimizer}"`,
      );
    }
    return {
      meta,
      async tensor(name, shape) {
        const e = file.entries.get(name);
        if (!e) throw new TypeError(`Corrupt checkpoint ${path}: tensor "${name}" is missing`);
        if (e.dtype !== "F32" || e.shape.join(",") !== shape.join(",")) {
          throw new TypeError(
            `Corrupt checkpoint ${path}: "${name}" is ${e.dtype} [${e.shape}], ` +
              `expected F32 [${shape}]`,
          );
        }
        return toFloat32({ dtype: e.dtype, shape: e.shape, bytes: await file.read(name) });
      },
      close: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}
