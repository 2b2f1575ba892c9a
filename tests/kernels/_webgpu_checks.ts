// WebGPU-specific checks beyond the shared op suite (ops_test.ts): the tiled matmul kernel (the
// default on real GPUs; the shared suite runs the direct kernel on a software adapter), batched
// reads, large reductions, argument errors and disposal. Each check compares with the reference
// backend within |got - want| <= 1e-4 * (1 + |want|), as ops_test.ts does. Where this machine
// has no WebGPU adapter, every test is skipped with a message.

import assert from "node:assert/strict";
import {
  type Backend,
  createReferenceBackend,
  type MatmulOptions,
  Rng,
} from "../../kernels/mod.ts";
import { createWebGPUBackend } from "../../kernels/webgpu/mod.ts";

const TOL = 1e-4;

function close(label: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol * (1 + Math.abs(want[i]!)))) {
      assert.fail(`${label}[${i}] = ${got[i]}, want ${want[i]}`);
    }
  }
}

function randoms(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.uniform() * 2 - 1);
}

const tiled = await createWebGPUBackend({ kernels: "tiled" });
const ignore = tiled === null;
if (ignore) console.log("webgpu tests: skipping: no WebGPU adapter on this machine");
const direct = ignore ? null : await createWebGPUBackend({ kernels: "direct" });
const gpu = (): Backend => tiled!;
const both = (): [string, Backend][] => [["tiled", tiled!], ["direct", direct!]];
const reference = createReferenceBackend();

// Runs a matmul on a flat buffer at the given element offsets, on `be`.
async function matmulOn(
  be: Backend,
  data: Float32Array,
  offA: number,
  offB: number,
  M: number,
  N: number,
  K: number,
  opts: MatmulOptions,
): Promise<Float32Array> {
  const flat = be.alloc(data.length);
  be.write(flat, data);
  const out = be.alloc(M * N);
  be.write(out, data.subarray(0, M * N));
  const bias = be.view(flat, data.length - N, N);
  be.matmul(out, be.view(flat, offA, M * K), be.view(flat, offB, K * N), bias, M, N, K, opts);
  return (await be.read(out)) as Float32Array;
}

// Every load path of the tiled kernel: vec4 and scalar loads of a and b, plain and transposed.
for (
  const [M, N, K, offA, opts] of [
    [68, 36, 40, 0, {}], // a and b as vec4; a scattered along k
    [36, 68, 40, 0, { transA: true, transB: true, accumulate: true }], // b scattered along k
    [37, 65, 19, 1, { transB: true }], // scalar loads
    [65, 37, 19, 1, { transA: true, accumulate: true }], // scalar loads, transposed a
  ] as const
) {
  Deno.test({
    name: `tiled matmul() ${M}x${N}x${K} ${JSON.stringify(opts)} at offset ${offA} matches`,
    ignore,
    async fn() {
      const rng = new Rng(M * N + K);
      const offB = offA + M * K + 3 + (offA % 4 === 0 ? 1 : 0);
      const data = randoms(rng, offB + K * N + N + 5);
      const want = await matmulOn(reference, data, offA, offB, M, N, K, opts);
      close("out", await matmulOn(gpu(), data, offA, offB, M, N, K, opts), want);
    },
  });
}

Deno.test({
  name: "direct matmul() over several 32x32 tiles with views matches the reference",
  ignore,
  async fn() {
    const be = direct!;
    assert.match(be.description, /direct kernels/);
    const rng = new Rng(7);
    const data = randoms(rng, 3 * 70 * 80 + 200);
    for (const opts of [{}, { transA: true, transB: true }]) {
      const want = await matmulOn(reference, data, 4, 70 * 80 + 8, 70, 66, 80, opts);
      close("out", await matmulOn(be, data, 4, 70 * 80 + 8, 70, 66, 80, opts), want);
    }
  },
});

Deno.test({
  name: "matmul() with K = 0 on empty views at the end of a buffer adds only the bias",
  ignore,
  async fn() {
    const be = gpu();
    const flat = be.alloc(64), out = be.alloc(6);
    be.write(flat, Float32Array.from({ length: 64 }, (_, i) => i));
    be.write(out, new Float32Array([1, 2, 3, 4, 5, 6]));
    const empty = be.view(flat, 64, 0);
    be.matmul(out, empty, empty, be.view(flat, 61, 3), 2, 3, 0, { accumulate: true });
    assert.deepEqual([...await be.read(out)], [62, 64, 66, 65, 67, 69]);
  },
});

Deno.test({
  name: "read() of several tensors requested together returns each tensor's own data",
  ignore,
  async fn() {
    const be = gpu();
    const flat = be.alloc(300), ids = be.alloc(5, "i32");
    be.write(flat, Float32Array.from({ length: 300 }, (_, i) => i));
    be.write(ids, new Int32Array([4, -3, 2 ** 30, 0, 9]));
    const [a, b, c, d] = await Promise.all([
      be.read(be.view(flat, 1, 7)),
      be.read(ids),
      be.read(be.view(flat, 250, 50)),
      be.read(be.alloc(3)),
    ]);
    assert.deepEqual([...a!], [1, 2, 3, 4, 5, 6, 7]);
    assert.ok(b instanceof Int32Array);
    assert.deepEqual([...b], [4, -3, 2 ** 30, 0, 9]);
    assert.equal(c!.length, 50);
    assert.equal(c![49], 299);
    assert.deepEqual([...d!], [0, 0, 0]);
    assert.equal(be.hostView(flat), null);
  },
});

Deno.test({
  name: "sumSquares() over 300,000 elements matches a float64 sum",
  ignore,
  async fn() {
    const x = randoms(new Rng(3), 300_000);
    let want = 2;
    for (const v of x) want += v * v;
    for (const [label, be] of both()) {
      const t = be.alloc(x.length), out = be.alloc(1);
      be.write(t, x);
      be.write(out, new Float32Array([2]));
      be.sumSquares(out, t, x.length, true);
      close(label, await be.read(out), [want], 1e-5);
    }
  },
});

Deno.test({
  name: "ops over more than 65,535 workgroups fold their dispatch into two dimensions",
  ignore,
  async fn() {
    for (const [label, be] of both()) {
      const n = 65_535 * 256 + 1000; // one past the largest one-dimensional element dispatch
      const x = be.alloc(n);
      be.fill(x, 1.5);
      be.scale(be.view(x, 1, n - 1), 2, n - 1);
      assert.deepEqual([...await be.read(be.view(x, n - 2, 2))], [3, 3], label);
      assert.deepEqual([...await be.read(be.view(x, 0, 2))], [1.5, 3], label);
    }
  },
});

Deno.test({
  name: "crossEntropyForward() gives a NaN loss for a target past the vocabulary",
  ignore,
  async fn() {
    // The device cannot throw without a readback, so the bad row is made loud instead.
    for (const [label, be] of both()) {
      const logits = be.alloc(6), probs = be.alloc(6), losses = be.alloc(2);
      const tg = be.alloc(2, "i32");
      be.write(tg, new Int32Array([1, 3]));
      be.crossEntropyForward(losses, probs, logits, tg, 2, 3);
      const l = await be.read(losses);
      assert.ok(Math.abs(l[0]! - Math.log(3)) < 1e-6, label);
      assert.ok(Number.isNaN(l[1]), label);
    }
  },
});

Deno.test({
  name: "webgpu: bad arguments get a TypeError or RangeError that says what is wrong",
  ignore,
  fn() {
    const b = gpu();
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
    assert.throws(() => b.copy(b.view(t, 0, 3), b.view(t, 1, 3)), /overlap/);
    assert.throws(
      () =>
        b.adamw(t, t, t, t, 4, { lr: 1, beta1: 0.9, beta2: 0.9, eps: 0, weightDecay: 0, step: 0 }),
      /step must be an integer >= 1/,
    );
    assert.throws(() => b.alloc(-1), RangeError);
    assert.throws(() => b.scale(reference.alloc(1), 1, 1), /not a tensor of this WebGPU backend/);
    const h = b.alloc(4, "f16");
    assert.throws(() => b.write(h, new Int32Array(1)), /f16 tensor needs a Float32Array/);
    assert.throws(() => b.copy(b.view(t, 0, 2), i), /cannot copy an i32 tensor into an f32 one/);
    assert.throws(() => b.copy(b.view(h, 0, 3), b.view(h, 1, 3)), /overlap/);
    assert.throws(() => b.dropout(t, t, 2, 2, 1, 0), /p must be in \[0, 1\)/);
    assert.throws(() => b.dropout(t, t, 2, 2, 0.5, 2 ** 32), /key must be an unsigned/);
    assert.throws(() => b.dropout(t, t, 2, 2, 0.5, 0, 2 ** 31, 0, 2), /exceeds 2\^32 - 1/);
  },
});

Deno.test({
  name: "webgpu: 16-bit tensors take 2 bytes an element and the widening pool only grows",
  ignore,
  async fn() {
    const be = gpu();
    const before = be.scratchBytes!();
    const x = be.alloc(1001, "bf16"), y = be.alloc(1001, "f16");
    be.fill(y, 3);
    be.geluForward(x, y, 1001);
    const after = be.scratchBytes!();
    assert.ok(after >= Math.max(before, 2 * 1001 * 4), `${after} bytes`);
    for (let i = 0; i < 3; i++) be.geluForward(x, y, 1001);
    assert.equal(be.scratchBytes!(), after);
    const [g] = await Promise.all([be.read(x)]);
    const want = 0.5 * 3 * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (3 + 0.044715 * 27)));
    assert.ok(Math.abs(g![1000]! - want) <= 2 ** -8 * want, `${g![1000]} vs ${want}`);
    // The storage is 2 bytes an element, in whole 16-byte words.
    assert.equal((x as unknown as { buffer: GPUBuffer }).buffer.size, 2016);
  },
});

Deno.test({
  name: "createWebGPUBackend() rejects an unknown kernel family",
  async fn() {
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      () => createWebGPUBackend({ kernels: "fast" as any }),
      /kernels must be "auto", "tiled" or "direct"/,
    );
  },
});

Deno.test({
  name: "webgpu: after dispose() every call throws",
  ignore,
  fn() {
    for (const [, be] of both()) {
      const t = be.alloc(4);
      be.dispose();
      assert.throws(() => be.fill(t, 1), /disposed/);
      assert.throws(() => be.alloc(4), /disposed/);
    }
  },
});
