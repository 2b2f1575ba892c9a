/**
 * Open MPI through Deno's FFI: finding and loading `libmpi`, the functions the MPI transport
 * calls, and the predefined handles of Open MPI's C ABI.
 *
 * In Open MPI's ABI a handle (`MPI_Comm`, `MPI_Datatype`, `MPI_Op`, `MPI_Request`, ...) is a
 * pointer, and every predefined one is the address of a global object of the library:
 * `MPI_COMM_WORLD` is `&ompi_mpi_comm_world`, `MPI_FLOAT` is `&ompi_mpi_float`, `MPI_SUM` is
 * `&ompi_mpi_op_sum`. Deno's `dlopen` gives a static of type `"pointer"` as the address of its
 * symbol, which is exactly such a handle. `MPI_Status` is five fields: `MPI_SOURCE`, `MPI_TAG`,
 * `MPI_ERROR` and an internal flag (four `int`s), then a `size_t` byte count: 24 bytes on
 * 64-bit Linux. MPICH and its derivatives use integer handles instead: this module accepts only
 * a library that exports Open MPI's globals.
 *
 * @module
 */

/** `MPI_SUCCESS`. */
export const MPI_SUCCESS = 0;
/** `MPI_ERR_TRUNCATE`: a message longer than the receive buffer. */
export const MPI_ERR_TRUNCATE = 15;
/** `MPI_ERR_IN_STATUS`: the error of a multi-request test is in each request's status. */
export const MPI_ERR_IN_STATUS = 18;
/** `MPI_UNDEFINED`: the color of a rank that joins no group in `MPI_Comm_split`. */
export const MPI_UNDEFINED = -32766;
/** `MPI_TAG_UB`: the attribute key of the largest tag. */
export const MPI_TAG_UB = 0;
/** `MPI_THREAD_FUNNELED`: only the thread that initialized MPI calls it. */
export const MPI_THREAD_FUNNELED = 1;
/** Bytes of an `MPI_Status` on 64-bit Linux. */
export const STATUS_BYTES = 24;
/** Byte offset of `MPI_ERROR` in an `MPI_Status`. */
export const STATUS_ERROR = 8;

const P = "pointer", I = "i32", B = "buffer";

/** Every function and predefined handle the transport uses. */
export const MPI_SYMBOLS = {
  MPI_Initialized: { parameters: [B], result: I },
  MPI_Finalized: { parameters: [B], result: I },
  MPI_Init_thread: { parameters: [P, P, I, B], result: I },
  MPI_Finalize: { parameters: [], result: I },
  MPI_Get_library_version: { parameters: [B, B], result: I },
  MPI_Error_string: { parameters: [I, B, B], result: I },
  MPI_Comm_rank: { parameters: [P, B], result: I },
  MPI_Comm_size: { parameters: [P, B], result: I },
  MPI_Comm_dup: { parameters: [P, B], result: I },
  MPI_Comm_split: { parameters: [P, I, I, B], result: I },
  MPI_Comm_free: { parameters: [B], result: I },
  MPI_Comm_set_errhandler: { parameters: [P, P], result: I },
  MPI_Comm_get_attr: { parameters: [P, I, B, B], result: I },
  MPI_Get_count: { parameters: [B, P, B], result: I },
  MPI_Test: { parameters: [B, B, B], result: I },
  MPI_Testall: { parameters: [I, B, B, B], result: I },
  MPI_Cancel: { parameters: [B], result: I },
  // (sendbuf, recvbuf, count, datatype, op, comm, request)
  MPI_Iallreduce: { parameters: [P, P, I, P, P, P, B], result: I },
  // (sendbuf, recvbuf, count, datatype, op, root, comm, request)
  MPI_Ireduce: { parameters: [P, P, I, P, P, I, P, B], result: I },
  // (buffer, count, datatype, root, comm, request)
  MPI_Ibcast: { parameters: [P, I, P, I, P, B], result: I },
  // (sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm, request)
  MPI_Iallgather: { parameters: [P, I, P, P, I, P, P, B], result: I },
  MPI_Ialltoall: { parameters: [P, I, P, P, I, P, P, B], result: I },
  // (sendbuf, recvbuf, recvcount, datatype, op, comm, request)
  MPI_Ireduce_scatter_block: { parameters: [P, P, I, P, P, P, B], result: I },
  MPI_Ibarrier: { parameters: [P, B], result: I },
  // (buf, count, datatype, peer, tag, comm, request)
  MPI_Isend: { parameters: [P, I, P, I, I, P, B], result: I },
  MPI_Irecv: { parameters: [P, I, P, I, I, P, B], result: I },
  // The tools interface, to choose libnbc's all-reduce algorithm per call (optional: absent
  // from libraries older than MPI 3.1).
  MPI_T_init_thread: { parameters: [I, B], result: I, optional: true },
  MPI_T_finalize: { parameters: [], result: I, optional: true },
  MPI_T_cvar_get_index: { parameters: [B, B], result: I, optional: true },
  MPI_T_cvar_handle_alloc: { parameters: [I, P, B, B], result: I, optional: true },
  MPI_T_cvar_handle_free: { parameters: [B], result: I, optional: true },
  MPI_T_cvar_write: { parameters: [P, B], result: I, optional: true },
  ompi_mpi_comm_world: { type: P },
  ompi_mpi_comm_null: { type: P },
  ompi_mpi_float: { type: P },
  ompi_mpi_int32_t: { type: P },
  ompi_mpi_int16_t: { type: P },
  ompi_mpi_uint16_t: { type: P },
  ompi_mpi_op_sum: { type: P },
  ompi_mpi_op_max: { type: P },
  ompi_mpi_op_min: { type: P },
  ompi_mpi_errors_return: { type: P },
  ompi_request_null: { type: P },
} as const;

/** The loaded library's symbols. */
export type MpiLib = Deno.DynamicLibrary<typeof MPI_SYMBOLS>["symbols"];

/** Names tried, in order, when no library is named: Open MPI 3.x to 5.x on Linux, then macOS. */
export const MPI_LIBRARY_NAMES: readonly string[] = Deno.build.os === "darwin"
  ? ["libmpi.40.dylib", "libmpi.dylib"]
  : ["libmpi.so.40", "libmpi.so"];

/** What to install when no library loads. */
export const MPI_INSTALL_HINT = Deno.build.os === "darwin"
  ? `install Open MPI (brew install open-mpi)`
  : `install Open MPI: on Debian or Ubuntu "apt-get install openmpi-bin" (its libopenmpi3 ` +
    `package holds libmpi.so.40)`;

/** Why `libmpi` could not be loaded, with what to do about it. */
export class MpiLoadError extends Error {
  /**
   * Build the error.
   *
   * @param message what failed and how to fix it
   */
  constructor(message: string) {
    super(message);
    this.name = "MpiLoadError";
  }
}

let loaded: { path: string; dylib: Deno.DynamicLibrary<typeof MPI_SYMBOLS> } | undefined;

/**
 * Ask the dynamic linker to make the library's symbols global (`RTLD_GLOBAL`): Open MPI loads
 * its components as plugins, and a build whose plugins are not linked against `libmpi` finds
 * the symbols they need only there. Best effort: nothing happens where libc has no `dlopen`.
 */
export function promoteGlobal(path: string): void {
  if (Deno.build.os !== "linux") return;
  try {
    const libc = Deno.dlopen("libc.so.6", { dlopen: { parameters: ["buffer", "i32"], result: P } });
    try {
      const RTLD_NOW = 2, RTLD_GLOBAL = 0x100;
      libc.symbols.dlopen(new TextEncoder().encode(path + "\0"), RTLD_NOW | RTLD_GLOBAL);
    } finally {
      libc.close();
    }
  } catch {
    // Deno's own load stands; most builds link their plugins against libmpi anyway.
  }
}

/**
 * Load Open MPI's `libmpi` (once per process) and return its symbols.
 *
 * @param library a file name or path to load; default: `LOOM_MPI_LIBRARY`, then
 *   {@linkcode MPI_LIBRARY_NAMES}
 * @returns the library's symbols and the name that loaded
 * @throws {MpiLoadError} when no candidate loads, or the one that loads is not Open MPI
 */
export function loadMpi(library?: string): { lib: MpiLib; path: string } {
  if (loaded !== undefined) {
    if (library !== undefined && library !== loaded.path) {
      throw new MpiLoadError(
        `libmpi is already loaded from "${loaded.path}" in this process; it cannot also be ` +
          `loaded from "${library}"`,
      );
    }
    return { lib: loaded.dylib.symbols, path: loaded.path };
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    throw new MpiLoadError(
      "the MPI transport calls libmpi through FFI: run deno with --allow-ffi (or -A)",
    );
  }
  const fromEnv = Deno.permissions.querySync({ name: "env", variable: "LOOM_MPI_LIBRARY" })
      .state === "granted"
    ? Deno.env.get("LOOM_MPI_LIBRARY")
    : undefined;
  const names = library !== undefined
    ? [library]
    : fromEnv !== undefined && fromEnv !== ""
    ? [fromEnv]
    : MPI_LIBRARY_NAMES;
  const why: string[] = [];
  for (const name of names) {
    let dylib: Deno.DynamicLibrary<typeof MPI_SYMBOLS>;
    try {
      dylib = Deno.dlopen(name, MPI_SYMBOLS);
    } catch (e) {
      const msg = (e as Error).message;
      if (/ompi_mpi_/.test(msg)) {
        throw new MpiLoadError(
          `"${name}" loads but is not Open MPI (${msg}): Loom's MPI transport speaks Open MPI's ` +
            `ABI (MPICH-style libraries use integer handles); ${MPI_INSTALL_HINT}, or point ` +
            `LOOM_MPI_LIBRARY at Open MPI's libmpi.so.40`,
        );
      }
      why.push(`${name}: ${msg}`);
      continue;
    }
    loaded = { path: name, dylib };
    return { lib: dylib.symbols, path: name };
  }
  throw new MpiLoadError(
    `cannot load libmpi (${why.join("; ")}): ${MPI_INSTALL_HINT}, or name the library with ` +
      `LOOM_MPI_LIBRARY=/path/to/libmpi.so.40`,
  );
}

/** The text MPI gives for an error code. */
export function mpiErrorString(lib: MpiLib, code: number): string {
  const text = new Uint8Array(512);
  const len = new Int32Array(1);
  if (lib.MPI_Error_string(code, text, len) !== MPI_SUCCESS) return `MPI error ${code}`;
  return `${new TextDecoder().decode(text.subarray(0, Math.max(0, len[0]!)))} (MPI error ${code})`;
}

/** MPI's version string, e.g. `"Open MPI v4.1.4, ..."`. */
export function mpiLibraryVersion(lib: MpiLib): string {
  const text = new Uint8Array(8192);
  const len = new Int32Array(1);
  if (lib.MPI_Get_library_version(text, len) !== MPI_SUCCESS) return "unknown";
  return new TextDecoder().decode(text.subarray(0, Math.max(0, len[0]!))).split("\n")[0]!.trim();
}

/** A handle (pointer) that a call wrote into `slot`. */
export function handleAt(slot: BigUint64Array, i = 0): Deno.PointerValue {
  return Deno.UnsafePointer.create(slot[i]!);
}

/** `MPI_IN_PLACE`, which Open MPI defines as the address 1. */
export const MPI_IN_PLACE: Deno.PointerValue = Deno.UnsafePointer.create(1n);

/**
 * The address of a buffer's first element, stable for as long as the buffer is referenced:
 * V8 keeps small typed arrays inside its heap, where the collector may move them, until their
 * `buffer` is asked for; asking moves them out for good.
 */
export function addressOf(buf: ArrayBufferView): Deno.PointerValue {
  if (buf.byteLength === 0) return null;
  void buf.buffer;
  return Deno.UnsafePointer.of(buf as Uint8Array);
}
