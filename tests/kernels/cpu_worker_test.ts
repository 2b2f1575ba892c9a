import assert from "node:assert/strict";
import { createReferenceBackend, loadBlas } from "../../kernels/mod.ts";

Deno.test("a Worker's cpu backend adds a product in place into a SharedArrayBuffer", async () => {
  const M = 6, N = 5, K = 7;
  const buf = new SharedArrayBuffer(4 * (M * K + K * N + M * N));
  const all = new Float32Array(buf);
  for (let i = 0; i < all.length; i++) all[i] = ((i * 37) % 11) / 5 - 1;
  const ref = createReferenceBackend();
  const a = ref.alloc(M * K), b = ref.alloc(K * N), c = ref.alloc(M * N);
  ref.write(a, all.subarray(0, M * K));
  ref.write(b, all.subarray(M * K, M * K + K * N));
  ref.write(c, all.subarray(M * K + K * N));
  ref.matmul(c, a, b, null, M, N, K, { accumulate: true });
  const want = await ref.read(c);

  const worker = new Worker(new URL("./_cpu_worker.ts", import.meta.url), { type: "module" });
  const timeout = AbortSignal.timeout(20_000);
  const gemm = await new Promise<string>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    timeout.onabort = () => reject(new Error("the Worker did not answer within 20 s"));
    worker.postMessage({ buf, M, N, K });
  }).finally(() => {
    timeout.onabort = null;
    worker.terminate();
  });
  if (loadBlas()) {
    assert.equal(gemm, "blas", "where OpenBLAS loads, the Worker uses it through FFI");
  }
  const got = all.subarray(M * K + K * N);
  for (let i = 0; i < want.length; i++) {
    assert.ok(Math.abs(got[i] - want[i]) <= 1e-5, `${gemm}: C[${i}] = ${got[i]}, want ${want[i]}`);
  }
});
