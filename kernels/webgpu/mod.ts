/**
 * The WebGPU backend: the {@linkcode Backend} contract as WGSL compute shaders through
 * `navigator.gpu`. Tensors are windows of GPU buffers (views share their buffer); every op is
 * submitted in order, and only `read` waits (reads requested together share one map).
 *
 * 16-bit tensors (`f16`, `bf16`) are GPU buffers of 2 bytes an element, padded to whole 16-byte
 * words, which shaders read and write as packed `u32` words of two elements. An op widens each
 * 16-bit argument it reads into an f32 run of a scratch pool on the device (one small conversion
 * shader), runs its f32 kernel, and rounds what it wrote back with another (to nearest, ties to
 * even; f16 overflows to ±Inf; NaN stays NaN); ops on f32 tensors alone run as they always did.
 * The conversions are integer arithmetic on the bits, identical on every adapter: WGSL's
 * `pack2x16float` leaves rounding and out-of-range values to the implementation, and
 * `unpack2x16float` need not keep Inf and NaN. So the `shader-f16` feature is neither requested
 * nor needed: an adapter that offers it (llvmpipe does not) runs the same packed-`u32` path,
 * and the kernels compute in f32 either way. {@linkcode Backend.scratchBytes} counts the pool.
 *
 * Nothing happens at import time: the adapter is requested by {@linkcode createWebGPUBackend}.
 *
 * @example Multiply two matrices on the GPU (or skip where there is no adapter)
 * ```ts
 * import { createWebGPUBackend } from "./mod.ts";
 * const be = await createWebGPUBackend();
 * if (be !== null) {
 *   const a = be.alloc(4), b = be.alloc(4), c = be.alloc(4);
 *   be.write(a, new Float32Array([1, 2, 3, 4]));
 *   be.write(b, new Float32Array([1, 0, 0, 1]));
 *   be.matmul(c, a, b, null, 2, 2, 2);
 *   console.log(await be.read(c)); // Float32Array [1, 2, 3, 4]
 *   be.dispose();
 * }
 * ```
 *
 * @module
 */

import type { Backend } from "../backend.ts";
export type {
  AdamWParams,
  Backend,
  HostArray,
  MatmulOptions,
  Tensor,
  TensorDType,
} from "../backend.ts";
import { GpuDevice } from "./device.ts";
import { gpuBackend } from "./gpu_backend.ts";

/** Options of {@linkcode createWebGPUBackend}. */
export interface WebGPUBackendOptions {
  /** Adapter preference passed to `navigator.gpu.requestAdapter`. */
  powerPreference?: "low-power" | "high-performance";
  /**
   * Kernel family. `"tiled"`: kernels for GPUs, which stage matmul tiles in workgroup memory and
   * reduce each row (layernorm, softmax) across a workgroup. `"direct"`: kernels without
   * workgroup memory or barriers (a register-blocked matmul reading storage directly, one
   * invocation per row), for software adapters such as llvmpipe, where workgroup memory is
   * ordinary cache and barriers make shaders slow to compile and to run. Default `"auto"`:
   * direct on a fallback (software) adapter, tiled otherwise.
   */
  kernels?: "auto" | "tiled" | "direct";
  /** The earlier name of {@linkcode WebGPUBackendOptions.kernels}; `kernels` wins if both are given. */
  matmul?: "auto" | "tiled" | "direct";
}

/**
 * Look for a WebGPU adapter without opening a device: cheap, and it leaves no GPU state behind.
 * Use it to decide whether WebGPU is worth using (a software adapter is slower than the CPU
 * backend).
 *
 * @returns what was found, or `null` when this runtime has no WebGPU adapter
 */
export async function probeWebGPU(): Promise<WebGPUProbe | null> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (gpu === undefined) return null;
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter();
  } catch {
    return null;
  }
  if (adapter === null) return null;
  const info = adapter.info;
  const description = info.description || [info.vendor, info.architecture, info.device].join(" ");
  const software = info.isFallbackAdapter ||
    /llvmpipe|lavapipe|swiftshader|softpipe/i.test(description);
  return { description: description.trim(), software };
}

/** What {@linkcode probeWebGPU} found. */
export interface WebGPUProbe {
  /** The adapter's description, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits)"`. */
  description: string;
  /** Whether the adapter is a software rasteriser running on the CPU. */
  software: boolean;
}

/**
 * Open a WebGPU device and build a backend on it. The device takes the adapter's largest
 * storage-buffer limits, so that big flat buffers fit.
 *
 * @param opts adapter preference
 * @returns the backend, named `"webgpu"`, or `null` when this runtime has no WebGPU adapter
 *   (call `dispose()` when done: it destroys the device)
 */
export async function createWebGPUBackend(
  opts: WebGPUBackendOptions = {},
): Promise<Backend | null> {
  const choice = opts.kernels ?? opts.matmul ?? "auto";
  if (choice !== "auto" && choice !== "tiled" && choice !== "direct") {
    throw new RangeError(
      `kernels must be "auto", "tiled" or "direct", got ${JSON.stringify(choice)}`,
    );
  }
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (gpu === undefined) return null;
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference });
  } catch {
    return null; // a runtime without a usable driver behaves as one without an adapter
  }
  if (adapter === null) return null;
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredLimits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    },
  });
  const info = adapter.info;
  const name = info.description || [info.vendor, info.architecture, info.device].join(" ");
  const kind = info.isFallbackAdapter ? "software fallback adapter" : "adapter";
  const direct = choice === "direct" || (choice === "auto" && info.isFallbackAdapter);
  return gpuBackend(
    new GpuDevice(device, direct),
    `webgpu: ${name.trim()} (${kind}), ${direct ? "direct" : "tiled"} kernels`,
  );
}
