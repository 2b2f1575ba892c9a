import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import { unshardTensor } from "../../parallel/mod.ts";
import { DIMS, fullParams, type LayerResult, runCases } from "./_tp_data.ts";

// Float32 everywhere; the parallel layers sum the same products in a different order (split
// matmul reductions, all-reduce order), so results agree to a few float32 ulps of the values'
// scale: 2e-5 relative to the largest magnitude.
const TOL = 2e-5;

function close(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let scale = 0;
  for (const v of expected) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  }
  assert.ok(worst <= TOL * Math.max(scale, 1e-3), `${what}: max error ${worst} at scale ${scale}`);
}

/** Which way each case's output and input gradient are split across ranks. */
const SPLIT: Record<string, { y: "cols" | "rows" | "none"; dx: "cols" | "rows" | "none" }> = {
  column: { y: "cols", dx: "rows" },
  row: { y: "rows", dx: "cols" },
  attention: { y: "rows", dx: "rows" },
  mlp: { y: "rows", dx: "rows" },
  embedding: { y: "rows", dx: "none" },
  head: { y: "none", dx: "rows" },
};

function assemble(
  parts: Float32Array[],
  how: "cols" | "rows" | "none",
  sp: boolean,
  width: number,
) {
  if (how === "cols") {
    return unshardTensor(parts, [parts[0]!.length / (width / parts.length), width], {
      axis: 1,
      parts: parts.length,
      index: 0,
    });
  }
  if (how === "rows" && sp) {
    return unshardTensor(parts, [parts.length * parts[0]!.length], {
      axis: 0,
      parts: parts.length,
      index: 0,
    });
  }
  for (const p of parts.slice(1)) assert.deepEqual(p, parts[0], "replicated values differ");
  return parts[0]!;
}

const WIDTH: Record<string, [number, number]> = {
  column: [DIMS.F, DIMS.C],
  row: [DIMS.C, DIMS.F],
  attention: [DIMS.C, DIMS.C],
  mlp: [DIMS.C, DIMS.C],
  embedding: [DIMS.C, DIMS.C],
  head: [1, DIMS.C],
};

const expected = runCases({ comm: null });

for (const size of [2, 4]) {
  for (const sp of [false, true]) {
    Deno.test(
      `tensor-parallel layers on ${size} workers${
        sp ? " with sequence parallelism" : ""
      } match the serial layers`,
      async () => {
        const ref = await expected;
        const ranks = await runWorkers<Record<string, LayerResult>>({
          size,
          module: new URL("./_tp_rank.ts", import.meta.url),
          data: { sp },
          timeoutMs: 20_000,
        });
        for (const r of ranks) {
          assert.deepEqual([...r.mappings!.y], [], "last-dim and row mappings that differ");
        }
        for (const name of Object.keys(ref)) {
          const r = ranks.map((x) => x[name]!);
          const [wy, wdx] = WIDTH[name]!;
          close(assemble(r.map((x) => x.y), SPLIT[name]!.y, sp, wy), ref[name]!.y, `${name} y`);
          if (ref[name]!.dx !== null) {
            const dx = assemble(r.map((x) => x.dx!), SPLIT[name]!.dx, sp, wdx);
            close(dx, ref[name]!.dx!, `${name} dx`);
          }
          for (const [p, g] of Object.entries(ref[name]!.grads)) {
            const shape = fullParams().get(p)![1];
            const got = unshardTensor(r.map((x) => x.grads[p]!), shape, r[0]!.splits[p]);
            close(got, g, `${name} grad ${p}`);
          }
        }
      },
    );
  }
}
