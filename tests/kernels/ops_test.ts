// Every op case of _cases.ts on every backend, against the reference backend.
// Tolerance: |got - want| <= 1e-4 * (1 + |want|) unless a case states its own: float32 results
// of small sums (K <= 130 terms of magnitude <= 1) differ from the reference's float64 sums by a
// few float32 ulps, far inside 1e-4, while any wrong index or missing term is off by ~1e-1.
//
// Then every case again with 16-bit storage, on the same backend: once with every float tensor
// bf16, once with f16, f32 and bf16 in turn. The contract fixes the result exactly (the f32 op on
// the widened values, its stored results rounded), so it is compared bit for bit with the f32
// ops run on tensors that hold the rounded values, their outputs rounded after each op
// (_storage16.ts).

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
import { emulated16, type Pick, storage16 } from "./_storage16.ts";

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

/** Equal values, NaN equal to NaN, -0 apart from 0. */
function same(label: string, got: HostArray, want: HostArray): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (!Object.is(g, w)) assert.fail(`${label}[${i}] = ${g}, want ${w}`);
  }
}

const PICKS: [string, Pick][] = [
  ["bf16", () => "bf16"],
  ["f16, f32, bf16", (k) => (["f16", "f32", "bf16"] as const)[k % 3]!],
];

/** Run every case on `be` and compare with the reference, then in 16-bit storage. */
function suite(label: string, be: () => Backend): void {
  opCases.forEach((c, index) => {
    Deno.test(`${label}: ${c.name} matches the reference`, async () => {
      const want = await c.run(reference, caseRng(index));
      const got = await c.run(be(), caseRng(index));
      assert.deepEqual(Object.keys(got), Object.keys(want));
      for (const k of Object.keys(want)) compare(`${c.name}: ${k}`, got[k], want[k], c.tol ?? TOL);
    });
  });
  opCases.forEach((c, index) => {
    if (c.storage16 === false) return;
    Deno.test(`${label}: ${c.name} in 16-bit storage is the f32 op, rounded`, async () => {
      // All four runs at once, so that their reads share readbacks on WebGPU.
      const runs = await Promise.all(PICKS.flatMap(([, pick]) => [
        c.run(emulated16(be(), pick), caseRng(index)),
        c.run(storage16(be(), pick), caseRng(index)),
      ]));
      PICKS.forEach(([dtypes], p) => {
        const want = runs[2 * p]!, got = runs[2 * p + 1]!;
        assert.deepEqual(Object.keys(got), Object.keys(want));
        for (const k of Object.keys(want)) same(`${dtypes}: ${k}`, got[k], want[k]);
      });
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
  const bits = new Uint16Array(new SharedArrayBuffer(8));
  be.fill(be.fromHost(bits, "bf16"), 2);
  assert.deepEqual([...bits], [0x4000, 0x4000, 0x4000, 0x4000]);
  assert.throws(() => be.fromHost(bits), /pass dtype "f16" or "bf16"/);
  assert.throws(() => be.fromHost(shared, "f16"), /needs a Uint16Array/);
});

for (
  const [label, make] of [
    ["reference", () => createReferenceBackend()],
    ["cpu", () => createCpuBackend({ gemm: "ts" })],
  ] as const
) {
  Deno.test(`${label}: 16-bit tensors take 2 bytes an element, their bits live in hostView()`, () => {
    const be = make();
    const h = be.alloc(5, "bf16"), v = be.hostView(h);
    assert.ok(v instanceof Uint16Array && v.length === 5 && v.byteLength === 10);
    be.write(h, new Float32Array([1, -2]), 3);
    assert.deepEqual([...v], [0, 0, 0, 0x3f80, 0xc000]);
    assert.ok(be.hostView(be.view(h, 3, 2)) instanceof Uint16Array);
  });

  Deno.test(`${label}: the widening pool is reused across ops and only grows`, () => {
    const be = make();
    assert.equal(be.scratchBytes?.(), 0);
    const x = be.alloc(1000, "f16"), y = be.alloc(1000, "bf16"), z = be.alloc(1000);
    be.add(x, y, x, 1000); // out x (not widened), y and x widened: three runs of 1000
    const after = be.scratchBytes!();
    assert.ok(after >= 3 * 1000 * 4 && after <= 3 * 1024 * 4, `${after} bytes`);
    for (let i = 0; i < 5; i++) be.add(x, y, z, 1000);
    be.add(z, z, z, 1000); // f32 only: no scratch
    assert.equal(be.scratchBytes!(), after);
    be.scale(be.alloc(4000, "f16"), 2, 4000);
    assert.ok(be.scratchBytes!() >= 4000 * 4);
  });
}

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
    assert.throws(
      () => b.geluForward(t, i, 2),
      /inp must be a float tensor \(f32, f16 or bf16\), got an i32 tensor/,
    );
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
    // deno-lint-ignore no-explicit-any
    assert.throws(() => b.alloc(2, "f64" as any), /dtype must be "f32", "f16", "bf16" or "i32"/);
    const h = b.alloc(4, "f16");
    assert.throws(() => b.write(h, new Int32Array(1)), /f16 tensor needs a Float32Array/);
    assert.throws(() => b.write(t, new Uint16Array(1)), /f32 tensor needs a Float32Array/);
    assert.throws(() => b.copy(b.view(t, 0, 2), i), /cannot copy an i32 tensor into an f32 one/);
    assert.throws(() => b.copy(h, b.alloc(3)), /must have the same length/);
    assert.throws(() => b.embeddingForward(h, h, t, 1, 1), /idx must be an i32 tensor/);
    assert.throws(() => b.dropout(t, t, 2, 2, 1, 0), /p must be in \[0, 1\)/);
    assert.throws(() => b.dropout(t, t, 2, 2, 0.5, -1), /key must be an unsigned 32-bit integer/);
    assert.throws(() => b.dropout(t, t, 2, 2, 0.5, 0, 0, 1, 2), /do not fit a matrix of fullCols/);
    assert.throws(() => b.dropout(t, t, 2, 2, 0.5, 0, 2 ** 31, 0, 2), /exceeds 2\^32 - 1/);
    assert.throws(() => b.dropout(t, t, 3, 2, 0.5, 0), /out has 4 elements .* need 6/);
    const drop = { p: 0.5, key: 1, seqOffset: 0, headOffset: 1, heads: 1 };
    assert.throws(() => b.attentionForward(t, t, t, 1, 1, 2, 1, drop), /do not fit drop.heads = 1/);
    assert.throws(
      () => b.attentionBackward(t, t, t, t, 1, 1, 2, 1, { ...drop, p: -0.5 }),
      /drop.p must be in \[0, 1\)/,
    );
    const foreign = label === "cpu" ? createReferenceBackend() : createCpuBackend({ gemm: "ts" });
    assert.throws(() => b.scale(foreign.alloc(1), 1, 1), /not a tensor of this/);
  });
}

Deno.test("createCpuBackend() rejects an unknown gemm and a bad thread count", () => {
  // deno-lint-ignore no-explicit-any
  assert.throws(() => createCpuBackend({ gemm: "cuda" as any }), /gemm must be "auto"/);
  assert.throws(() => createCpuBackend({ threads: 0 }), /threads must be an integer >= 1/);
});
