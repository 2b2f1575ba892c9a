/**
 * Consolidate a Loom checkpoint into one fp32 safetensors file of the whole model, under GPT-2
 * names with the serial shapes, readable by any safetensors reader.
 *
 * ```sh
 * deno run -A tools/consolidate.ts CKPT OUT.safetensors [--padded] [--optimizer]
 * ```
 *
 * CKPT is a run directory (the checkpoint its `latest` names) or one checkpoint directory
 * (`<run>/checkpoints/step-<NNNNNNNN>`). Every shard is verified (length, SHA-256) first; the
 * file is then written tensor by tensor, each put together from its pieces before the next is
 * read, to a temporary name and renamed into place. The vocabulary tensors keep the real
 * vocabulary's rows only (`--padded` keeps the rows padded for tensor parallelism);
 * `--optimizer` adds the optimizer state as `optimizer.<buffer>.<name>`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { consolidateCheckpoint } from "../engine/checkpoint.ts";

const USAGE = "usage: deno run -A tools/consolidate.ts CKPT OUT.safetensors [--padded] " +
  "[--optimizer]\n  CKPT: a run directory (follows latest) or a checkpoint directory";

/**
 * Run the tool.
 *
 * @param argv the arguments
 * @returns the exit status (0 done, 2 bad input)
 */
export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        padded: { type: "boolean", default: false },
        optimizer: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 2) {
    console.error(
      `error: expected CKPT and OUT.safetensors, got ${positionals.length} ` +
        `argument(s)\n${USAGE}`,
    );
    return 2;
  }
  const [ckpt, out] = positionals as [string, string];
  try {
    const st = await Deno.stat(out).catch(() => null);
    if (st?.isDirectory) throw new TypeError(`${out} is a directory: give a file to write`);
    const r = await consolidateCheckpoint(ckpt, out, {
      padded: values.padded,
      optimizer: values.optimizer,
      warn: (m) => console.error(`warning: ${m}`),
    });
    console.log(
      `wrote ${out}: ${r.tensors} tensors, ${r.bytes.toLocaleString("en-US")} bytes, from ` +
        `${r.checkpoint} (step ${r.step})`,
    );
    return 0;
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      return 2;
    }
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      console.error(`error: cannot write ${out}: ${(e as Error).message}`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
