// Runs WebGPU test modules in a plain `deno run` process and prints one JSON line per test.
//
// Why: with Deno 2.9.6 on Mesa's llvmpipe, a `deno test` process that has run WebGPU compute
// work aborts at exit ("double free or corruption") in about 1 run of 10, after every test has
// passed; the same work under `deno run` exits cleanly (0 of 30). tests/gpu_test.ts starts this
// harness, so the GPU checks run and are asserted while the test process never touches WebGPU.
//
// Usage: LOOM_TEST_GPU_CHILD=1 deno run -A tests/_gpu_child.ts MODULE...
// The modules register their tests with Deno.test as usual (and register only their WebGPU tests
// when LOOM_TEST_GPU_CHILD is set); this harness collects and runs them in order.

type Fn = (t: TestContext) => void | Promise<void>;
interface TestContext {
  name: string;
  step(name: string, fn: Fn): Promise<boolean>;
}
interface Registered {
  name: string;
  fn: Fn;
  ignore: boolean;
}

const registered: Registered[] = [];
function register(a: unknown, b?: unknown, c?: unknown): void {
  if (typeof a === "string") {
    const fn = (typeof b === "function" ? b : c) as Fn;
    const opts = (typeof b === "object" && b !== null ? b : {}) as { ignore?: boolean };
    registered.push({ name: a, fn, ignore: opts.ignore === true });
  } else {
    const d = a as { name: string; fn: Fn; ignore?: boolean };
    registered.push({ name: d.name, fn: d.fn, ignore: d.ignore === true });
  }
}
(Deno as unknown as { test: unknown }).test = register;

function context(name: string): TestContext {
  return {
    name,
    async step(stepName: string, fn: Fn): Promise<boolean> {
      await fn(context(`${name} > ${stepName}`));
      return true;
    },
  };
}

for (const m of Deno.args) await import(new URL(m, `file://${Deno.cwd()}/`).href);
for (const t of registered) {
  if (t.ignore) {
    console.log(JSON.stringify({ name: t.name, ok: true, ignored: true }));
    continue;
  }
  const start = performance.now();
  try {
    await t.fn(context(t.name));
    console.log(JSON.stringify({ name: t.name, ok: true, ms: performance.now() - start }));
  } catch (e) {
    const error = e instanceof Error ? `${e.message}\n${e.stack ?? ""}` : String(e);
    console.log(JSON.stringify({ name: t.name, ok: false, error }));
  }
}
