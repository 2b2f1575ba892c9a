// Loom's GPT against an independent GPT-2 implementation: the loss and every gradient for one
// batch of the shared fixture. Tolerances are the fixture's own (README): loss within 1e-5
// relative, each gradient within 1e-3 of the largest gradient of the same tensor.

import assert from "node:assert/strict";
import { type Backend, createCpuBackend, createReferenceBackend } from "../../kernels/mod.ts";
import {
  decodeSafetensors,
  readSafetensors,
  type SafetensorsFile,
  type SafetensorsInput,
  toFloat32,
} from "../../models/mod.ts";
import { computeGrads, type GradsBatch } from "../../tools/grads.ts";

const DIR = new URL("../../../shared/fixtures/gpt2-reference/", import.meta.url);

async function fixture(): Promise<
  { weights: SafetensorsFile; batch: GradsBatch; grads: SafetensorsFile } | null
> {
  try {
    return {
      weights: await readSafetensors(new URL("weights.safetensors", DIR)),
      batch: JSON.parse(await Deno.readTextFile(new URL("batch.json", DIR))),
      grads: await readSafetensors(new URL("grads.safetensors", DIR)),
    };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

const fx = await fixture();
const ignore = fx === null;
// The webgpu check runs in a child process (tests/gpu_test.ts, see tests/_gpu_child.ts for why);
// there only it registers.
const GPU_CHILD = Deno.env.get("LOOM_TEST_GPU_CHILD") === "1";
if (ignore) console.warn(`GPT-2 reference fixture not found under ${DIR.pathname}: skipping`);

function compare(
  ours: Map<string, { shape: readonly number[]; data: ArrayLike<number> }>,
  ref: SafetensorsFile,
): void {
  assert.deepEqual([...ours.keys()].sort(), [...ref.tensors.keys()].sort());
  for (const [name, e] of ref.tensors) {
    const want = toFloat32(e);
    const got = ours.get(name)!;
    assert.deepEqual([...got.shape], [...e.shape], name);
    if (name === "loss") {
      const rel = Math.abs(got.data[0] - want[0]) / Math.abs(want[0]);
      assert.ok(rel <= 1e-5, `loss ${got.data[0]} vs ${want[0]} (relative ${rel})`);
      continue;
    }
    let max = 0;
    let diff = 0;
    for (let i = 0; i < want.length; i++) {
      max = Math.max(max, Math.abs(want[i]));
      diff = Math.max(diff, Math.abs(got.data[i] - want[i]));
    }
    assert.ok(max > 0, `${name}: the reference gradient is all zero`);
    assert.ok(diff <= 1e-3 * max, `${name}: max difference ${diff} vs largest gradient ${max}`);
  }
}

Deno.test({
  name: "the GPT reproduces the reference loss and every gradient on the reference backend",
  ignore: ignore || GPU_CHILD,
  async fn() {
    const out = await computeGrads(fx!.weights, fx!.batch, createReferenceBackend());
    compare(out as Map<string, SafetensorsInput>, fx!.grads);
  },
});

Deno.test({
  name: "the GPT reproduces the reference loss and every gradient on the cpu backend",
  ignore: ignore || GPU_CHILD,
  async fn() {
    const be = createCpuBackend();
    try {
      compare(await computeGrads(fx!.weights, fx!.batch, be), fx!.grads);
    } finally {
      be.dispose();
    }
  },
});

// WebGPU: only where an adapter exists; one device for the test, destroyed at its end.
Deno.test({
  name: "the GPT reproduces the reference loss and every gradient on the webgpu backend",
  ignore: ignore || !GPU_CHILD,
  async fn() {
    let gpu: Backend | null = null;
    try {
      const url = new URL("../../kernels/webgpu/mod.ts", import.meta.url).href;
      gpu = await (await import(url)).createWebGPUBackend();
    } catch (e) {
      console.log(
        `skipping webgpu: the backend did not load: ${e instanceof Error ? e.message : e}`,
      );
    }
    if (!gpu) {
      console.log("skipping webgpu: no WebGPU adapter on this machine");
      return;
    }
    try {
      compare(await computeGrads(fx!.weights, fx!.batch, gpu), fx!.grads);
    } finally {
      gpu.dispose();
    }
  },
});

Deno.test({
  name: "tools/grads.ts writes the loss and gradients as a safetensors file",
  ignore: ignore || GPU_CHILD,
  async fn() {
    const out = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      const tool = new URL("../../tools/grads.ts", import.meta.url);
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          tool.pathname,
          new URL("weights.safetensors", DIR).pathname,
          new URL("batch.json", DIR).pathname,
          out,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
      const file = decodeSafetensors(await Deno.readFile(out));
      assert.deepEqual(file.tensors.get("loss")!.shape, []);
      const m = new Map(
        [...file.tensors].map(([n, e]) => [n, { shape: e.shape, data: toFloat32(e) }]),
      );
      compare(m, fx!.grads);
    } finally {
      await Deno.remove(out);
    }
  },
});

Deno.test({
  name: "tools/grads.ts fails with a message on a missing argument",
  async fn() {
    const tool = new URL("../../tools/grads.ts", import.meta.url);
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", tool.pathname, "only-one.safetensors"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(r.code, 1);
    assert.match(new TextDecoder().decode(r.stderr), /Expected 3 paths/);
  },
});
