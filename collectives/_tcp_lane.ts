/**
 * Lanes: one extra TCP connection per pair of ranks, driven through libc by FFI, for small
 * collectives. A Deno socket costs 20-30 us per exchange on loopback (every read and write is
 * an async op through the event loop); a lane sends with one `send` call and waits by spinning
 * on a non-blocking `recv` for a few tens of microseconds, then in `poll`. So a 4 KiB
 * all-reduce between two processes takes ~15 us instead of ~50 us.
 *
 * Frames on a lane are the mesh's frames (same header, same checks). A lane is opened right
 * after the rendezvous by a handshake over the mesh connection, and only when both ends can:
 * Linux, FFI permission, IPv4. Otherwise the pair simply has no lane and small collectives take
 * the mesh like everything else; every rank of a group makes the same choice (see
 * {@linkcode openLanes}).
 *
 * Opening a lane between a lower rank O (it listens) and a higher rank T (it connects), with
 * `T1`..`T4` the lane control frames over their mesh connection:
 *
 * ```
 * O -> T   mesh  T1  the port O listens on (0: no lane); with a secret, O's nonce No
 * T -> O   lane      T's rank and the job id; with a secret, T's nonce Nt and
 *                    HMAC(secret, "LOOMAUTH" v lane C n J T O Nt No)
 * T -> O   mesh  T2  whether T connected
 * O -> T   lane      with a secret, HMAC(secret, "LOOMAUTH" v lane A n J T O Nt No)
 * O -> T   mesh  T3  whether O accepted a connection that proved itself
 * T -> O   mesh  T4  with a secret, whether O's tag on the lane was right
 * ```
 *
 * The lane's sockets are driven synchronously through libc, so the tags are computed with Web
 * Crypto between those steps: T computes both of its tags before it connects, O checks T's once
 * the hello has arrived. The mesh connection is already authenticated, so No reaches T from O
 * and no one else; Nt is fresh, so O's tag cannot be replayed to T. The tags are the mesh
 * handshake's ({@link ./_wire_auth.ts}) with the lane's role. O takes only connections from T's
 * address, refuses (and logs) any other until one proves itself or 5 s have passed, and the
 * pair has a lane only when both ends say so (T3, and T4 with a secret).
 *
 * @module
 */
import {
  decodeHeader,
  encodeHeader,
  type FrameHeader,
  FrameOp,
  type FrameReader,
  HEADER_BYTES,
  writeAll,
} from "./frame.ts";
import type { Link, Mesh } from "./rendezvous.ts";
import {
  type AuthContext,
  AuthRole,
  AuthSide,
  newNonce,
  NONCE_BYTES,
  sameBytes,
  TAG_BYTES,
} from "./_wire_auth.ts";

const AF_INET = 2, SOCK_STREAM = 1, SOCK_NONBLOCK = 0x800, SOL_SOCKET = 1, SO_ERROR = 4;
const IPPROTO_TCP = 6, TCP_NODELAY = 1;
const MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000;
const POLLIN = 1, POLLOUT = 4, POLLERR = 8, POLLHUP = 16;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  poll: { parameters: ["buffer", "usize", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let dylib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
let libc: Libc | null = null;
/** Open lanes (and lane sets being opened): the library closes when the last one goes. */
let users = 0;

/** libc through FFI, or null where lanes cannot work (not Linux, no FFI permission). */
function acquire(): Libc | null {
  if (dylib === undefined) {
    try {
      if (Deno.build.os !== "linux") return null;
      if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
      dylib = Deno.dlopen("libc.so.6", SYMBOLS);
      libc = dylib.symbols;
    } catch {
      return null;
    }
  }
  users++;
  return libc;
}

function release(): void {
  if (dylib === undefined || --users > 0) return;
  dylib.close();
  dylib = undefined;
  libc = null;
}

function sockaddr(host: string, port: number): Uint8Array | null {
  const parts = host.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    return null;
  }
  const a = new Uint8Array(16);
  const v = new DataView(a.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  a.set(parts, 4);
  return a;
}

const int1 = new Uint8Array(new Int32Array([1]).buffer);
const pollBuf = new Uint8Array(8 * 64);
const pollView = new DataView(pollBuf.buffer);

/** poll() on `fds` for `events`, up to `ms`; returns the revents of each. */
function pollFds(c: Libc, fds: number[], events: number, ms: number): number[] {
  const n = Math.min(fds.length, 64);
  for (let i = 0; i < n; i++) {
    pollView.setInt32(8 * i, fds[i]!, true);
    pollView.setInt16(8 * i + 4, events, true);
    pollView.setInt16(8 * i + 6, 0, true);
  }
  c.poll(pollBuf, BigInt(n), Math.max(0, Math.floor(ms)));
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(pollView.getInt16(8 * i + 6, true));
  return out;
}

/** A lane broke: the peer closed it, reset it, or sent something that is not a frame. */
export class LaneError extends Error {
  constructor(readonly peer: number, message: string) {
    super(message);
    this.name = "LaneError";
  }
}

/** One frame received on a lane. */
export interface LaneFrame {
  header: FrameHeader;
  payload: Uint8Array;
}

/** A connected lane to one peer. */
export class Lane {
  #c: Libc;
  #rx: Uint8Array;
  #have = 0;
  #tx = new Uint8Array(HEADER_BYTES + 4096);
  /** Frames received and not yet taken, by key (group, seq, tag). */
  readonly #frames = new Map<string, LaneFrame[]>();
  /** Why the lane is unusable, once it is. */
  broken: string | undefined;

  constructor(c: Libc, readonly fd: number, readonly peer: number, readonly maxPayload: number) {
    this.#c = c;
    this.#rx = new Uint8Array(HEADER_BYTES + maxPayload + 64 * 1024);
  }

  /**
   * Send one frame (`head` is its encoded header) before `deadline` (a `performance.now()`
   * time): returns false when the socket stayed full until then; throws {@linkcode LaneError}
   * when the connection is gone.
   */
  send(head: Uint8Array, payload: Uint8Array, deadline: number): boolean {
    const n = HEADER_BYTES + payload.length;
    if (this.#tx.length < n) this.#tx = new Uint8Array(2 ** Math.ceil(Math.log2(n)));
    this.#tx.set(head);
    this.#tx.set(payload, HEADER_BYTES);
    let off = 0;
    while (off < n) {
      const k = Number(
        this.#c.send(
          this.fd,
          this.#tx.subarray(off, n),
          BigInt(n - off),
          MSG_DONTWAIT | MSG_NOSIGNAL,
        ),
      );
      if (k > 0) {
        off += k;
        continue;
      }
      // errno is not reliable through FFI: ask poll whether the socket is writable or dead.
      const left = deadline - performance.now();
      if (left <= 0) return false;
      const [re] = pollFds(this.#c, [this.fd], POLLOUT, Math.min(left, 100));
      if ((re! & (POLLERR | POLLHUP)) !== 0) this.#fail("the connection was reset");
    }
    return true;
  }

  /**
   * Read what has arrived, without blocking; returns true when a frame was completed. With
   * `check`, also ask poll() whether the connection failed (a failed `recv` cannot tell: errno
   * is not reliable through FFI), which costs a second call.
   */
  pump(check = true): boolean {
    if (this.broken !== undefined) throw new LaneError(this.peer, this.broken);
    let got = false;
    for (;;) {
      const free = this.#rx.length - this.#have;
      const into = this.#have === 0 ? this.#rx : this.#rx.subarray(this.#have);
      const k = Number(this.#c.recv(this.fd, into, BigInt(free), MSG_DONTWAIT));
      if (k === 0) this.#fail("the connection closed");
      if (k < 0) {
        if (!check) return got;
        const [re] = pollFds(this.#c, [this.fd], POLLIN, 0);
        if ((re! & POLLERR) !== 0) this.#fail("the connection was reset");
        if ((re! & (POLLIN | POLLHUP)) === 0) return got;
        continue;
      }
      this.#have += k;
      got = this.#parse() || got;
      if (this.#have < this.#rx.length) return got;
    }
  }

  #parse(): boolean {
    let at = 0, got = false;
    while (this.#have - at >= HEADER_BYTES) {
      let h: FrameHeader;
      try {
        h = decodeHeader(this.#rx, at, this.maxPayload);
      } catch (e) {
        this.#fail(`it sent a bad frame (${(e as Error).message})`);
      }
      if (this.#have - at < HEADER_BYTES + h.length) break;
      const payload = this.#payload(h.length);
      payload.set(this.#rx.subarray(at + HEADER_BYTES, at + HEADER_BYTES + h.length));
      const key = laneKey(h.group, h.seq, h.tag);
      let q = this.#frames.get(key);
      if (q === undefined) this.#frames.set(key, q = []);
      q.push({ header: h, payload });
      at += HEADER_BYTES + h.length;
      got = true;
    }
    if (at > 0) {
      this.#rx.copyWithin(0, at, this.#have);
      this.#have -= at;
    }
    return got;
  }

  #pool: ArrayBuffer[] = [];

  #payload(n: number): Uint8Array {
    const b = this.#pool.pop();
    return b !== undefined && b.byteLength >= n ? new Uint8Array(b, 0, n) : new Uint8Array(
      Math.max(n, 4096),
    ).subarray(0, n);
  }

  /** Give a taken frame's payload (or a view of it) back for reuse. */
  release(view: ArrayBufferView): void {
    if (view.buffer instanceof ArrayBuffer && this.#pool.length < 8) this.#pool.push(view.buffer);
  }

  /** Take the frame with this key, if it has arrived. */
  take(key: string): LaneFrame | undefined {
    const q = this.#frames.get(key);
    if (q === undefined) return undefined;
    const f = q.shift();
    if (q.length === 0) this.#frames.delete(key);
    return f;
  }

  #fail(why: string): never {
    this.broken ??= why;
    throw new LaneError(this.peer, this.broken);
  }

  /** Close the connection (once). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#c.close(this.fd);
    this.broken ??= "closed";
    release();
  }

  #closed = false;
}

/** Key of a lane frame. */
export function laneKey(group: number, seq: number, tag: number): string {
  return `${group}:${seq}:${tag}`;
}

/**
 * Block in poll() until one of `lanes` has data (or `ms` passed). With `ms` 0 it only checks.
 */
export function waitLanes(lanes: Lane[], ms: number): void {
  if (libc === null || lanes.length === 0) return;
  pollFds(libc, lanes.map((l) => l.fd), POLLIN, ms);
}

// ---- opening lanes --------------------------------------------------------------------------

const HANDSHAKE_MS = 5000;
/** Bytes of a lane hello: rank and job id, then (with a secret) the nonce and the tag. */
const PLAIN_HELLO = 8, SECRET_HELLO = 8 + NONCE_BYTES + TAG_BYTES;

function laneHeader(src: number, arg: number, tag: number): FrameHeader {
  return { op: FrameOp.lane, kind: 0, src, group: 0, tag, seq: 0, total: 0, arg, length: 0 };
}

async function sendControl(link: Link, h: FrameHeader, payload?: Uint8Array): Promise<void> {
  const out = new Uint8Array(HEADER_BYTES + (payload?.length ?? 0));
  encodeHeader(out, { ...h, length: payload?.length ?? 0 });
  if (payload) out.set(payload, HEADER_BYTES);
  await writeAll(link.conn, out);
}

async function readControl(
  reader: FrameReader,
  peer: number,
  tag: number,
): Promise<{ arg: number; payload: Uint8Array }> {
  const f = await reader.next();
  if (f === null) throw new Error(`rank ${peer} closed its connection while opening a lane`);
  if (f.header.op !== FrameOp.lane || f.header.tag !== tag) {
    throw new Error(`rank ${peer} sent op ${f.header.op} while opening a lane (step ${tag})`);
  }
  return { arg: f.header.arg, payload: f.payload };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait (without blocking the event loop for long) until `fd` polls `events`; false on timeout. */
async function ready(c: Libc, fd: number, events: number, ms: number): Promise<number> {
  const end = performance.now() + ms;
  for (;;) {
    const [re] = pollFds(c, [fd], events, 0);
    if (re !== 0) return re!;
    if (performance.now() > end) return 0;
    await sleep(1);
  }
}

/** Read exactly `n` bytes from `fd` before `end` (a `performance.now()` time); null if not. */
async function readExactly(
  c: Libc,
  fd: number,
  n: number,
  end: number,
): Promise<Uint8Array | null> {
  const buf = new Uint8Array(n);
  let have = 0;
  while (have < n && performance.now() < end) {
    const k = Number(c.recv(fd, buf.subarray(have), BigInt(n - have), MSG_DONTWAIT));
    if (k > 0) have += k;
    else if (k === 0) return null;
    else await ready(c, fd, POLLIN, Math.min(100, end - performance.now()));
  }
  return have === n ? buf : null;
}

/** Write all of `data` to a fresh socket (it fits in the socket buffer); false if not. */
function sendAll(c: Libc, fd: number, data: Uint8Array): boolean {
  return Number(c.send(fd, data, BigInt(data.length), MSG_NOSIGNAL)) === data.length;
}

/** A lane on a connected socket. */
function connected(c: Libc, fd: number, peer: number, maxPayload: number): Lane {
  c.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, int1, 4);
  return new Lane(c, fd, peer, maxPayload);
}

/** What the tags of a lane between `taker` and `offerer` cover. */
function laneContext(mesh: Mesh, taker: number, offerer: number): AuthContext {
  return {
    role: AuthRole.lane,
    size: mesh.size,
    jobId: mesh.jobId,
    connector: taker,
    acceptor: offerer,
  };
}

/** The IPv4 address in a sockaddr_in, as text. */
function sockaddrHost(a: Uint8Array): string {
  return `${a[4]}.${a[5]}.${a[6]}.${a[7]}`;
}

/**
 * Check a connection on a lane listener: it must come from the peer's address and send the
 * peer's hello (with a secret, a tag that proves it). Returns why not, or undefined.
 */
async function checkHello(
  c: Libc,
  fd: number,
  mesh: Mesh,
  peer: number,
  nonce: Uint8Array | null,
  end: number,
): Promise<string | undefined> {
  const key = mesh.key;
  const hello = await readExactly(c, fd, key ? SECRET_HELLO : PLAIN_HELLO, end);
  if (hello === null) return "it did not send a whole lane hello in time";
  const v = new DataView(hello.buffer);
  if (v.getInt32(0, true) !== peer) return `it says it is rank ${v.getInt32(0, true)}`;
  if (v.getUint32(4, true) !== mesh.jobId >>> 0) {
    return `it belongs to another job (job id ${v.getUint32(4, true)}, this job is ${mesh.jobId})`;
  }
  if (key && nonce) {
    const nt = hello.subarray(8, 8 + NONCE_BYTES);
    const tag = hello.subarray(8 + NONCE_BYTES);
    const ctx = laneContext(mesh, peer, mesh.rank);
    if (!await key.check(AuthSide.connector, ctx, nt, nonce, tag)) {
      return "authentication failed: its proof does not match this job's secret";
    }
    if (!sendAll(c, fd, await key.tag(AuthSide.acceptor, ctx, nt, nonce))) {
      return "it did not take this rank's proof";
    }
  }
  return undefined;
}

/** The lower rank of a pair: listen, offer the port, accept the peer, confirm. */
async function offerLane(
  c: Libc | null,
  mesh: Mesh,
  peer: number,
  link: Link,
  maxPayload: number,
): Promise<Lane | null> {
  let lfd = -1, fd = -1;
  try {
    let port = 0;
    const host = (link.conn.localAddr as Deno.NetAddr).hostname;
    const peerHost = (link.conn.remoteAddr as Deno.NetAddr).hostname;
    const addr = c === null ? null : sockaddr(host, 0);
    if (c !== null && addr !== null) {
      lfd = c.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (lfd >= 0 && c.bind(lfd, addr, 16) === 0 && c.listen(lfd, 8) === 0) {
        const got = new Uint8Array(16), len = new Uint8Array(new Uint32Array([16]).buffer);
        if (c.getsockname(lfd, got, len) === 0) port = new DataView(got.buffer).getUint16(2);
      }
    }
    const nonce = mesh.key ? newNonce() : null;
    await sendControl(link, laneHeader(mesh.rank, port, 1), nonce ?? undefined);
    const peerUp = (await readControl(link.reader, peer, 2)).arg;
    let ok = 0;
    if (peerUp === 1 && c !== null && lfd >= 0) {
      // Take connections until one is the peer's: a stranger that got in first is dropped.
      const end = performance.now() + HANDSHAKE_MS;
      while (ok === 0 && performance.now() < end) {
        if ((await ready(c, lfd, POLLIN, end - performance.now()) & POLLIN) === 0) break;
        const from = new Uint8Array(16), len = new Uint8Array(new Uint32Array([16]).buffer);
        const cfd = c.accept4(lfd, from, len, SOCK_NONBLOCK);
        if (cfd < 0) continue;
        const fromHost = sockaddrHost(from);
        const who = `${fromHost}:${new DataView(from.buffer).getUint16(2)}`;
        const why = fromHost !== peerHost
          ? `it comes from ${fromHost}, not from rank ${peer} (${peerHost})`
          : await checkHello(c, cfd, mesh, peer, nonce, Math.min(end, performance.now() + 1000));
        if (why === undefined) {
          fd = cfd;
          ok = 1;
        } else {
          console.error(
            `loom lanes: rank ${mesh.rank} dropped a lane connection from ${who} meant for ` +
              `rank ${peer}: ${why}`,
          );
          c.close(cfd);
        }
      }
    }
    await sendControl(link, laneHeader(mesh.rank, ok, 3));
    // With a secret, the peer says whether this rank's tag convinced it.
    if (mesh.key && (await readControl(link.reader, peer, 4)).arg !== 1) ok = 0;
    if (ok !== 1) return null;
    const lane = connected(c!, fd, peer, maxPayload);
    fd = -1;
    return lane;
  } finally {
    if (lfd >= 0) c!.close(lfd);
    if (fd >= 0) c!.close(fd);
  }
}

/** The higher rank of a pair: take the offer, connect, say hello, learn whether it took. */
async function takeLane(
  c: Libc | null,
  mesh: Mesh,
  peer: number,
  link: Link,
  maxPayload: number,
): Promise<Lane | null> {
  let fd = -1;
  try {
    const offer = await readControl(link.reader, peer, 1);
    const port = offer.arg;
    const key = mesh.key;
    if (key && offer.payload.length !== NONCE_BYTES) {
      throw new Error(`rank ${peer} offered a lane without a nonce: does it run without a secret?`);
    }
    const host = (link.conn.remoteAddr as Deno.NetAddr).hostname;
    const addr = port > 0 && c !== null ? sockaddr(host, port) : null;
    // The hello and the tag expected back are computed before the synchronous part.
    const hello = new Uint8Array(key ? SECRET_HELLO : PLAIN_HELLO);
    const v = new DataView(hello.buffer);
    v.setInt32(0, mesh.rank, true);
    v.setUint32(4, mesh.jobId >>> 0, true);
    let expected: Uint8Array | null = null;
    if (key) {
      const nt = newNonce();
      const ctx = laneContext(mesh, mesh.rank, peer);
      hello.set(nt, 8);
      hello.set(await key.tag(AuthSide.connector, ctx, nt, offer.payload), 8 + NONCE_BYTES);
      expected = await key.tag(AuthSide.acceptor, ctx, nt, offer.payload);
    }
    let isUp = 0;
    if (addr !== null && c !== null) {
      fd = c.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (fd >= 0) {
        c.connect(fd, addr, 16); // in progress: poll tells when it is done
        const re = await ready(c, fd, POLLOUT, HANDSHAKE_MS);
        const err = new Uint8Array(4), len = new Uint8Array(new Uint32Array([4]).buffer);
        if (
          (re & POLLOUT) !== 0 && c.getsockopt(fd, SOL_SOCKET, SO_ERROR, err, len) === 0 &&
          new DataView(err.buffer).getInt32(0, true) === 0 && sendAll(c, fd, hello)
        ) isUp = 1;
      }
    }
    await sendControl(link, laneHeader(mesh.rank, isUp, 2));
    const ok = (await readControl(link.reader, peer, 3)).arg;
    let proven = ok === 1 && isUp === 1;
    if (key) {
      if (proven) {
        const got = await readExactly(c!, fd, TAG_BYTES, performance.now() + HANDSHAKE_MS);
        proven = got !== null && sameBytes(got, expected!);
        if (!proven) {
          console.error(
            `loom lanes: rank ${mesh.rank} dropped its lane to rank ${peer}: the far end did ` +
              `not prove that it knows the job secret`,
          );
        }
      }
      await sendControl(link, laneHeader(mesh.rank, proven ? 1 : 0, 4));
    }
    if (!proven) return null;
    const lane = connected(c!, fd, peer, maxPayload);
    fd = -1;
    return lane;
  } finally {
    if (fd >= 0) c!.close(fd);
  }
}

/**
 * Open a lane to every peer that can take one. Both ends of a pair learn the same outcome (the
 * handshake's last message says whether it took), so a group's ranks agree on whether all its
 * pairs have lanes. Runs right after the rendezvous, before anything else reads the mesh. With
 * a job secret (`mesh.key`), each lane proves it both ways, as the mesh connections did.
 *
 * @param mesh the connected mesh
 * @param maxPayload largest payload a lane frame may carry
 * @param enabled false to open none (the handshake still runs, so that peers agree)
 * @returns one lane (or null) per rank
 */
export async function openLanes(
  mesh: Mesh,
  maxPayload: number,
  enabled = true,
): Promise<(Lane | null)[]> {
  const c = enabled ? acquire() : null;
  try {
    const lanes = await Promise.all(mesh.links.map((link, peer) => {
      if (link === null) return Promise.resolve(null);
      return mesh.rank < peer
        ? offerLane(c, mesh, peer, link, maxPayload)
        : takeLane(c, mesh, peer, link, maxPayload);
    }));
    // Every open lane holds the library until it closes.
    for (const l of lanes) if (l !== null) acquire();
    return lanes;
  } finally {
    if (c !== null) release();
  }
}
