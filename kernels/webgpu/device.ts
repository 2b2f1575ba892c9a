// The WebGPU runtime under the backend: tensors as windows of GPUBuffers, a pipeline cache keyed
// by each program's declared key, one uniform slot per dispatch, the dispatches of one turn
// batched into one submission, batched readback, and the pool of f32 scratch that 16-bit op
// arguments are widened into.
//
// A 16-bit tensor (f16, bf16) takes 2 bytes per element; programs bind it as an array<u32> of
// words, each holding two elements (the even one in the low half), and address element e of the
// window as word (o + e) >> 1 of the binding.

import type { Tensor, TensorDType } from "../backend.ts";
import { type HalfDType, widenHalf } from "../half.ts";
import { ScratchPool } from "../_pool.ts";

/** Storage element type a program binds a tensor as. */
export type BindType = "f32" | "i32" | "u32" | "vec4f";

/** Bytes per element of a tensor of `dtype`. */
export function bytesOf(dtype: TensorDType): number {
  return dtype === "f16" || dtype === "bf16" ? 2 : 4;
}

/** A uniform field of a program: name and scalar type. */
export type Field = readonly [name: string, type: "u32" | "i32" | "f32"];

/**
 * A compute program: its cache key, the tensors it binds (in order), its uniform fields and the
 * WGSL text of its entry point `main` (plus any helpers and workgroup variables).
 *
 * The generated header declares binding `i` as `b{i}` (read-write storage of the given type),
 * and a uniform `p` holding `o{i}` (the element offset of tensor `i` inside its binding, in
 * units of the bound type) followed by the declared fields.
 */
export interface Program {
  /** Unique cache key of the compiled pipeline. */
  readonly key: string;
  /** Bound type of each tensor, in binding order. */
  readonly bindings: readonly BindType[];
  /** Uniform fields after the offsets. */
  readonly fields: readonly Field[];
  /** WGSL source of `main` and its helpers. */
  readonly body: string;
}

/** A tensor on the GPU: a window of `length` elements from element `offset` of `buffer`. */
export class GpuTensor implements Tensor {
  constructor(
    readonly owner: GpuDevice,
    readonly buffer: GPUBuffer,
    readonly offset: number,
    readonly length: number,
    readonly dtype: TensorDType,
  ) {}
}

const UNIFORM_SLOT = 256; // bytes per dispatch's uniform slot
const UNIFORM_SLOTS = 256;
const MAX_GROUPS = 65535;

/** Dispatch shape for `n` workgroups along one logical axis, folded into x and y. */
export function grid(n: number): [number, number] {
  if (n <= MAX_GROUPS) return [Math.max(n, 1), 1];
  const y = Math.ceil(n / MAX_GROUPS);
  return [Math.ceil(n / y), y];
}

/** WGSL expression for the flat workgroup index under a {@linkcode grid} dispatch. */
export const FLAT_GROUP = "(wid.y * nwg.x + wid.x)";

/** WGSL builtins argument list matching {@linkcode FLAT_GROUP}. */
export const BUILTINS =
  "@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, " +
  "@builtin(local_invocation_index) lid: u32";

interface PendingRead {
  t: GpuTensor;
  resolve: (a: Float32Array | Int32Array) => void;
  reject: (e: unknown) => void;
}

/** One WebGPU device with its caches. */
export class GpuDevice {
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  readonly #uniforms: GPUBuffer;
  readonly #storageAlign: number;
  readonly #maxBinding: number;
  #slot = 0; // next uniform slot of the open batch
  readonly #uniformHost = new ArrayBuffer(UNIFORM_SLOT * UNIFORM_SLOTS);
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  readonly #layouts = new Map<GPUComputePipeline, GPUBindGroupLayout>();
  #pending: PendingRead[] = [];
  #error: string | null = null;
  #disposed = false;
  #scratch = new Map<string, GpuTensor>();
  /** The f32 scratch that 16-bit op arguments are widened into (256-byte aligned runs). */
  readonly pool: ScratchPool<GPUBuffer>;

  /**
   * @param device the open device
   * @param direct use the kernels without workgroup memory or barriers (software adapters)
   */
  constructor(readonly device: GPUDevice, readonly direct: boolean) {
    this.#storageAlign = device.limits.minStorageBufferOffsetAlignment;
    this.#maxBinding = device.limits.maxStorageBufferBindingSize;
    this.#uniforms = device.createBuffer({
      size: UNIFORM_SLOT * UNIFORM_SLOTS,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.pool = new ScratchPool<GPUBuffer>(
      (n) =>
        device.createBuffer({
          size: 4 * n,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        }),
      // A replaced buffer may still be bound by dispatches of the open batch: submit them first.
      (b) => {
        this.flush();
        b.destroy();
      },
      64,
      4,
    );
    device.addEventListener("uncapturederror", (ev) => {
      const msg = (ev as GPUUncapturedErrorEvent).error.message;
      if (this.#error === null) this.#error = msg;
    });
  }

  /** Throw if the device reported an error or was disposed. */
  check(op: string): void {
    if (this.#disposed) throw new TypeError(`${op}: the WebGPU backend was disposed`);
    if (this.#error !== null) {
      throw new Error(`${op}: an earlier WebGPU command failed: ${this.#error}`);
    }
  }

  /** A new zero-filled tensor. */
  alloc(length: number, dtype: TensorDType): GpuTensor {
    this.check("alloc");
    // Whole 16-byte words, so that any window can be rounded up to a vec4 boundary.
    const size = Math.max(16, Math.ceil((length * bytesOf(dtype)) / 16) * 16);
    const buffer = this.device.createBuffer({
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    return new GpuTensor(this, buffer, 0, length, dtype);
  }

  /** A scratch tensor of at least `length` f32 elements, reused across calls with one name. */
  scratch(name: string, length: number): GpuTensor {
    const cur = this.#scratch.get(name);
    if (cur !== undefined && cur.length >= length) return cur;
    if (cur !== undefined) {
      this.flush(); // dispatches of the open batch may still bind the old buffer
      cur.buffer.destroy();
    }
    const t = this.alloc(Math.max(length, (cur?.length ?? 0) * 2), "f32");
    this.#scratch.set(name, t);
    return t;
  }

  /** An f32 run of `n` elements from the widening pool, valid until the pool's release. */
  takeScratch(n: number): GpuTensor {
    const at = this.pool.take(n);
    return new GpuTensor(this, this.pool.buffer, at, n, "f32");
  }

  /** The compiled pipeline of a program, built on first use. */
  pipeline(prog: Program): GPUComputePipeline {
    let p = this.#pipelines.get(prog.key);
    if (p === undefined) {
      const code = header(prog) + prog.body;
      const module = this.device.createShaderModule({ code, label: prog.key });
      p = this.device.createComputePipeline({
        label: prog.key,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
      this.#pipelines.set(prog.key, p);
    }
    return p;
  }

  /** Number of pipelines compiled so far. */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  /**
   * Encode and submit one dispatch of `prog` over `tensors` with the uniform `values` (in the
   * order of the program's fields) and `groups` workgroups.
   */
  run(
    prog: Program,
    tensors: readonly GpuTensor[],
    values: readonly number[],
    groups: readonly [number, number?, number?],
  ): void {
    this.check(prog.key);
    if (tensors.length !== prog.bindings.length || values.length !== prog.fields.length) {
      throw new Error(`${prog.key}: wrong number of tensors or uniform values`);
    }
    const pipeline = this.pipeline(prog);
    if (this.#slot === UNIFORM_SLOTS) this.flush();
    const slotOffset = this.#slot * UNIFORM_SLOT;
    const u32 = new Uint32Array(this.#uniformHost, slotOffset, UNIFORM_SLOT / 4);
    const i32 = new Int32Array(this.#uniformHost, slotOffset, UNIFORM_SLOT / 4);
    const f32 = new Float32Array(this.#uniformHost, slotOffset, UNIFORM_SLOT / 4);
    const entries: GPUBindGroupEntry[] = [];
    tensors.forEach((t, i) => {
      const unit = prog.bindings[i] === "vec4f" ? 4 : 1, eb = bytesOf(t.dtype);
      // (An empty view at the very end of its buffer still binds the buffer's last 16 bytes.)
      const startByte = Math.min(t.offset * eb, t.buffer.size - 16);
      let bindOffset = Math.floor(startByte / this.#storageAlign) * this.#storageAlign;
      // Only whole vec4 words can be addressed through a vec4 binding.
      if (unit === 4) bindOffset = Math.floor(bindOffset / 16) * 16;
      const endByte = Math.min(t.buffer.size, Math.ceil(((t.offset + t.length) * eb) / 16) * 16);
      const size = Math.max(16, endByte - bindOffset);
      if (size > this.#maxBinding) {
        throw new RangeError(
          `${prog.key}: a tensor of ${t.length} elements exceeds the device's storage binding ` +
            `limit of ${this.#maxBinding} bytes`,
        );
      }
      const rel = t.offset - bindOffset / eb;
      if (rel % unit !== 0) throw new Error(`${prog.key}: tensor ${i} is not vec4-aligned`);
      u32[i] = rel / unit;
      entries.push({ binding: i, resource: { buffer: t.buffer, offset: bindOffset, size } });
    });
    prog.fields.forEach(([, type], j) => {
      const k = tensors.length + j, v = values[j]!;
      if (type === "f32") f32[k] = v;
      else if (type === "i32") i32[k] = v;
      else u32[k] = v;
    });
    this.#slot++;
    const nwords = tensors.length + prog.fields.length;
    const ubytes = Math.max(16, Math.ceil((nwords * 4) / 16) * 16);
    entries.push({
      binding: tensors.length,
      resource: { buffer: this.#uniforms, offset: slotOffset, size: ubytes },
    });
    let layout = this.#layouts.get(pipeline);
    if (layout === undefined) this.#layouts.set(pipeline, layout = pipeline.getBindGroupLayout(0));
    const bindGroup = this.device.createBindGroup({ layout, entries });
    const pass = this.#openPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
  }

  // Dispatches of one turn share a compute pass (WebGPU orders and synchronises the dispatches
  // of a pass); the batch is submitted at the end of the turn, or before anything that has to
  // follow it on the queue (a write, a copy, a read).
  #openPass(): GPUComputePassEncoder {
    if (this.#pass === null) {
      this.#encoder = this.device.createCommandEncoder();
      this.#pass = this.#encoder.beginComputePass();
      queueMicrotask(() => this.flush());
    }
    return this.#pass;
  }

  /** Submit the open batch of dispatches, with its uniforms written first. */
  flush(): void {
    if (this.#pass === null || this.#disposed) return;
    this.#pass.end();
    const cmd = this.#encoder!.finish();
    this.#pass = null;
    this.#encoder = null;
    this.device.queue.writeBuffer(
      this.#uniforms,
      0,
      this.#uniformHost,
      0,
      this.#slot * UNIFORM_SLOT,
    );
    this.#slot = 0;
    this.device.queue.submit([cmd]);
  }

  /**
   * Copy `src` into `dst` on the device (different buffers, equal dtypes; a 16-bit window must
   * start and end on whole words).
   */
  copyBuffer(dst: GpuTensor, src: GpuTensor): void {
    this.check("copy");
    this.flush();
    const eb = bytesOf(src.dtype);
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(
      src.buffer,
      src.offset * eb,
      dst.buffer,
      dst.offset * eb,
      src.length * eb,
    );
    this.device.queue.submit([enc.finish()]);
  }

  /**
   * Write host data at element `offset` of `t` (a 16-bit tensor takes its raw bits, starting
   * and ending on whole words).
   */
  write(t: GpuTensor, src: Float32Array | Int32Array | Uint16Array, offset: number): void {
    this.check("write");
    if (src.length === 0) return;
    this.flush();
    // A view of a SharedArrayBuffer (the CPU's flat buffers) is copied to a plain one first.
    const data = src.buffer instanceof ArrayBuffer ? src : src.slice();
    const eb = bytesOf(t.dtype);
    this.device.queue.writeBuffer(
      t.buffer,
      (t.offset + offset) * eb,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.length * eb,
    );
  }

  /** Read `t` back; reads requested in the same turn share one staging buffer and one map. */
  read(t: GpuTensor): Promise<Float32Array | Int32Array> {
    this.check("read");
    return new Promise((resolve, reject) => {
      if (this.#pending.length === 0) queueMicrotask(() => this.#flushReads());
      this.#pending.push({ t, resolve, reject });
    });
  }

  async #flushReads(): Promise<void> {
    const reads = this.#pending;
    this.#pending = [];
    try {
      this.flush();
      // Each read copies whole 4-byte words: [from, from + bytes) of its buffer.
      const starts: number[] = [], froms: number[] = [], sizes: number[] = [];
      let total = 0;
      for (const { t } of reads) {
        const half = bytesOf(t.dtype) === 2;
        const from = half ? (t.offset >> 1) * 4 : t.offset * 4;
        const bytes = t.length === 0
          ? 0
          : half
          ? ((t.offset + t.length + 1) >> 1) * 4 - from
          : t.length * 4;
        starts.push(total);
        froms.push(from);
        sizes.push(bytes);
        total += Math.ceil(bytes / 16) * 16; // keep each copy 16-byte aligned
      }
      const staging = this.device.createBuffer({
        size: Math.max(16, total),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      const enc = this.device.createCommandEncoder();
      reads.forEach((r, i) => {
        if (sizes[i]! > 0) {
          enc.copyBufferToBuffer(r.t.buffer, froms[i]!, staging, starts[i]!, sizes[i]!);
        }
      });
      this.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const all = staging.getMappedRange();
      const out = reads.map(({ t }, i) => {
        const bytes = new Uint8Array(all, starts[i]!, sizes[i]!).slice();
        if (t.dtype === "i32") return new Int32Array(bytes.buffer);
        if (t.dtype === "f32") return new Float32Array(bytes.buffer);
        const wide = new Float32Array(t.length);
        if (t.length > 0) {
          widenHalf(
            t.dtype as HalfDType,
            new Uint16Array(bytes.buffer, 2 * (t.offset & 1), t.length),
            wide,
          );
        }
        return wide;
      });
      staging.unmap();
      staging.destroy();
      const err = this.#error;
      reads.forEach((r, i) => {
        if (err !== null) r.reject(new Error(`read: an earlier WebGPU command failed: ${err}`));
        else r.resolve(out[i]!);
      });
    } catch (e) {
      for (const r of reads) r.reject(e);
    }
  }

  /** Destroy the device; every later call throws. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.device.destroy();
  }
}

function header(prog: Program): string {
  const lines: string[] = [];
  const fields: string[] = [];
  prog.bindings.forEach((b, i) => {
    const el = b === "vec4f" ? "vec4<f32>" : b;
    lines.push(`@group(0) @binding(${i}) var<storage, read_write> b${i}: array<${el}>;`);
    fields.push(`o${i}: u32`);
  });
  for (const [name, type] of prog.fields) fields.push(`${name}: ${type}`);
  lines.push(`struct P { ${fields.join(", ")} }`);
  lines.push(`@group(0) @binding(${prog.bindings.length}) var<uniform> p: P;`);
  return lines.join("\n") + "\n";
}
