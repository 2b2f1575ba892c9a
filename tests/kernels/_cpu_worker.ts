// A Worker that multiplies matrices living on a SharedArrayBuffer it is sent, in place, with the
// CPU backend (and so through FFI when OpenBLAS is present).

import { createCpuBackend } from "../../kernels/mod.ts";

interface Job {
  buf: SharedArrayBuffer;
  M: number;
  N: number;
  K: number;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Job>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

scope.onmessage = (e) => {
  const { buf, M, N, K } = e.data;
  const be = createCpuBackend({ threads: 1 });
  const all = new Float32Array(buf);
  const a = be.fromHost(all.subarray(0, M * K));
  const b = be.fromHost(all.subarray(M * K, M * K + K * N));
  const c = be.fromHost(all.subarray(M * K + K * N, M * K + K * N + M * N));
  be.matmul(c, a, b, null, M, N, K, { accumulate: true });
  scope.postMessage(be.gemm.name);
  scope.close();
};
