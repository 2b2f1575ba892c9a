/**
 * Checkpoints: sharded, streamed, atomic and reshardable.
 *
 * A run directory holds its checkpoints and a pointer to the newest:
 *
 * ```text
 * <run>/latest                           "checkpoints/step-00000012\n"
 * <run>/checkpoints/step-00000012/
 *   index.json                           every tensor's serial shape and where its pieces are
 *   config.json                          the configuration (engine, layout, the run's own)
 *   rank-00000.safetensors               what world rank 0 owns (fp32), one entry per piece
 *   rank-00001.safetensors               ...
 * <run>/checkpoints/.tmp-step-00000013/  a save in progress (never read)
 * ```
 *
 * Each rank streams the pieces it owns into its own safetensors file, tensor by tensor (the
 * file is never built in memory), hashing the bytes (SHA-256) as they go out, then fsyncs it.
 * Once every rank's shard is on disk, rank 0 writes `index.json` and `config.json` into the
 * temporary directory, fsyncs them and the directory, renames the directory to
 * `step-<8 digits>`, fsyncs `checkpoints/`, and last replaces `latest` (written to a
 * temporary name, fsynced, renamed, the run directory fsynced). Only then are the oldest
 * checkpoints beyond `keep` deleted. A save killed at any point leaves `latest` and the
 * checkpoints it names as they were.
 *
 * The index (`loom-checkpoint-2`) records, per tensor (parameters under their GPT-2 names,
 * optimizer state as `optimizer.<buffer>.<name>`), its serial shape, its tensor-parallel split
 * (`axis`, `parts`, `blocks`, as {@linkcode TensorSplit} describes it) and the shape of each
 * tensor-parallel part, and for each piece: the shard file and the key inside it, the part it
 * belongs to and the flat range `[start, start + n)` it covers within that part, with the
 * data-parallel rank and ZeRO bucket it came from. Every shard file is listed with its byte
 * length and SHA-256. Reading verifies every shard's length and checksum before any value is
 * used, and puts any tensor back together for any layout (another tp split, a vocabulary padded
 * for another tp: the rows past the real vocabulary are trimmed or zero-filled).
 *
 * Checkpoints written before this format (one `checkpoint.safetensors` of serial tensors in a
 * directory) are still read.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ResolvedGptConfig } from "../models/mod.ts";
import {
  gptParamSpecs,
  openSafetensors,
  type SafetensorsReader,
  SafetensorsWriter,
} from "../models/mod.ts";
import type { LossScalerState, TensorSplit } from "../optim/mod.ts";
import { shardTensor, unshardTensor } from "../parallel/mod.ts";

/** The folder of a run directory that holds its checkpoints. */
export const CHECKPOINTS_DIR = "checkpoints";
/** The file of a run directory naming its newest checkpoint (relative to the run directory). */
export const LATEST_FILE = "latest";
/** The index inside a checkpoint directory. */
export const INDEX_FILE = "index.json";
/** The configuration file inside a checkpoint directory. */
export const CONFIG_FILE = "config.json";
/** The `format` of the index. */
export const CHECKPOINT_FORMAT = "loom-checkpoint-2";
/** The single file of the checkpoints of earlier versions (still read). */
export const LEGACY_CHECKPOINT_FILE = "checkpoint.safetensors";
const LEGACY_FORMAT = "loom-checkpoint-1";
const TMP_PREFIX = ".tmp-";
const OLD_PREFIX = ".old-";
const STEP_DIR = /^step-(\d+)$/;

/** The state kept with a checkpoint. */
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

/** A tensor-parallel split as the index records it: {@linkcode TensorSplit} without the index. */
export interface CheckpointSplit {
  /** The dimension of the serial shape that is cut. */
  axis: number;
  /** Pieces per block (the tensor-parallel size it was saved at). */
  parts: number;
  /** Equal blocks the axis is first divided into. */
  blocks: number;
}

/** One piece of a tensor in a shard file. */
export interface CheckpointPiece {
  /** The shard file (in the checkpoint directory). */
  file: string;
  /** The tensor's key inside it. */
  key: string;
  /** The tensor-parallel part it belongs to (0 for a tensor that is not split). */
  part: number;
  /** Its first element in the part's flat values. */
  start: number;
  /** Elements. */
  n: number;
  /** The data-parallel rank that owned it. */
  dpRank: number;
  /** The ZeRO bucket (of the saving rank's layout) it sat in. */
  bucket: number;
}

/** A tensor of a checkpoint. */
export interface CheckpointTensorEntry {
  /** The serial (global) shape. */
  shape: number[];
  /** Element type of every piece. */
  dtype: "F32";
  /** How it was split across the tensor-parallel group; null: whole on every rank. */
  split: CheckpointSplit | null;
  /** The shape of each tensor-parallel part. */
  local: number[];
  /** Axis 0 is the vocabulary (rows past the real vocabulary are padding). */
  vocabRows: boolean;
  /** Its pieces: for every part, ranges that cover it exactly once. */
  pieces: CheckpointPiece[];
}

/** A shard file of a checkpoint. */
export interface CheckpointFileEntry {
  /** The world rank that wrote it. */
  rank: number;
  /** That rank's place in the grid. */
  coords: { dp: number; pp: number; tp: number };
  /** Its length in bytes. */
  bytes: number;
  /** Its SHA-256, hex. */
  sha256: string;
}

/** The layout a checkpoint was saved at. */
export interface CheckpointLayout {
  /** Ranks. */
  worldSize: number;
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Data-parallel size. */
  dp: number;
  /** Model chunks per stage. */
  virtualStages: number;
  /** ZeRO stage. */
  zeroStage: number;
  /** Precision of the compute parameters. */
  precision: string;
}

/** The `index.json` of a checkpoint. */
export interface CheckpointIndex {
  /** {@linkcode CHECKPOINT_FORMAT}. */
  format: string;
  /** Steps taken. */
  step: number;
  /** Step, RNG, loss-scaler and the run's state. */
  meta: CheckpointMeta;
  /** The model's configuration as saved (its `vocab` counts padded rows). */
  model: ResolvedGptConfig;
  /** The real vocabulary: rows from here on of the vocabulary tensors are padding. */
  vocab: number;
  /** The optimizer's kind. */
  optimizer: string;
  /** Its state buffers. */
  state: string[];
  /** The layout it was saved at. */
  layout: CheckpointLayout;
  /** How ZeRO partitioned the saving ranks' state. */
  zero: { stage: number; dp: number; reduceBucketSize: number };
  /** Every shard file, by name. */
  files: Record<string, CheckpointFileEntry>;
  /** Every tensor, by name. */
  tensors: Record<string, CheckpointTensorEntry>;
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return false;
    throw e;
  }
}

/**
 * Flush a directory's entries to disk (after a file in it was created or renamed).
 *
 * @param path the directory
 */
export async function syncDir(path: string): Promise<void> {
  const d = await Deno.open(path, { read: true });
  try {
    await d.sync();
  } finally {
    d.close();
  }
}

async function writeSynced(path: string, text: string): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const b = new TextEncoder().encode(text);
    let done = 0;
    while (done < b.length) done += await f.write(b.subarray(done));
    await f.sync();
  } finally {
    f.close();
  }
}

/**
 * Replace a file atomically: write a temporary file beside it, fsync it, rename it over the
 * file, fsync the directory.
 *
 * @param path the file
 * @param text its new contents
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeSynced(tmp, text);
  await Deno.rename(tmp, path);
  const slash = path.lastIndexOf("/");
  await syncDir(slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash));
}

/**
 * The name of the checkpoint directory of a step: `step-` and the step in 8 digits (more when
 * it needs them), so that names sort by step.
 *
 * @param step steps taken
 * @returns the directory's name
 */
export function checkpointDirName(step: number): string {
  return `step-${String(step).padStart(8, "0")}`;
}

/**
 * The shard file of a world rank.
 *
 * @param rank the rank
 * @returns the file's name
 */
export function shardFileName(rank: number): string {
  return `rank-${String(rank).padStart(5, "0")}.safetensors`;
}

// ---- writing -------------------------------------------------------------------------------

/** A tensor a shard file will hold: its key and shape (fp32). */
export interface ShardPlanEntry {
  /** The key. */
  readonly key: string;
  /** Shape, row-major. */
  readonly shape: readonly number[];
}

/** One rank's shard file being written, one tensor at a time. */
export interface ShardWriter {
  /**
   * Write the next planned tensor.
   *
   * @param key its key
   * @param data its values
   */
  write(key: string, data: Float32Array): Promise<void>;
  /**
   * Fsync and close the file.
   *
   * @returns its length and SHA-256 (of every byte written)
   */
  finish(): Promise<{ bytes: number; sha256: string }>;
  /** Close the file after an error. */
  abort(): void;
}

/**
 * Start a shard file: its header, then its tensors as they come, hashed on the way out.
 *
 * @param path the file
 * @param plan its tensors in the order they will be written
 * @returns the writer
 */
export async function createShardWriter(
  path: string,
  plan: readonly ShardPlanEntry[],
): Promise<ShardWriter> {
  const hash = createHash("sha256");
  const w = await SafetensorsWriter.create(
    path,
    plan.map((p) => ({ name: p.key, dtype: "F32" as const, shape: p.shape })),
    { format: `${CHECKPOINT_FORMAT}-shard` },
    { onBytes: (b) => hash.update(b) },
  );
  return {
    write: (key, data) => w.write(key, data),
    async finish() {
      await w.close();
      return { bytes: w.bytesWritten, sha256: hash.digest("hex") };
    },
    abort: () => w.abort(),
  };
}

/** Where a save in progress writes and where its checkpoint will appear. */
export interface PendingCheckpoint {
  /** The run directory. */
  readonly runDir: string;
  /** The checkpoint's name (`step-<NNNNNNNN>`). */
  readonly name: string;
  /** The temporary directory the shards are written into. */
  readonly tmp: string;
  /** The checkpoint directory it becomes. */
  readonly final: string;
}

/**
 * Where the checkpoint of `step` in `runDir` is written (the same on every rank).
 *
 * @param runDir the run directory
 * @param step steps taken
 * @returns the paths
 */
export function pendingCheckpoint(runDir: string, step: number): PendingCheckpoint {
  const name = checkpointDirName(step);
  const root = join(runDir, CHECKPOINTS_DIR);
  return { runDir, name, tmp: join(root, TMP_PREFIX + name), final: join(root, name) };
}

/**
 * Make the temporary directory of a save (rank 0, before any rank writes), removing what
 * earlier interrupted saves left in `checkpoints/`.
 *
 * @param p the save
 */
export async function prepareCheckpoint(p: PendingCheckpoint): Promise<void> {
  const root = join(p.runDir, CHECKPOINTS_DIR);
  await Deno.mkdir(root, { recursive: true });
  for await (const e of Deno.readDir(root)) {
    if (e.name.startsWith(TMP_PREFIX) || e.name.startsWith(OLD_PREFIX)) {
      await Deno.remove(join(root, e.name), { recursive: true });
    }
  }
  await Deno.mkdir(p.tmp);
}

/** A checkpoint of a run directory. */
export interface CheckpointEntry {
  /** Its directory name. */
  name: string;
  /** Its step. */
  step: number;
  /** Its path. */
  path: string;
}

/**
 * The checkpoints of a run directory, newest (highest step) first.
 *
 * @param runDir the run directory
 * @returns its `checkpoints/step-*` directories
 */
export async function listCheckpoints(runDir: string): Promise<CheckpointEntry[]> {
  const root = join(runDir, CHECKPOINTS_DIR);
  const out: CheckpointEntry[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      const m = STEP_DIR.exec(e.name);
      if (m && e.isDirectory) {
        out.push({ name: e.name, step: Number(m[1]), path: join(root, e.name) });
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw e;
  }
  return out.sort((a, b) => b.step - a.step);
}

/**
 * Finish a save (rank 0, once every rank's shard is fsynced): write the index and the
 * configuration into the temporary directory and fsync them, rename the directory into place,
 * point `latest` at it, then delete the checkpoints beyond `keep` (0: keep every one) among
 * those of an earlier step. Checkpoints of a later step (another continuation of the run) are
 * left alone.
 *
 * @param p the save
 * @param index the index
 * @param config the configuration
 * @param keep how many checkpoints to keep, this one included
 * @returns the checkpoints deleted
 */
export async function commitCheckpoint(
  p: PendingCheckpoint,
  index: CheckpointIndex,
  config: Record<string, unknown>,
  keep: number,
): Promise<string[]> {
  validateIndex(index, p.tmp);
  await writeSynced(join(p.tmp, INDEX_FILE), JSON.stringify(index) + "\n");
  await writeSynced(join(p.tmp, CONFIG_FILE), JSON.stringify(config, null, 2) + "\n");
  await syncDir(p.tmp);
  const root = join(p.runDir, CHECKPOINTS_DIR);
  // A checkpoint of this step already there (saved twice at one step) steps aside first.
  const old = join(root, OLD_PREFIX + p.name);
  const replacing = await exists(p.final);
  if (replacing) await Deno.rename(p.final, old);
  await Deno.rename(p.tmp, p.final);
  await syncDir(root);
  await writeFileAtomic(join(p.runDir, LATEST_FILE), `${CHECKPOINTS_DIR}/${p.name}\n`);
  if (replacing) await Deno.remove(old, { recursive: true });
  const removed: string[] = [];
  if (keep > 0) {
    const step = index.step;
    const older = (await listCheckpoints(p.runDir)).filter((c) => c.step < step);
    for (const c of older.slice(keep - 1)) {
      await Deno.remove(c.path, { recursive: true });
      removed.push(c.path);
    }
    if (removed.length > 0) await syncDir(root);
  }
  return removed;
}

// ---- the index -----------------------------------------------------------------------------

function corrupt(where: string, what: string): TypeError {
  return new TypeError(`Corrupt checkpoint ${where}: ${what}`);
}

const isInt = (v: unknown, min = 0): v is number => Number.isSafeInteger(v) && (v as number) >= min;

/**
 * Check an index: its fields, that it holds every tensor of its model and optimizer, and that
 * every part of every tensor is covered by its pieces exactly once.
 *
 * @param index the parsed index
 * @param where the checkpoint (for messages)
 * @throws {TypeError} naming what is wrong
 */
export function validateIndex(index: CheckpointIndex, where: string): void {
  const x = index as unknown as Record<string, unknown>;
  if (x === null || typeof x !== "object") throw corrupt(where, "the index is not an object");
  if (x.format !== CHECKPOINT_FORMAT && x.format !== LEGACY_FORMAT) {
    throw corrupt(where, `the index has format ${JSON.stringify(x.format)}`);
  }
  const m = index.meta;
  if (
    !isInt(index.step) || m === null || typeof m !== "object" || !isInt(m.step) ||
    !isInt(m.optimizerSteps) || !Array.isArray(m.rng) || m.rng.length !== 5
  ) {
    throw corrupt(where, "its state lacks step or RNG");
  }
  if (index.model === null || typeof index.model !== "object" || !isInt(index.model.vocab, 1)) {
    throw corrupt(where, "it has no model configuration");
  }
  if (!isInt(index.vocab, 1) || index.vocab > index.model.vocab) {
    throw corrupt(where, `its real vocabulary ${index.vocab} exceeds ${index.model.vocab} rows`);
  }
  if (typeof index.optimizer !== "string" || !Array.isArray(index.state)) {
    throw corrupt(where, "it names no optimizer");
  }
  if (index.files === null || typeof index.files !== "object") {
    throw corrupt(where, "it lists no shard files");
  }
  for (const [name, f] of Object.entries(index.files)) {
    if (!isInt(f?.bytes) || typeof f?.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(f.sha256)) {
      throw corrupt(where, `shard file ${name} has no byte length or SHA-256`);
    }
  }
  if (index.tensors === null || typeof index.tensors !== "object") {
    throw corrupt(where, "it lists no tensors");
  }
  const prefixes = ["", ...index.state.map((k) => `optimizer.${k}.`)];
  for (const p of prefixes) {
    for (const s of gptParamSpecs(index.model)) {
      if (!(p + s.name in index.tensors)) throw corrupt(where, `tensor "${p + s.name}" is missing`);
    }
  }
  for (const [name, t] of Object.entries(index.tensors)) {
    const bad = (what: string) => corrupt(where, `tensor "${name}" ${what}`);
    if (!Array.isArray(t?.shape) || !t.shape.every((d) => isInt(d))) throw bad("has no shape");
    if (!Array.isArray(t.local) || !t.local.every((d) => isInt(d))) throw bad("has no part shape");
    if (!Array.isArray(t.pieces)) throw bad("has no pieces");
    const parts = t.split?.parts ?? 1;
    if (!isInt(parts, 1)) throw bad("has a bad split");
    if (numel(t.local) * parts !== numel(t.shape)) {
      throw bad(`has parts [${t.local}] that do not make up [${t.shape}] in ${parts}`);
    }
    const size = numel(t.local);
    const byPart: CheckpointPiece[][] = Array.from({ length: parts }, () => []);
    for (const q of t.pieces) {
      if (!isInt(q?.part) || q.part >= parts || !isInt(q.start) || !isInt(q.n, 1)) {
        throw bad("has a malformed piece");
      }
      if (
        typeof q.file !== "string" || (!(q.file in index.files) && index.format !== LEGACY_FORMAT)
      ) {
        throw bad(`has a piece in ${q.file}, which the index does not list`);
      }
      byPart[q.part]!.push(q);
    }
    byPart.forEach((list, part) => {
      list.sort((a, b) => a.start - b.start);
      let at = 0;
      for (const q of list) {
        if (q.start !== at) {
          throw bad(
            q.start > at
              ? `part ${part} lacks elements [${at}, ${q.start})`
              : `part ${part} has overlapping pieces at ${q.start}`,
          );
        }
        at += q.n;
      }
      if (at !== size) throw bad(`part ${part} covers ${at} of its ${size} elements`);
    });
  }
}

function legacyIndex(dir: string, file: SafetensorsReader): CheckpointIndex {
  const where = join(dir, LEGACY_CHECKPOINT_FILE);
  const md = file.metadata;
  if (md.format !== LEGACY_FORMAT) {
    throw new TypeError(`${where} is not a Loom checkpoint (metadata format is "${md.format}")`);
  }
  let meta: CheckpointMeta, model: ResolvedGptConfig;
  try {
    meta = JSON.parse(md.state!);
    model = JSON.parse(md.model!);
  } catch (e) {
    throw corrupt(where, `bad metadata (${(e as Error).message})`);
  }
  const tensors: Record<string, CheckpointTensorEntry> = {};
  const state = new Set<string>();
  for (const [name, e] of file.entries) {
    const m = /^optimizer\.([^.]+)\./.exec(name);
    if (m) state.add(m[1]!);
    const base = m ? name.slice(m[0].length) : name;
    tensors[name] = {
      shape: [...e.shape],
      dtype: "F32",
      split: null,
      local: [...e.shape],
      vocabRows: base === "wte" || base === "lm_head.weight",
      pieces: [{
        file: LEGACY_CHECKPOINT_FILE,
        key: name,
        part: 0,
        start: 0,
        n: numel(e.shape),
        dpRank: 0,
        bucket: 0,
      }],
    };
  }
  return {
    format: LEGACY_FORMAT,
    step: meta?.step,
    meta,
    model,
    vocab: model?.vocab,
    optimizer: md.optimizer ?? "",
    state: [...state],
    layout: {
      worldSize: 1,
      tp: 1,
      pp: 1,
      dp: 1,
      virtualStages: 1,
      zeroStage: 0,
      precision: "fp32",
    },
    zero: { stage: 0, dp: 1, reduceBucketSize: 0 },
    files: {},
    tensors,
  };
}

/**
 * Read and check the index of a checkpoint directory (or build one for a checkpoint of an
 * earlier version).
 *
 * @param dir the checkpoint directory
 * @returns the index
 * @throws {TypeError} when it is missing or corrupt
 */
export async function readCheckpointIndex(dir: string): Promise<CheckpointIndex> {
  const path = join(dir, INDEX_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    const legacy = join(dir, LEGACY_CHECKPOINT_FILE);
    if (!(await exists(legacy))) {
      throw new TypeError(`No checkpoint in "${dir}": ${path} is missing`);
    }
    const file = await openSafetensors(legacy);
    try {
      const index = legacyIndex(dir, file);
      validateIndex(index, legacy);
      return index;
    } finally {
      file.close();
    }
  }
  let index: CheckpointIndex;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw corrupt(dir, `${INDEX_FILE} is not JSON (${(e as Error).message})`);
  }
  validateIndex(index, dir);
  return index;
}

/** A checkpoint that is intact but does not fit this run (another model shape or optimizer). */
export class CheckpointMismatchError extends TypeError {
  /**
   * Build the error.
   *
   * @param message what differs
   */
  constructor(message: string) {
    super(message);
    this.name = "TypeError";
  }
}

/**
 * Check that a checkpoint fits a model and optimizer: the same model shape (a vocabulary may
 * differ in its padded rows only) and the same optimizer.
 *
 * @param index the checkpoint's index
 * @param model this run's model
 * @param optimizer this run's optimizer kind
 * @param where the checkpoint (for messages)
 * @throws {CheckpointMismatchError} when it does not fit, saying what differs
 */
export function checkCheckpointModel(
  index: CheckpointIndex,
  model: ResolvedGptConfig,
  optimizer: string,
  where: string,
): void {
  const saved = index.model as unknown as Record<string, unknown>;
  const mine = model as unknown as Record<string, unknown>;
  const diffs = Object.keys(mine).filter((k) => k !== "vocab" && saved[k] !== mine[k])
    .map((k) => `${k} ${saved[k]} there vs ${mine[k]} here`);
  if (model.vocab < index.vocab) {
    diffs.unshift(
      `vocab ${index.vocab} there` +
        (index.model.vocab !== index.vocab ? ` (padded to ${index.model.vocab})` : "") +
        ` vs ${model.vocab} here`,
    );
  }
  if (diffs.length > 0) {
    throw new CheckpointMismatchError(
      `Checkpoint ${where} is of another model shape: ${diffs.join(", ")}: give the same ` +
        `model flags as the saved run (or none)`,
    );
  }
  if (index.optimizer !== optimizer) {
    throw new CheckpointMismatchError(
      `Checkpoint ${where} was saved with optimizer "${index.optimizer}", this run uses ` +
        `"${optimizer}"`,
    );
  }
}

// ---- verifying -----------------------------------------------------------------------------

const CHUNK = 1 << 22;

/**
 * Check a shard file against the index: present, of the recorded length, with the recorded
 * SHA-256 (read in chunks, never whole).
 *
 * @param dir the checkpoint directory
 * @param name the file
 * @param entry its index entry
 * @returns null when it is intact, else what is wrong, naming the file
 */
export async function checkShardFile(
  dir: string,
  name: string,
  entry: CheckpointFileEntry,
): Promise<string | null> {
  const quick = await shardProblem(dir, name, entry);
  if (quick !== null) return quick;
  const path = join(dir, name);
  const f = await Deno.open(path, { read: true });
  const hash = createHash("sha256");
  try {
    const buf = new Uint8Array(Math.min(CHUNK, Math.max(1, entry.bytes)));
    for (;;) {
      const n = await f.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    f.close();
  }
  const got = hash.digest("hex");
  return got === entry.sha256
    ? null
    : `${path} fails its SHA-256 check (the index says ${entry.sha256.slice(0, 16)}..., the ` +
      `file hashes to ${got.slice(0, 16)}...): it is corrupt`;
}

/**
 * What a look at a shard file's directory entry finds wrong (missing, or of another length
 * than the index records), without reading it.
 *
 * @param dir the checkpoint directory
 * @param name the file
 * @param entry its index entry
 * @returns null when nothing is seen wrong, else what is wrong, naming the file
 */
export async function shardProblem(
  dir: string,
  name: string,
  entry: CheckpointFileEntry,
): Promise<string | null> {
  const path = join(dir, name);
  let size: number;
  try {
    size = (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return `${path} is missing`;
    throw e;
  }
  if (size !== entry.bytes) {
    return `${path} is ${size} bytes, the index says ${entry.bytes}` +
      (size < entry.bytes ? " (truncated)" : "");
  }
  return null;
}

/**
 * Check every shard file of a checkpoint (in this process).
 *
 * @param dir the checkpoint directory
 * @param index its index
 * @returns null when every file is intact, else what is wrong with each damaged one
 */
export async function verifyCheckpoint(
  dir: string,
  index: CheckpointIndex,
): Promise<string | null> {
  const problems: string[] = [];
  for (const name of Object.keys(index.files).sort()) {
    const p = await checkShardFile(dir, name, index.files[name]!);
    if (p !== null) problems.push(p);
  }
  return problems.length > 0 ? problems.join("; ") : null;
}

// ---- choosing a checkpoint -----------------------------------------------------------------

/** The checkpoints a path may mean, in the order to try them. */
export interface CheckpointCandidates {
  /** The path names one checkpoint directory (no fallback). */
  explicit: boolean;
  /** Checkpoint directories, the one to use first. */
  dirs: string[];
}

/**
 * The checkpoints `path` means: a checkpoint directory itself; or a run directory: the one
 * `latest` names, then the run's checkpoints of earlier steps, newest first (or, without a
 * `latest`, every checkpoint, newest first).
 *
 * @param path a run directory or a checkpoint directory
 * @returns the candidates
 * @throws {TypeError} when there is no checkpoint there
 */
export async function checkpointCandidates(path: string): Promise<CheckpointCandidates> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch {
    throw new TypeError(`No checkpoint in "${path}": it does not exist`);
  }
  if (!info.isDirectory) {
    throw new TypeError(`No checkpoint in "${path}": it is not a directory`);
  }
  if (await exists(join(path, INDEX_FILE))) return { explicit: true, dirs: [path] };
  const all = await listCheckpoints(path);
  let latest: string | null = null;
  try {
    latest = (await Deno.readTextFile(join(path, LATEST_FILE))).trim();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (latest !== null && latest !== "") {
    const target = latest.startsWith("/") ? latest : join(path, latest);
    const m = STEP_DIR.exec(latest.split("/").at(-1) ?? "");
    const step = m ? Number(m[1]) : Infinity;
    const older = all.filter((c) => c.step < step && c.path !== target).map((c) => c.path);
    return { explicit: false, dirs: [target, ...older] };
  }
  if (all.length > 0) return { explicit: false, dirs: all.map((c) => c.path) };
  if (await exists(join(path, LEGACY_CHECKPOINT_FILE))) return { explicit: true, dirs: [path] };
  throw new TypeError(
    `No checkpoint in "${path}": it has no ${LATEST_FILE}, no ${CHECKPOINTS_DIR}/step-* and ` +
      `no ${INDEX_FILE} (pass a run's --out directory or one of its checkpoints)`,
  );
}

/**
 * The run directory a path belongs to: for a checkpoint directory `<run>/checkpoints/step-N`,
 * `<run>`; for anything else, the path itself.
 *
 * @param path a run directory or a checkpoint directory
 * @returns the run directory
 */
export async function checkpointRunDir(path: string): Promise<string> {
  const parts = path.replace(/\/+$/, "").split("/");
  if (
    parts.length >= 3 && parts.at(-2) === CHECKPOINTS_DIR && STEP_DIR.test(parts.at(-1)!) &&
    await exists(join(path, INDEX_FILE))
  ) {
    const run = parts.slice(0, -2).join("/");
    return run === "" ? (path.startsWith("/") ? "/" : ".") : run;
  }
  return path;
}

/** Options of {@linkcode selectCheckpoint}. */
export interface SelectOptions {
  /** Check every shard of a candidate: null when intact, else what is wrong. */
  verify(dir: string, index: CheckpointIndex): Promise<string | null>;
  /** Refuse a candidate that does not fit (throws; nothing else is tried). */
  check?(dir: string, index: CheckpointIndex): void;
  /** Told when a damaged checkpoint is passed over for an earlier one. */
  warn?(message: string): void;
  /** Fall back to earlier checkpoints of a run directory (default true). */
  fallback?: boolean;
}

/**
 * Choose the checkpoint to read at `path`: the first candidate (see
 * {@linkcode checkpointCandidates}) whose index is readable and whose shards are intact. A
 * damaged checkpoint of a run directory is reported through `warn` and passed over for the
 * previous one; a damaged checkpoint named directly is an error.
 *
 * @param path a run directory or a checkpoint directory
 * @param opts how to verify and check, and whether to fall back
 * @returns the checkpoint directory and its index
 * @throws {TypeError} naming every damaged checkpoint and file when none is intact
 */
export async function selectCheckpoint(
  path: string,
  opts: SelectOptions,
): Promise<{ dir: string; index: CheckpointIndex }> {
  const c = await checkpointCandidates(path);
  const dirs = opts.fallback === false ? c.dirs.slice(0, 1) : c.dirs;
  const problems: string[] = [];
  for (let i = 0; i < dirs.length; i++) {
    const dir = dirs[i]!;
    let problem: string;
    try {
      const index = await readCheckpointIndex(dir);
      opts.check?.(dir, index);
      const p = await opts.verify(dir, index);
      if (p === null) return { dir, index };
      problem = p;
    } catch (e) {
      if (!(e instanceof TypeError) || e instanceof CheckpointMismatchError) throw e;
      problem = e.message;
    }
    problems.push(problem);
    if (i + 1 < dirs.length) {
      opts.warn?.(`checkpoint ${dir} is damaged (${problem}); trying ${dirs[i + 1]} instead`);
    }
  }
  if (c.explicit || dirs.length === 1) {
    throw new TypeError(`Checkpoint ${dirs[0]} is damaged and was not loaded: ${problems[0]}`);
  }
  throw new TypeError(
    `No intact checkpoint in "${path}" (none was loaded): ${problems.join("; ")}`,
  );
}

/**
 * Read the `config.json` of a checkpoint: of a checkpoint directory, or of the checkpoint a
 * run directory's `latest` names (else of its newest with a configuration).
 *
 * @param path a run directory or a checkpoint directory
 * @returns the parsed configuration
 * @throws {TypeError} when there is no checkpoint there or the file is not JSON
 */
export async function readCheckpointConfig(path: string): Promise<Record<string, unknown>> {
  const { dirs } = await checkpointCandidates(path);
  let missing = "";
  for (const dir of dirs) {
    const file = join(dir, CONFIG_FILE);
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch {
      missing ||= file;
      continue;
    }
    try {
      const v = JSON.parse(text);
      if (v === null || typeof v !== "object") throw new Error("not an object");
      return v;
    } catch (e) {
      throw new TypeError(`Corrupt checkpoint config ${file}: ${(e as Error).message}`);
    }
  }
  throw new TypeError(
    `No checkpoint in "${path}": ${missing} is missing (pass --resume the --out directory ` +
      `of an earlier run)`,
  );
}

// ---- reading -------------------------------------------------------------------------------

function splitOf(s: CheckpointSplit | null): TensorSplit | undefined {
  return s === null || s.parts === 1
    ? undefined
    : { axis: s.axis, parts: s.parts, index: 0, blocks: s.blocks };
}

function sameSplit(a: CheckpointSplit | null, b: TensorSplit | undefined): boolean {
  const pa = a?.parts ?? 1, pb = b?.parts ?? 1;
  if (pa !== pb) return false;
  return pa === 1 || (a!.axis === b!.axis && (a!.blocks ?? 1) === (b!.blocks ?? 1));
}

function resizeRows(data: Float32Array, shape: readonly number[], rows: number): Float32Array {
  const inner = numel(shape.slice(1));
  const out = new Float32Array(rows * inner);
  out.set(data.subarray(0, Math.min(rows, shape[0]!) * inner));
  return out;
}

/**
 * A checkpoint opened for reading: any tensor, whole (serial) or as the piece of any layout,
 * read from its shards one piece at a time.
 */
export class CheckpointReader {
  /** The checkpoint directory. */
  readonly dir: string;
  /** Its index. */
  readonly index: CheckpointIndex;
  #files = new Map<string, SafetensorsReader>();

  private constructor(dir: string, index: CheckpointIndex) {
    this.dir = dir;
    this.index = index;
  }

  /**
   * Open a checkpoint directory (its shards are opened as they are needed). Opening does not
   * verify the shards: see {@linkcode selectCheckpoint} and {@linkcode verifyCheckpoint}.
   *
   * @param dir the checkpoint directory
   * @param index its index, when already read
   * @returns the reader
   */
  static async open(dir: string, index?: CheckpointIndex): Promise<CheckpointReader> {
    return new CheckpointReader(dir, index ?? await readCheckpointIndex(dir));
  }

  #entry(name: string): CheckpointTensorEntry {
    const e = this.index.tensors[name];
    if (!e) throw corrupt(this.dir, `tensor "${name}" is missing`);
    return e;
  }

  async #file(name: string): Promise<SafetensorsReader> {
    let f = this.#files.get(name);
    if (!f) {
      f = await openSafetensors(join(this.dir, name));
      this.#files.set(name, f);
    }
    return f;
  }

  /**
   * One tensor-parallel part of a tensor as it was saved.
   *
   * @param name the tensor
   * @param part the part (0 for a tensor that is not split)
   * @param into a buffer to read into instead of a new one (the result is its first elements)
   * @returns its values, of the part's shape (`local` in the index)
   */
  async part(name: string, part: number, into?: Float32Array): Promise<Float32Array> {
    const e = this.#entry(name);
    const size = numel(e.local);
    if (into && into.length < size) {
      throw new RangeError(`"${name}" has ${size} elements per part, the buffer ${into.length}`);
    }
    const out = into ? into.subarray(0, size) : new Float32Array(size);
    for (const q of e.pieces) {
      if (q.part !== part) continue;
      const f = await this.#file(q.file);
      const s = f.entries.get(q.key);
      if (!s || s.dtype !== "F32" || numel(s.shape) !== q.n) {
        throw corrupt(
          this.dir,
          `${q.file} holds ${s ? `${s.dtype} [${s.shape}]` : "nothing"} as "${q.key}", the ` +
            `index says F32 of ${q.n} elements`,
        );
      }
      await f.readInto(q.key, new Uint8Array(out.buffer, out.byteOffset + q.start * 4, q.n * 4));
    }
    return out;
  }

  /**
   * A tensor whole, with its serial shape as saved (the vocabulary tensors with their padded
   * rows).
   *
   * @param name the tensor
   * @returns its values
   */
  async serial(name: string): Promise<Float32Array> {
    const e = this.#entry(name);
    const parts = e.split?.parts ?? 1;
    const pieces: Float32Array[] = [];
    for (let p = 0; p < parts; p++) pieces.push(await this.part(name, p));
    return unshardTensor(pieces, e.shape, splitOf(e.split));
  }

  /**
   * A tensor as a rank of another layout holds it: its serial shape `full` (a vocabulary
   * tensor's rows trimmed to it or zero-filled up to it), cut by `split`.
   *
   * @param name the tensor
   * @param full the serial shape wanted
   * @param split this rank's piece of it (absent: whole)
   * @param into a buffer to read into when the tensor was saved with this split (the result
   *   is then its first elements); otherwise the result is new
   * @returns the piece's values
   * @throws {TypeError} when the saved tensor has another shape
   */
  async local(
    name: string,
    full: readonly number[],
    split: TensorSplit | undefined,
    into?: Float32Array,
  ): Promise<Float32Array> {
    const e = this.#entry(name);
    if (sameShape(e.shape, full) && sameSplit(e.split, split)) {
      return await this.part(name, (split?.parts ?? 1) > 1 ? split!.index : 0, into);
    }
    let data = await this.serial(name);
    let shape = e.shape;
    if (
      e.vocabRows && shape.length === full.length && sameShape(shape.slice(1), full.slice(1)) &&
      shape[0] !== full[0]
    ) {
      data = resizeRows(data, shape, full[0]!);
      shape = [...full];
    }
    if (!sameShape(shape, full)) {
      throw corrupt(this.dir, `"${name}" is [${e.shape}] there, [${full}] here`);
    }
    return shardTensor(data, full, split);
  }

  /** Close the shard files. */
  close(): void {
    for (const f of this.#files.values()) f.close();
    this.#files.clear();
  }
}

// ---- consolidation -------------------------------------------------------------------------

/** Options of {@linkcode consolidateCheckpoint}. */
export interface ConsolidateOptions {
  /** Keep the vocabulary tensors' padded rows (default: the real vocabulary only). */
  padded?: boolean;
  /** Also write the optimizer state as `optimizer.<buffer>.<name>` (default false). */
  optimizer?: boolean;
  /** Told when a damaged checkpoint of a run directory is passed over. */
  warn?: (message: string) => void;
}

/** What {@linkcode consolidateCheckpoint} wrote. */
export interface ConsolidateResult {
  /** The checkpoint directory it read. */
  checkpoint: string;
  /** Its step. */
  step: number;
  /** Tensors written. */
  tensors: number;
  /** Bytes of the file. */
  bytes: number;
}

/**
 * Write a checkpoint as one fp32 safetensors file of the whole model under GPT-2 names (with
 * the serial shapes), tensor by tensor: each tensor is put together from its pieces and written
 * before the next is read. The shards are verified first. The file goes to a temporary name,
 * is fsynced and renamed into place.
 *
 * @param path a run directory (its `latest`) or a checkpoint directory
 * @param out the safetensors file to write
 * @param opts padded rows, optimizer state, warnings
 * @returns what was written
 * @throws {TypeError} when there is no intact checkpoint at `path`
 */
export async function consolidateCheckpoint(
  path: string,
  out: string,
  opts: ConsolidateOptions = {},
): Promise<ConsolidateResult> {
  const { dir, index } = await selectCheckpoint(path, {
    verify: verifyCheckpoint,
    warn: opts.warn,
  });
  const r = await CheckpointReader.open(dir, index);
  const rows = opts.padded ? index.model.vocab : index.vocab;
  const model = { ...index.model, vocab: rows };
  const specs = gptParamSpecs(model);
  const prefixes = ["", ...(opts.optimizer ? index.state.map((k) => `optimizer.${k}.`) : [])];
  const plan = prefixes.flatMap((p) =>
    specs.map((s) => ({ name: p + s.name, dtype: "F32" as const, shape: s.shape }))
  );
  const tmp = `${out}.tmp`;
  const w = await SafetensorsWriter.create(tmp, plan, {
    format: "loom-consolidated-1",
    model: JSON.stringify(model),
    step: String(index.step),
    padded_vocab: String(index.model.vocab),
  });
  try {
    for (const p of plan) await w.write(p.name, await r.local(p.name, p.shape, undefined));
    await w.close();
  } catch (e) {
    w.abort();
    r.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  r.close();
  await Deno.rename(tmp, out);
  const slash = out.lastIndexOf("/");
  await syncDir(slash < 0 ? "." : slash === 0 ? "/" : out.slice(0, slash));
  return { checkpoint: dir, step: index.step, tensors: plan.length, bytes: w.bytesWritten };
}

/**
 * Every tensor of a checkpoint whole, with its saved serial shape (for tests and small
 * models: this holds them all in memory). The shards are verified first.
 *
 * @param path a run directory (its `latest`) or a checkpoint directory
 * @returns name to values
 */
export async function readCheckpointTensors(path: string): Promise<Map<string, Float32Array>> {
  const { dir, index } = await selectCheckpoint(path, { verify: verifyCheckpoint });
  const r = await CheckpointReader.open(dir, index);
  try {
    const out = new Map<string, Float32Array>();
    for (const name of Object.keys(index.tensors)) out.set(name, await r.serial(name));
    return out;
  } finally {
    r.close();
  }
}
