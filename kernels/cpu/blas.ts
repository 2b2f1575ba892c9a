/**
 * The system's BLAS through Deno FFI: `cblas_sgemm` of OpenBLAS (Debian's `libopenblas0`), a
 * `libcblas`, or Apple's Accelerate, loaded on first use and shared by every caller in this
 * Worker. OpenBLAS's thread count is per process (shared by all Workers of the process), so a
 * node running several ranks sets it once with {@linkcode setBlasThreads} to avoid
 * oversubscribing the cores.
 *
 * Arrays may live on a SharedArrayBuffer: FFI takes views of one directly.
 *
 * The environment variable `LOOM_BLAS_LIB` overrides the libraries tried: a path (or several,
 * comma-separated) to a library that exports `cblas_sgemm`, or `none` to use no BLAS.
 *
 * @module
 */

import { checkGemmArgs, type Gemm } from "./gemm.ts";

/** What was loaded, as reported by the library. */
export interface BlasInfo {
  /** The file that was opened, e.g. `"libopenblas.so.0"`. */
  readonly library: string;
  /** The kernel set OpenBLAS picked for this CPU (`"Haswell"`, `"SkylakeX"`, ...); null if not OpenBLAS. */
  readonly corename: string | null;
  /** OpenBLAS's build configuration string; null if not OpenBLAS. */
  readonly config: string | null;
}

/** A {@linkcode Gemm} backed by the system's BLAS. */
export interface BlasGemm extends Gemm {
  /** What was loaded. */
  readonly info: BlasInfo;
}

const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_get_corename: { parameters: [], result: "pointer", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
} as const;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>;

const ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;

/** Library names tried in order: `LOOM_BLAS_LIB` if set, else per operating system. */
function candidates(): string[] {
  let env: string | undefined;
  try {
    env = Deno.env.get("LOOM_BLAS_LIB");
  } catch {
    env = undefined; // no env permission: use the defaults
  }
  if (env !== undefined && env !== "") return env === "none" ? [] : env.split(",");
  switch (Deno.build.os) {
    case "darwin":
      return [
        "libopenblas.dylib",
        "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
        "/usr/local/opt/openblas/lib/libopenblas.dylib",
        "/System/Library/Frameworks/Accelerate.framework/Accelerate",
      ];
    case "windows":
      return ["libopenblas.dll", "openblas.dll"];
    default:
      return [
        "libopenblas.so.0",
        "libopenblas.so",
        "libopenblasp.so.0",
        "libcblas.so.3",
        "libcblas.so",
        "libblas.so.3",
      ];
  }
}

let loaded: { lib: Lib; gemm: BlasGemm } | null | undefined;
let lastError = "";

function cString(p: Deno.PointerValue): string | null {
  return p === null ? null : new Deno.UnsafePointerView(p).getCString();
}

function open(): { lib: Lib; gemm: BlasGemm } | null {
  const errors: string[] = [];
  for (const path of candidates()) {
    let lib: Lib;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      errors.push(`${path}: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
      continue;
    }
    const s = lib.symbols;
    const info: BlasInfo = {
      library: path,
      corename: s.openblas_get_corename ? cString(s.openblas_get_corename()) : null,
      config: s.openblas_get_config ? cString(s.openblas_get_config()) : null,
    };
    const sgemm = s.cblas_sgemm;
    const gemm: BlasGemm = {
      name: "blas",
      info,
      sgemm(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc): void {
        checkGemmArgs(tA, tB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
        if (M === 0 || N === 0) return;
        sgemm(
          ROW_MAJOR,
          tA ? TRANS : NO_TRANS,
          tB ? TRANS : NO_TRANS,
          M,
          N,
          K,
          alpha,
          offA === 0 ? A : A.subarray(offA),
          lda,
          offB === 0 ? B : B.subarray(offB),
          ldb,
          beta,
          offC === 0 ? C : C.subarray(offC),
          ldc,
        );
      },
    };
    return { lib, gemm };
  }
  lastError = errors.length ? errors.join("; ") : "LOOM_BLAS_LIB=none";
  return null;
}

/**
 * The system BLAS as a {@linkcode Gemm}, opened on the first call (later calls return the same
 * object); `null` when no library with `cblas_sgemm` is found, FFI is not permitted, or
 * `LOOM_BLAS_LIB=none`.
 *
 * @returns the BLAS gemm, or null (see {@linkcode blasLoadError} for why)
 *
 * @example Multiply with OpenBLAS where present
 * ```ts
 * import { loadBlas } from "./blas.ts";
 * const blas = loadBlas();
 * if (blas) console.log(blas.info.library, blas.info.corename);
 * ```
 */
export function loadBlas(): BlasGemm | null {
  if (loaded === undefined) {
    try {
      loaded = open();
    } catch (e) {
      // Deno.dlopen is missing or FFI permission was refused.
      lastError = e instanceof Error ? e.message : String(e);
      loaded = null;
    }
  }
  return loaded?.gemm ?? null;
}

/**
 * Why {@linkcode loadBlas} returned null (empty when it did not).
 *
 * @returns the reasons, one per library tried
 */
export function blasLoadError(): string {
  return lastError;
}

/**
 * Set OpenBLAS's thread count. It is one setting per process, shared by every Worker in it:
 * a node running R ranks on P cores should set it to max(1, floor(P / R)).
 *
 * @param n threads, an integer >= 1
 * @returns false when no OpenBLAS is loaded (Accelerate and plain CBLAS have no such knob)
 */
export function setBlasThreads(n: number): boolean {
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`BLAS thread count must be an integer >= 1, got ${n}`);
  }
  loadBlas();
  const set = loaded?.lib.symbols.openblas_set_num_threads;
  if (!set) return false;
  set(n);
  return true;
}

/**
 * OpenBLAS's current thread count.
 *
 * @returns the count, or null when no OpenBLAS is loaded
 */
export function getBlasThreads(): number | null {
  loadBlas();
  const get = loaded?.lib.symbols.openblas_get_num_threads;
  return get ? get() : null;
}
