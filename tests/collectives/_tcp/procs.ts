// Rank processes for the wire tests: spawn secure_rank.ts, watch its stderr as it comes, and
// read its report (the last line of its stdout).

export { freeLoopbackPort as freePort } from "../../../collectives/launch.ts";

const RANK = new URL("./secure_rank.ts", import.meta.url).pathname;

/** A report a rank prints. */
export interface RankReport {
  rank: number;
  checks: number;
  failures: string[];
  lanes: number;
  iterations?: number;
}

/** One rank of a test job, in its own process. */
export class RankProcess {
  readonly proc: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly #streams: Promise<void>;
  #waiters: { re: RegExp; resolve: () => void }[] = [];
  #stdinOpen: boolean;

  constructor(
    scenario: string,
    readonly rank: number,
    size: number,
    port: number,
    env: Record<string, string>,
    opts: { lanes?: boolean; stdin?: boolean } = {},
  ) {
    this.proc = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", RANK, scenario, String(rank), String(size), String(port)]
        .concat([opts.lanes === false ? "0" : "1"]),
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      // An empty LOOM_SECRET counts as none: a secret in this shell does not leak into the job.
      env: { NO_COLOR: "1", LOOM_SECRET: "", ...env },
    }).spawn();
    this.#stdinOpen = opts.stdin === true;
    const pump = async (s: ReadableStream<Uint8Array>, err: boolean) => {
      for await (const text of s.pipeThrough(new TextDecoderStream())) {
        if (err) this.stderr += text;
        else this.stdout += text;
        this.#wake();
      }
    };
    this.#streams = Promise.all([pump(this.proc.stdout, false), pump(this.proc.stderr, true)])
      .then(() => this.#wake());
  }

  #wake(): void {
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.re.test(this.stderr)) return true;
      w.resolve();
      return false;
    });
  }

  /** Wait until stderr matches `re`; returns the match. */
  async waitFor(re: RegExp, ms = 30_000): Promise<RegExpMatchArray> {
    if (!re.test(this.stderr)) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.#waiters.push({ re, resolve })),
        new Promise<void>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`rank ${this.rank} never printed ${re}:\n${this.stderr}`)),
            ms,
          );
        }),
        this.#streams.then(() => {
          if (!re.test(this.stderr)) {
            throw new Error(`rank ${this.rank} ended without printing ${re}:\n${this.stderr}`);
          }
        }),
      ]).finally(() => clearTimeout(timer));
    }
    return this.stderr.match(re)!;
  }

  /** Write a line to its stdin and close it. */
  async say(line: string): Promise<void> {
    this.#stdinOpen = false;
    const w = this.proc.stdin.getWriter();
    await w.write(new TextEncoder().encode(line + "\n"));
    await w.close();
  }

  /** Wait for it to end (killing it after `ms`) and return its exit code and report. */
  async finish(ms = 60_000): Promise<{ code: number; report: RankReport | null }> {
    if (this.#stdinOpen) {
      this.#stdinOpen = false;
      await this.proc.stdin.close().catch(() => {});
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killer = new Promise<void>((r) => {
      timer = setTimeout(() => {
        try {
          this.proc.kill("SIGKILL");
        } catch { /* gone */ }
        r();
      }, ms);
    });
    const status = await Promise.race([this.proc.status, killer.then(() => this.proc.status)]);
    clearTimeout(timer);
    await this.#streams;
    const last = this.stdout.trim().split("\n").at(-1) ?? "";
    let report: RankReport | null = null;
    try {
      report = JSON.parse(last);
    } catch { /* no report */ }
    return { code: status.code, report };
  }

  /** Lines of stderr that log a refused connection, as [port, reason]. */
  refusals(): [number, string][] {
    const out: [number, string][] = [];
    for (const m of this.stderr.matchAll(/dropped connection from 127\.0\.0\.1:(\d+): (.*)/g)) {
      out.push([Number(m[1]), m[2]!]);
    }
    return out;
  }
}
