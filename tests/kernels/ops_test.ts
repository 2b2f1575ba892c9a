// Every op case of _cases.ts on every backend, against the reference backend.
// Tolerance: |got - want| <= 1e-4 * (1 + |want|) unless a case states its own: float32 results
// of small sums (K <= 130 terms of magnitude <= 1) differ from the reference's float64 sums by a
// few float32 ulps, far inside 1e-4, while any wrong index or missing term is off by ~1e-1.

import assert from "node:assert/strict";
import {
  type Backend,
  blasLoadError,
  createCpuBackend,
  createReferenceBackend,
  type HostArray,
  loadBlas,
} from "../../kernels/mod.ts";
import { createWebGPUBackend } from "../../kernels/webgpu/mod.ts";
import { caseRng, opCases } from "./_cases.ts";

const TOL = 1e-4;

function compare(label: string, got: HostArray, want: HostArray, tol: number): void {
  assert.equal(got.length, want.length, `${label}: length`);
  assert.equal(got instanceof Int32Array, want instanceof Int32Array, `${label}: dtype`);
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (!(Math.abs(g - w) <= tol * (1 + Math.abs(w)))) {
      assert.fail(`${label}[${i}] = ${g}, want ${w} (tolerance ${tol} * (1 + |want|))`);
    }
  }
}

const reference = createReferenceBackend();

/** Run every case on `be` and compare with the reference. */
function suite(label: string, be: () => Backend): void {
  opCases.forEach((c, index) => {
    Deno.test(`${label}: ${c.name} matches the reference`, async () => {
      const want = await c.run(reference, caseRng(index));
      const got = await c.run(be(), caseRng(index));
      assert.deepEqual(Object.keys(got), Object.keys(want));
      for (const k of Object.keys(want)) compare(`${c.name}: ${k}`, got[k], want[k], c.tol ?? TOL);
    });
  });
}

// WebGPU runs in a child process (tests/gpu_test.ts starts it with LOOM_TEST_GPU_CHILD=1, see
// tests/_gpu_child.ts for why); there only the WebGPU suites register.
const GPU_CHILD = Deno.env.get("LOOM_TEST_GPU_CHILD") === "1";

if (!GPU_CHILD) {
  suite("reference f64", () => createReferenceBackend({ precision: "f64" }));
  suite("cpu (ts)", () => createCpuBackend({ gemm: "ts" }));
  suite("cpu (wasm)", () => createCpuBackend({ gemm: "wasm" }));
  if (loadBlas()) suite("cpu (blas)", () => createCpuBackend({ gemm: "blas", threads: 1 }));
  else console.log(`ops tests: skipping cpu (blas): ${blasLoadError()}`);
} else {
  // WebGPU, with each matrix-product kernel, only where an adapter exists; each device is created
  // once and destroyed after its cases.
  for (const matmul of ["tiled", "direct"] as const) {
    const gpu = await createWebGPUBackend({ kernels: matmul });
    if (gpu === null) {
      console.log(`ops tests: skipping webgpu (${matmul}): no WebGPU adapter on this machine`);
      continue;
    }
    suite(`webgpu (${matmul})`, () => gpu);
    Deno.test(`webgpu (${matmul}): dispose() releases the device`, () => gpu.dispose());
  }
}

Deno.test("cpu: tensors live on SharedArrayBuffers and fromHost() wraps one without copying", () => {
  const be = createCpuBackend({ gemm: "ts" });
  const t = be.alloc(8);
  assert.ok(be.hostView(t).buffer instanceof SharedArrayBuffer);
  const shared = new Float32Array(new SharedArrayBuffer(16));
  const w = be.fromHost(shared);
  be.fill(w, 2);
  assert.deepEqual([...shared], [2, 2, 2, 2]);
});

Deno.test("cpu: description names the matrix-product path", () => {
  assert.match(createCpuBackend({ gemm: "ts" }).description, /plain TypeScript/);
  assert.match(createCpuBackend({ gemm: "wasm" }).description, /WebAssembly/);
  const blas = loadBlas();
  if (blas) {
    assert.match(createCpuBackend({ gemm: "auto" }).description, /OpenBLAS|BLAS|Accelerate|lib/);
  }
});

for (
  const [label, be] of [
    ["reference", () => createReferenceBackend()],
    ["cpu", () => createCpuBackend({ gemm: "ts" })],
  ] as const
) {
  Deno.test(`${label}: bad arguments get a TypeError or RangeError that says what is wrong`, () => {
    const b = be();
    const t = b.alloc(4), i = b.alloc(2, "i32");
    assert.throws(() => b.matmul(t, t, t, null, 3, 3, 3), /out has 4 elements .* need 9/);
    assert.throws(() => b.view(t, 2, 3), RangeError);
    assert.throws(() => b.write(t, new Float32Array(5)), RangeError);
    assert.throws(() => b.write(i, new Float32Array(2)), TypeError);
    assert.throws(() => b.geluForward(t, i, 2), /inp must be an f32 tensor/);
    assert.throws(() => b.attentionForward(t, t, t, 1, 1, 3, 2), /multiple of the number of heads/);
    b.write(i, new Int32Array([0, 5]));
    assert.throws(
      () => b.crossEntropyForward(b.alloc(2), b.alloc(4), b.alloc(4), i, 2, 2),
      /targets\[1\] = 5 is outside the vocabulary/,
    );
    assert.throws(() =>
      b.adamw(t, t, t, t, 4, {
        lr: 1,
        beta1: 0.9,
        beta2: 0.9,
        eps: 1e-8,
        weightDecay: 0,
        step: 0,
      }), /step must be an integer >= 1/);
    assert.throws(() => b.alloc(-1), RangeError);
    const foreign = label === "cpu" ? createReferenceBackend() : createCpuBackend({ gemm: "ts" });
    assert.throws(() => b.scale(foreign.alloc(1), 1, 1), /not a tensor of this/);
  });
}

Deno.test("createCpuBackend() rejects an unknown gemm and a bad thread count", () => {
  // deno-lint-ignore no-explicit-any
  assert.throws(() => createCpuBackend({ gemm: "cuda" as any }), /gemm must be "auto"/);
  assert.throws(() => createCpuBackend({ threads: 0 }), /threads must be an integer >= 1/);
});
