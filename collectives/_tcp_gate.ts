/**
 * Listening for whoever connects ({@link ./rendezvous.ts}): a {@linkcode Gate} accepts
 * connections and runs each one's handshake concurrently (at most {@linkcode MAX_PENDING} at
 * once, each bounded in time), and a refused connection is logged with its address and reason,
 * told why in an error frame, and closed ({@linkcode refuse}).
 *
 * @module
 */
import { FrameOp, writeFrame } from "./frame.ts";
import { printable, Refused } from "./_wire_auth.ts";

/** Most connections in their handshake at once, per listener. */
export const MAX_PENDING = 64;

/** `p`, or a {@linkcode Refused} rejection saying `why` when it takes longer than `ms`. */
export function within<T>(
  p: Promise<T>,
  ms: number,
  why = `it took more than ${ms} ms`,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Refused(why, "protocol")), Math.max(0, ms));
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * Bounds for the steps of one connection's handshake: each step races the rendezvous deadline
 * (`race`) and what is left of `ms` for the whole handshake.
 */
export function handshakeBudget(
  race: <T>(p: Promise<T>) => Promise<T>,
  ms: number,
): <T>(p: Promise<T>) => Promise<T> {
  const end = performance.now() + ms;
  const why = `it did not finish its handshake within ${ms} ms`;
  return <T>(p: Promise<T>) => race(within(p, end - performance.now(), why));
}

/** Close, ignoring an already closed resource. */
export function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

/** Resolve after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Whether a host name or address is a loopback one. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "::1";
}

/** `host:port` of an address, for messages. */
export function addrOf(a: Deno.Addr): string {
  const n = a as Deno.NetAddr;
  return n.hostname.includes(":") ? `[${n.hostname}]:${n.port}` : `${n.hostname}:${n.port}`;
}

/**
 * Tell a peer why it is refused, from rank `src` (best effort: it may be gone already). A
 * `reason` makes the peer raise a `CollectiveError` of that reason, none a `RangeError`.
 */
export function sendError(
  conn: Deno.Conn,
  src: number,
  message: string,
  reason?: string,
): Promise<void> {
  const head = { op: FrameOp.error, kind: 0, src, group: 0, tag: 0, seq: 0, total: 0, arg: 0 };
  const body = new TextEncoder().encode(JSON.stringify({ message, reason }));
  return within(writeFrame(conn, head, body), 1000).catch(() => {});
}

/** The connections a listener refused, for the log and for a failed rendezvous's message. */
export class Refusals {
  /** How many were refused. */
  count = 0;
  #last: string[] = [];

  /** @param who prefix of every log line's subject, e.g. `"rank 1 "` */
  constructor(private readonly who: string) {}

  /** Log one refused connection. */
  note(from: string, why: string): void {
    this.count++;
    const text = printable(why);
    console.error(`loom rendezvous: ${this.who}dropped connection from ${from}: ${text}`);
    this.#last.push(`${from}: ${text}`);
    if (this.#last.length > 3) this.#last.shift();
  }

  /** The count and the last few, for an error message ("" when none). */
  summary(): string {
    if (this.count === 0) return "";
    return `; refused ${this.count} connection(s), the last: ${this.#last.join("; ")}`;
  }
}

/**
 * Log a refused connection, tell the peer why (from rank `src`), close it. A
 * {@linkcode Refused} carries the kind of error the peer raises; anything else (bytes that are
 * not frames, a frame too large) is a protocol refusal.
 */
export async function refuse(
  conn: Deno.TcpConn,
  src: number,
  from: string,
  e: unknown,
  log: Refusals,
): Promise<void> {
  const why = printable(e instanceof Error ? e.message : String(e));
  log.note(from, why);
  const reason = e instanceof Refused ? e.reason : "protocol";
  await sendError(conn, src, why, reason);
  closeQuietly(conn);
}

/**
 * Accepts connections on a listener and runs `handle` on each, at most {@linkcode MAX_PENDING}
 * at once (more are refused at once); `close()` stops it and drops the connections still in
 * their handshake.
 */
export class Gate {
  readonly #pending = new Map<Deno.TcpConn, Promise<void>>();
  readonly #loop: Promise<void>;
  /** True once closing: handshakes that fail then were cut short, not refused. */
  closing = false;

  /**
   * @param listener where connections come in
   * @param handle a connection's handshake; it refuses or keeps the connection itself
   * @param log where refusals for being too many go
   */
  constructor(
    readonly listener: Deno.TcpListener,
    handle: (conn: Deno.TcpConn, from: string) => Promise<void>,
    log: Refusals,
  ) {
    this.#loop = (async () => {
      while (!this.closing) {
        let conn: Deno.TcpConn;
        try {
          conn = await listener.accept();
        } catch (e) {
          if (this.closing || e instanceof Deno.errors.BadResource) return;
          await sleep(50); // e.g. out of file descriptors: try again
          continue;
        }
        const from = addrOf(conn.remoteAddr);
        if (this.closing) {
          closeQuietly(conn);
          return;
        }
        if (this.#pending.size >= MAX_PENDING) {
          log.note(from, `more than ${MAX_PENDING} connections are in their handshake`);
          closeQuietly(conn);
          continue;
        }
        const p = handle(conn, from).catch(() => closeQuietly(conn)).finally(() =>
          this.#pending.delete(conn)
        );
        this.#pending.set(conn, p);
      }
    })();
  }

  /** Stop accepting and drop the connections still in their handshake. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.closing = true;
      closeQuietly(this.listener);
      await this.#loop;
      for (const c of this.#pending.keys()) closeQuietly(c);
      await Promise.all(this.#pending.values());
    })();
    return this.#closed;
  }

  #closed: Promise<void> | undefined;
}
