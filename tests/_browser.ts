// A headless Chromium driven over the DevTools protocol (a WebSocket, no dependency): open a
// page, evaluate an expression in it, take a screenshot, and collect what the page logged as
// errors. For tests; every call is bounded in time.

/** The browser's path, or null when none is installed. */
export function findChromium(): string | null {
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not there */ }
  }
  return null;
}

/** What a page did. */
export interface PageVisit<T> {
  /** The value of the expression, evaluated after the load event. */
  value: T;
  /** A PNG screenshot of the page. */
  png: Uint8Array;
  /** Console errors and uncaught exceptions, as text. */
  errors: string[];
}

/**
 * Open `url` in a fresh headless Chromium, evaluate `expression` after the page loaded, take a
 * screenshot, and close the browser.
 *
 * @param chromium the browser's path
 * @param url the page
 * @param expression JavaScript evaluated in the page (its value, or what its promise resolves
 *   to, must be JSON)
 * @param timeoutMs the whole visit's limit
 * @returns the value, the screenshot and the page's errors
 */
export async function visit<T>(
  chromium: string,
  url: string,
  expression: string,
  timeoutMs = 60_000,
): Promise<PageVisit<T>> {
  const profile = await Deno.makeTempDir({ prefix: "loom-chromium-" });
  const proc = new Deno.Command(chromium, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--hide-scrollbars",
      "--window-size=1500,1400",
      "--remote-debugging-port=0",
      `--user-data-dir=${profile}`,
      "about:blank",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the browser did not finish within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  let ws: WebSocket | undefined;
  try {
    const work = (async () => {
      const port = await devtoolsPort(proc.stderr);
      const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as {
        type: string;
        webSocketDebuggerUrl: string;
      }[];
      const page = targets.find((t) => t.type === "page");
      if (page === undefined) throw new Error("the browser opened no page");
      ws = new WebSocket(page.webSocketDebuggerUrl);
      await new Promise((resolve, reject) => {
        ws!.onopen = resolve;
        ws!.onerror = () => reject(new Error("cannot reach the browser's DevTools socket"));
      });
      const cdp = new Cdp(ws);
      await cdp.call("Runtime.enable");
      await cdp.call("Log.enable");
      await cdp.call("Page.enable");
      const loaded = cdp.once("Page.loadEventFired");
      await cdp.call("Page.navigate", { url });
      await loaded;
      const r = await cdp.call("Runtime.evaluate", {
        expression,
        returnByValue: true,
        awaitPromise: true,
      }) as {
        result: { value: T };
        exceptionDetails?: { text: string };
      };
      if (r.exceptionDetails) throw new Error(`evaluate: ${r.exceptionDetails.text}`);
      const shot = await cdp.call("Page.captureScreenshot", {
        format: "png",
        captureBeyondViewport: true,
      }) as { data: string };
      const png = Uint8Array.from(atob(shot.data), (c) => c.charCodeAt(0));
      return { value: r.result.value, png, errors: cdp.errors };
    })();
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
    try {
      ws?.close();
    } catch { /* closed */ }
    try {
      proc.kill("SIGKILL");
    } catch { /* exited */ }
    await proc.status;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}

// Chromium prints "DevTools listening on ws://127.0.0.1:PORT/..." on stderr; the rest of its
// stderr is drained so that it never blocks.
async function devtoolsPort(stderr: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the browser exited before it listened:\n${text}`);
    text += value;
    const m = /DevTools listening on ws:\/\/[^:]+:(\d+)\//.exec(text);
    if (m) {
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })().catch(() => {});
      return Number(m[1]);
    }
  }
}

class Cdp {
  #id = 0;
  readonly #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  readonly #waiting = new Map<string, (() => void)[]>();
  readonly errors: string[] = [];

  constructor(ws: WebSocket) {
    ws.onmessage = (ev) => {
      const msg = JSON.parse(String(ev.data));
      if (msg.id !== undefined) {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`${msg.error.message} (${msg.error.code})`));
        else p?.resolve(msg.result);
        return;
      }
      if (msg.method === "Runtime.exceptionThrown") {
        const d = msg.params.exceptionDetails;
        this.errors.push(`exception: ${d.exception?.description ?? d.text}`);
      } else if (msg.method === "Runtime.consoleAPICalled" && msg.params.type === "error") {
        this.errors.push(
          `console.error: ${
            msg.params.args.map((a: { value?: unknown }) => String(a.value)).join(" ")
          }`,
        );
      } else if (msg.method === "Log.entryAdded" && msg.params.entry.level === "error") {
        this.errors.push(`log: ${msg.params.entry.text}`);
      }
      for (const f of this.#waiting.get(msg.method) ?? []) f();
      this.#waiting.delete(msg.method);
    };
    this.ws = ws;
  }

  readonly ws: WebSocket;

  call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = ++this.#id;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  once(method: string): Promise<void> {
    return new Promise((resolve) => {
      const list = this.#waiting.get(method) ?? [];
      list.push(resolve);
      this.#waiting.set(method, list);
    });
  }
}
