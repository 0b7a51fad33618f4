/**
 * A vhost-user FRONTEND (the VMM side) for tests and benchmarks: it owns memfd
 * "guest memory", performs a recorded handshake, lays out split rings in guest
 * memory, submits descriptor chains and waits for the call eventfd.
 *
 * It is written independently of src/vhost-user (its own constants and
 * framing) so that a misunderstanding on one side shows up as a failure, and
 * it is checked against QEMU 7.2's virtiofsd in test/vhost-user/peer-virtiofsd.test.ts.
 *
 * Public API
 * ----------
 *   const fe = await Frontend.connect(pathOrFd, opts?)   // socket path (retries while the daemon starts) or { fd }
 *   await fe.handshake()            // replays opts.mode: 'qemu72' (default) or 'cloudHypervisor'; queues are live after it
 *   await fe.request(q, readable: Buffer[], writableSizes: number[], { indirect? }) -> { usedLen, written, head }
 *   await fe.batch(q, [{ readable, writableSizes, indirect? }, ...])  -> results, one kick for the whole batch
 *   await fe.enqueue(q, [...])      // the same chains published one by one, each kicked only if the device asks
 *   fe.submit(q, chain) -> Promise<result>  (no kick) ; fe.kick(q) ; fe.kickFd(q)
 *   await fe.stop()                 // QEMU's shutdown: SET_VRING_ENABLE 0, GET_VRING_BASE (returns the bases)
 *   fe.close()                      // closes the socket and every fd, unmaps memory
 *
 * Lower level, for protocol and negative tests:
 *   fe.call(request, payload?, { fds?, needReply?, flags?, expectReply? }) -> Promise<Buffer | null>  one message, awaits its reply if one is due
 *   fe.sync()                       // a GET_FEATURES round trip: everything sent before has been handled
 *   fe.sendRaw(bytes, fds?)         // arbitrary bytes on the socket
 *   fe.peerClosed                   // Promise<void> resolved when the backend closes the connection
 *   fe.memory                       // GuestRam: regions, view(gpa, len), alloc(len, align)
 *   fe.queue(q)                     // DriverQueue: ring GPAs, writeDescriptor, publish, usedIdx, ...
 *   fe.errCount(q), fe.waitErr(q)   // SET_VRING_ERR eventfd signals
 *   fe.callCount(q)                 // call eventfd wakeups seen
 *   fe.backendRequests              // requests received on the SET_BACKEND_REQ_FD channel (acked with opts.onBackendRequest ?? 0)
 *   fe.acked                        // { features, protocolFeatures, queueNum, maxMemSlots }
 *
 * Timeouts: every awaited reply or completion rejects after opts.timeoutMs (default 5 s),
 * so a wrong backend fails a test instead of hanging it.
 */
import * as native from '../../src/native';

// ---- protocol numbers (vhost-user.rst), kept separate from src on purpose ------------

export const Req = {
  GET_FEATURES: 1, SET_FEATURES: 2, SET_OWNER: 3, RESET_OWNER: 4, SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8, SET_VRING_ADDR: 9, SET_VRING_BASE: 10, GET_VRING_BASE: 11,
  SET_VRING_KICK: 12, SET_VRING_CALL: 13, SET_VRING_ERR: 14, GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16, GET_QUEUE_NUM: 17, SET_VRING_ENABLE: 18, SET_BACKEND_REQ_FD: 21,
  GET_CONFIG: 24, SET_CONFIG: 25, RESET_DEVICE: 34, GET_MAX_MEM_SLOTS: 36, ADD_MEM_REG: 37, REM_MEM_REG: 38,
  GET_SHMEM_CONFIG: 44,
} as const;

/** Requests whose reply is part of the request (not a REPLY_ACK). */
const ALWAYS_REPLY = new Set<number>([Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.GET_VRING_BASE, Req.GET_QUEUE_NUM, Req.GET_CONFIG, Req.GET_MAX_MEM_SLOTS, Req.GET_SHMEM_CONFIG]);

export const F = {
  INDIRECT_DESC: 1n << 28n, EVENT_IDX: 1n << 29n, PROTOCOL_FEATURES: 1n << 30n, VERSION_1: 1n << 32n, LOG_ALL: 1n << 26n,
} as const;

export const PF = {
  MQ: 1n << 0n, LOG_SHMFD: 1n << 1n, REPLY_ACK: 1n << 3n, BACKEND_REQ: 1n << 5n, CONFIG: 1n << 9n,
  BACKEND_SEND_FD: 1n << 10n, HOST_NOTIFIER: 1n << 11n, INFLIGHT_SHMFD: 1n << 12n, RESET_DEVICE: 1n << 13n,
  CONFIGURE_MEM_SLOTS: 1n << 15n, DEVICE_STATE: 1n << 19n, SHMEM: 1n << 22n,
} as const;

const VERSION = 1;
const REPLY = 0x4;
const NEED_REPLY = 0x8;
const HDR = 12;

/** QEMU 7.2 acks every protocol feature it knows except CONFIG for vhost-user-fs (no config ops). */
const QEMU72_PROTOCOL = ((1n << 17n) - 1n) & ~PF.CONFIG;
const QEMU72_FEATURES = F.VERSION_1 | F.PROTOCOL_FEATURES | F.EVENT_IDX | F.INDIRECT_DESC;
/** cloud-hypervisor v53 fs: protocol and virtio features it offers (REFERENCES.md). */
const CH_PROTOCOL = PF.MQ | PF.CONFIGURE_MEM_SLOTS | PF.REPLY_ACK | PF.INFLIGHT_SHMFD | PF.LOG_SHMFD | PF.DEVICE_STATE;
const CH_FEATURES = F.INDIRECT_DESC | F.EVENT_IDX | F.VERSION_1 | F.PROTOCOL_FEATURES | F.LOG_ALL | (1n << 35n) | (1n << 36n) | (1n << 38n);

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;
const USED_F_NO_NOTIFY = 1;

// ---- options and results ---------------------------------------------------------------

export type ReplayMode = 'qemu72' | 'cloudHypervisor';

export interface RegionLayout {
  gpa: number;
  size: number;
}

export interface FrontendOptions {
  mode?: ReplayMode;
  /** Queues to set up; default: what GET_QUEUE_NUM reports (or 2). */
  numQueues?: number;
  /** Entries per queue; default 128 (qemu72) or 1024 (cloudHypervisor). */
  queueSize?: number;
  /** Guest RAM regions; default two of 4 MiB, at GPA 0 and at 4 GiB (like a q35 guest split at the PCI hole). */
  regions?: RegionLayout[];
  /** Negotiate EVENT_IDX (if offered). Default true. */
  eventIdx?: boolean;
  /** Negotiate VHOST_USER_F_PROTOCOL_FEATURES (if offered). Default true; false replays a legacy frontend. */
  protocolFeatures?: boolean;
  /** Answer for requests on the backend channel; default ack 0. */
  onBackendRequest?: (req: BackendChannelRequest) => bigint;
  /** Protocol features to accept beyond the recorded mode's (e.g. PF.SHMEM for a DAX window). */
  extraProtocolFeatures?: bigint;
  timeoutMs?: number;
  /** How long connect() keeps retrying a socket path that is not there yet. */
  connectTimeoutMs?: number;
}

export interface ChainSpec {
  readable: Buffer[];
  writableSizes: number[];
  /** Put the descriptors in an indirect table (one ring descriptor). */
  indirect?: boolean;
  /**
   * Leave the writable buffers as earlier requests left them, as a guest's READ lands
   * in page-cache pages nobody cleared. By default they are zeroed, so a test sees
   * exactly what the daemon wrote; for a 1 MiB reply that is a 1 MiB memset by the
   * driver between chains, which no guest does.
   */
  uncleared?: boolean;
  /**
   * Copy at most this many reply bytes into Completion.written (default: all of them).
   * A benchmark that checks only the reply header sets 16, so the harness's own
   * copying of large READs does not weigh in the daemon's figures.
   */
  copyLimit?: number;
}

export interface Completion {
  head: number;
  usedLen: number;
  /** The first usedLen bytes of the writable buffers (at most copyLimit), concatenated. */
  written: Buffer;
}

export interface BackendChannelRequest {
  request: number;
  flags: number;
  payload: Buffer;
  fds: number[];
}

interface Waiter<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

function deferred<T>(timeoutMs: number, what: string): { promise: Promise<T>; waiter: Waiter<T> } {
  let waiter!: Waiter<T>;
  const promise = new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    waiter = {
      resolve: (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      reject: (e) => {
        clearTimeout(timer);
        reject(e);
      },
      timer,
    };
  });
  return { promise, waiter };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

function vringState(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index, 0);
  b.writeUInt32LE(num, 4);
  return b;
}

/** VhostUserShMemConfig: { le32 nregions; le32 padding; le64 memory_sizes[256]; } */
function decodeShmemConfig(b: Buffer | null): number[] {
  if (b === null || b.length !== 8 + 8 * 256) throw new Error(`GET_SHMEM_CONFIG reply of ${b?.length ?? 0} bytes, expected 2056`);
  const n = b.readUInt32LE(0);
  if (n > 256) throw new Error(`GET_SHMEM_CONFIG: nregions ${n} > 256`);
  return Array.from({ length: n }, (_, i) => Number(b.readBigUInt64LE(8 + 8 * i)));
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

// ---- guest RAM -------------------------------------------------------------------------

/** Where the frontend pretends to have guest RAM mapped (its "userspace_addr"s). */
const FRONTEND_VA_BASE = 0x7f12_3400_0000;

export interface RamRegion {
  gpa: number;
  size: number;
  /** Offset in the memfd (the region's mmap_offset). */
  fdOffset: number;
  userAddr: number;
}

/** One memfd holding every region back to back, mapped once here. */
export class GuestRam {
  readonly fd: number;
  readonly regions: RamRegion[];
  readonly bytes: Buffer;
  readonly #mapping: ArrayBuffer;
  #arenas: { start: number; end: number; next: number }[];

  constructor(layout: RegionLayout[]) {
    let off = 0;
    this.regions = layout.map((l) => {
      const r = { gpa: l.gpa, size: l.size, fdOffset: off, userAddr: FRONTEND_VA_BASE + off };
      off += alignUp(l.size, native.PAGE_SIZE);
      return r;
    });
    this.fd = native.memfdCreate('closurefs-test-guest-ram', off);
    this.#mapping = native.mmap(this.fd, off, 0, { shared: true, writable: true });
    this.bytes = Buffer.from(this.#mapping);
    this.#arenas = this.regions.map((r) => ({ start: r.gpa, end: r.gpa + r.size, next: r.gpa }));
  }

  region(gpa: number): RamRegion {
    const r = this.regions.find((x) => gpa >= x.gpa && gpa < x.gpa + x.size);
    if (r === undefined) throw new RangeError(`GPA 0x${gpa.toString(16)} is not guest RAM`);
    return r;
  }

  /** A view of guest RAM at a GPA (must not cross a region). */
  view(gpa: number, len: number): Buffer {
    const r = this.region(gpa);
    if (gpa + len > r.gpa + r.size) throw new RangeError(`GPA range 0x${gpa.toString(16)}+${len} crosses a region end`);
    const off = r.fdOffset + (gpa - r.gpa);
    return this.bytes.subarray(off, off + len);
  }

  userAddr(gpa: number): number {
    const r = this.region(gpa);
    return r.userAddr + (gpa - r.gpa);
  }

  /** Bump allocation of guest RAM, never across a region end; zeroed unless `clear` is false. */
  alloc(len: number, align = 8, clear = true): number {
    for (const a of this.#arenas) {
      const at = alignUp(a.next, align);
      if (at + len <= a.end) {
        a.next = at + len;
        if (clear) this.view(at, len).fill(0);
        return at;
      }
    }
    throw new RangeError(`guest RAM exhausted allocating ${len} bytes`);
  }

  /** Everything allocated after `mark()` is free again. */
  mark(): number[] {
    return this.#arenas.map((a) => a.next);
  }

  release(mark: number[]): void {
    mark.forEach((next, i) => (this.#arenas[i].next = next));
  }

  close(): void {
    try {
      native.munmap(this.#mapping);
    } catch {
      /* already unmapped */
    }
    native.closeQuietly(this.fd);
  }
}

// ---- a split ring, driver side ------------------------------------------------------------

interface Pending {
  waiter: Waiter<Completion>;
  descs: number[];
  writable: { gpa: number; len: number }[];
  copyLimit: number;
}

/** The driver half of a split virtqueue (VIRTIO 1.2 §2.7), in GuestRam. */
export class DriverQueue {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  eventIdx = false;
  /** The driver's shadow of avail idx (published by publish()). */
  availIdx = 0;
  lastUsed = 0;
  #free: number[];
  readonly #pending = new Map<number, Pending>();

  constructor(readonly ram: GuestRam, readonly index: number, readonly size: number) {
    this.desc = ram.alloc(16 * size, 4096);
    this.avail = ram.alloc(6 + 2 * size, 4096);
    this.used = ram.alloc(6 + 8 * size, 4096);
    this.#free = Array.from({ length: size }, (_, i) => i);
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  writeDescriptor(table: number, i: number, d: { addr: number; len: number; flags: number; next: number }): void {
    const v = this.ram.view(table + 16 * i, 16);
    v.writeBigUInt64LE(BigInt(d.addr), 0);
    v.writeUInt32LE(d.len, 8);
    v.writeUInt16LE(d.flags, 12);
    v.writeUInt16LE(d.next, 14);
  }

  takeDescriptors(n: number): number[] {
    if (this.#free.length < n) throw new RangeError(`queue ${this.index}: ${n} descriptors wanted, ${this.#free.length} free`);
    return this.#free.splice(0, n);
  }

  /** Writes `head` into the next avail slot (not yet visible: publish() makes it so). */
  push(head: number): void {
    this.ram.view(this.avail + 4 + 2 * (this.availIdx % this.size), 2).writeUInt16LE(head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Makes pushed entries visible; returns whether the device asked to be kicked. */
  publish(old: number): boolean {
    native.fence();
    this.#word(this.avail + 2)[0] = this.availIdx;
    native.fence();
    if (this.eventIdx) {
      const event = this.availEvent();
      return ((this.availIdx - event - 1) & 0xffff) < ((this.availIdx - old) & 0xffff);
    }
    return ((this.#word(this.used)[0] as number) & USED_F_NO_NOTIFY) === 0;
  }

  /**
   * One le16 ring field as a one-element Uint16Array: the daemon reads and writes these
   * while we do, so each access must be a single 16-bit load or store (Buffer's
   * readUInt16LE/writeUInt16LE go byte by byte, and a daemon that polls the ring sees
   * the torn value).
   */
  #word(gpa: number): Uint16Array {
    const v = this.ram.view(gpa, 2);
    return new Uint16Array(v.buffer, v.byteOffset, 1);
  }

  /** Raw avail idx write, for tests that lie about it. */
  setAvailIdx(idx: number): void {
    this.#word(this.avail + 2)[0] = idx;
  }

  usedIdx(): number {
    return this.#word(this.used + 2)[0] as number;
  }

  usedElem(i: number): { id: number; len: number } {
    const v = this.ram.view(this.used + 4 + 8 * (i % this.size), 8);
    return { id: v.readUInt32LE(0), len: v.readUInt32LE(4) };
  }

  availEvent(): number {
    return this.#word(this.used + 4 + 8 * this.size)[0] as number;
  }

  setUsedEvent(v: number): void {
    this.#word(this.avail + 4 + 2 * this.size)[0] = v;
  }

  track(head: number, p: Pending): void {
    this.#pending.set(head, p);
  }

  /** Reads new used entries, completes their requests; re-arms used_event and re-checks (no lost interrupt). */
  collect(): number {
    let n = 0;
    for (;;) {
      while (this.lastUsed !== this.usedIdx()) {
        this.#complete(this.usedElem(this.lastUsed));
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        n++;
      }
      if (this.eventIdx) this.setUsedEvent(this.lastUsed);
      native.fence();
      if (this.lastUsed === this.usedIdx()) return n;
    }
  }

  failAll(e: Error): void {
    for (const p of this.#pending.values()) p.waiter.reject(e);
    this.#pending.clear();
  }

  #complete(elem: { id: number; len: number }): void {
    const p = this.#pending.get(elem.id);
    if (p === undefined) return; // a chain the test placed by hand
    this.#pending.delete(elem.id);
    for (const d of p.descs) this.#free.push(d);
    // One copy of the used bytes only: a completion outlives the arena its buffers came from.
    const parts = p.writable.map((w) => this.ram.view(w.gpa, w.len));
    const written = Buffer.concat(parts, Math.min(elem.len, p.copyLimit, p.writable.reduce((n, w) => n + w.len, 0)));
    p.waiter.resolve({ head: elem.id, usedLen: elem.len, written });
  }
}

// ---- the frontend ---------------------------------------------------------------------

export interface Acked {
  features: bigint;
  protocolFeatures: bigint;
  queueNum: number;
  maxMemSlots: number;
}

export class Frontend {
  readonly mode: ReplayMode;
  readonly memory: GuestRam;
  readonly backendRequests: BackendChannelRequest[] = [];
  readonly acked: Acked = { features: 0n, protocolFeatures: 0n, queueNum: 0, maxMemSlots: 0 };
  /** Sizes of the backend's shared memory regions by shmid, from GET_SHMEM_CONFIG (when SHMEM was agreed). */
  shmemSizes: number[] = [];
  /** Resolved when the backend closes the connection. */
  readonly peerClosed: Promise<void>;
  readonly #fd: number;
  readonly #opts: FrontendOptions;
  readonly #timeoutMs: number;
  readonly #watcher: native.FdWatcher;
  readonly #watchers: native.FdWatcher[] = [];
  readonly #ownedFds: number[] = [];
  #queues: DriverQueue[] = [];
  #kickFds: number[] = [];
  #callFds: number[] = [];
  #errFds: number[] = [];
  #errCounts: number[] = [];
  #callCounts: number[] = [];
  #errWaiters: Waiter<void>[][] = [];
  #rx = Buffer.alloc(64 * 1024);
  #rxLen = 0;
  #replies: { request: number; flags: number; payload: Buffer }[] = [];
  #replyWaiters: Waiter<{ request: number; flags: number; payload: Buffer }>[] = [];
  #closed = false;
  #peerClosedResolve!: () => void;
  #backendFd = -1;
  #arenaMark: number[];

  private constructor(fd: number, opts: FrontendOptions) {
    this.#fd = fd;
    this.#opts = opts;
    this.mode = opts.mode ?? 'qemu72';
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    this.memory = new GuestRam(opts.regions ?? [{ gpa: 0, size: 4 << 20 }, { gpa: 2 ** 32, size: 4 << 20 }]);
    this.#arenaMark = this.memory.mark();
    this.peerClosed = new Promise((r) => (this.#peerClosedResolve = r));
    native.setNonBlocking(fd, true);
    this.#watcher = new native.FdWatcher(fd, () => this.#onReadable()).start();
  }

  /** Connects to a socket path (retrying while it does not exist yet) or adopts a connected fd. */
  static async connect(target: string | { fd: number }, opts: FrontendOptions = {}): Promise<Frontend> {
    if (typeof target !== 'string') return new Frontend(target.fd, opts);
    const deadline = Date.now() + (opts.connectTimeoutMs ?? 5000);
    for (;;) {
      try {
        return new Frontend(native.connectUnix(target), opts);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw e;
        await sleep(20);
      }
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  get numQueues(): number {
    return this.#queues.length;
  }

  queue(q: number): DriverQueue {
    const dq = this.#queues[q];
    if (dq === undefined) throw new RangeError(`no queue ${q}`);
    return dq;
  }

  get replyAck(): boolean {
    return (this.acked.protocolFeatures & PF.REPLY_ACK) !== 0n;
  }

  // ---- messages ----------------------------------------------------------------------

  sendRaw(bytes: Buffer, fds: number[] = []): void {
    const n = native.sendmsg(this.#fd, bytes, fds);
    if (n !== bytes.length) throw new Error(`sendmsg sent ${n ?? 0} of ${bytes.length} bytes`);
  }

  /**
   * Sends one request. Awaits and returns the reply payload when one is due: the
   * request always has one, or NEED_REPLY is set with REPLY_ACK agreed. Else null.
   */
  async call(
    request: number,
    payload: Buffer = Buffer.alloc(0),
    o: { fds?: number[]; needReply?: boolean; flags?: number; expectReply?: boolean } = {},
  ): Promise<Buffer | null> {
    const needReply = o.needReply ?? (this.mode === 'cloudHypervisor' && this.replyAck);
    const flags = o.flags ?? (VERSION | (needReply ? NEED_REPLY : 0));
    const msg = Buffer.alloc(HDR + payload.length);
    msg.writeUInt32LE(request, 0);
    msg.writeUInt32LE(flags, 4);
    msg.writeUInt32LE(payload.length, 8);
    payload.copy(msg, HDR);
    const due = o.expectReply ?? (ALWAYS_REPLY.has(request) || ((flags & NEED_REPLY) !== 0 && this.replyAck));
    const reply = due ? this.#nextReply(request) : null;
    this.sendRaw(msg, o.fds ?? []);
    if (reply === null) return null;
    const r = await reply;
    if (r.request !== request || (r.flags & 0x3) !== VERSION || !(r.flags & REPLY)) {
      throw new Error(`reply to ${request} came back as request ${r.request} flags 0x${r.flags.toString(16)}`);
    }
    return r.payload;
  }

  /** A request answered by an ack: returns the u64 (0 = success); throws on a non-ack reply. */
  async callAck(request: number, payload?: Buffer, o: { fds?: number[] } = {}): Promise<bigint> {
    const r = await this.call(request, payload, { ...o, needReply: true });
    if (r === null) throw new Error('REPLY_ACK was not negotiated: no ack is due');
    if (r.length !== 8) throw new Error(`ack of ${request} has ${r.length} bytes`);
    return r.readBigUInt64LE(0);
  }

  async getU64(request: number): Promise<bigint> {
    const r = await this.call(request);
    if (r === null || r.length !== 8) throw new Error(`reply to ${request} is not a u64`);
    return r.readBigUInt64LE(0);
  }

  /** A GET_FEATURES round trip: the backend has handled everything sent before it. */
  async sync(): Promise<void> {
    await this.getU64(Req.GET_FEATURES);
  }

  #nextReply(request: number): Promise<{ request: number; flags: number; payload: Buffer }> {
    if (this.#closed) return Promise.reject(new Error('frontend is closed'));
    const { promise, waiter } = deferred<{ request: number; flags: number; payload: Buffer }>(this.#timeoutMs, `the reply to request ${request}`);
    this.#replyWaiters.push(waiter);
    this.#deliver();
    return promise;
  }

  #onReadable(): void {
    for (;;) {
      if (this.#rxLen === this.#rx.length) this.#rx = Buffer.concat([this.#rx, Buffer.alloc(this.#rx.length)]);
      let r: native.Received | null;
      try {
        r = native.recvmsg(this.#fd, this.#rx, this.#rxLen, this.#rx.length - this.#rxLen);
      } catch {
        // ECONNRESET: the backend closed with bytes of ours still unread.
        return this.#onPeerClosed();
      }
      if (r === null) break;
      for (const fd of r.fds) native.closeQuietly(fd);
      if (r.bytes === 0) return this.#onPeerClosed();
      this.#rxLen += r.bytes;
      this.#parseReplies();
    }
    this.#deliver();
  }

  #parseReplies(): void {
    while (this.#rxLen >= HDR) {
      const size = this.#rx.readUInt32LE(8);
      if (this.#rxLen < HDR + size) return;
      this.#replies.push({ request: this.#rx.readUInt32LE(0), flags: this.#rx.readUInt32LE(4), payload: Buffer.from(this.#rx.subarray(HDR, HDR + size)) });
      this.#rx.copyWithin(0, HDR + size, this.#rxLen);
      this.#rxLen -= HDR + size;
    }
  }

  #deliver(): void {
    while (this.#replies.length > 0 && this.#replyWaiters.length > 0) {
      (this.#replyWaiters.shift() as Waiter<{ request: number; flags: number; payload: Buffer }>).resolve(this.#replies.shift() as { request: number; flags: number; payload: Buffer });
    }
  }

  #onPeerClosed(): void {
    const e = new Error('the backend closed the vhost-user connection');
    for (const w of this.#replyWaiters.splice(0)) w.reject(e);
    for (const q of this.#queues) q.failAll(e);
    this.#watcher.stop();
    this.#peerClosedResolve();
  }

  // ---- handshake replays ----------------------------------------------------------------

  async handshake(): Promise<void> {
    if (this.mode === 'qemu72') await this.#handshakeQemu72();
    else await this.#handshakeCloudHypervisor();
  }

  /** QEMU 7.2 vhost-user-fs-pci, as recorded in REFERENCES.md. */
  async #handshakeQemu72(): Promise<void> {
    const offered = await this.getU64(Req.GET_FEATURES);
    if (offered & F.PROTOCOL_FEATURES & this.#wanted(F.PROTOCOL_FEATURES)) await this.#negotiateProtocol(QEMU72_PROTOCOL);
    const pf = this.acked.protocolFeatures;
    if (pf & PF.MQ) this.acked.queueNum = Number(await this.getU64(Req.GET_QUEUE_NUM));
    if (pf & PF.CONFIGURE_MEM_SLOTS) this.acked.maxMemSlots = Number(await this.getU64(Req.GET_MAX_MEM_SLOTS));
    if (pf & PF.BACKEND_REQ) await this.#setBackendReqFd();
    await this.call(Req.SET_OWNER);
    await this.getU64(Req.GET_FEATURES);
    this.#createQueueFds(this.#opts.numQueues ?? (this.acked.queueNum || 2));
    for (let q = 0; q < this.#callFds.length; q++) {
      await this.call(Req.SET_VRING_CALL, u64(BigInt(q)), { fds: [this.#callFds[q]] });
      await this.call(Req.SET_VRING_ERR, u64(BigInt(q)), { fds: [this.#errFds[q]] });
    }
    await this.#setFeatures(offered & this.#wanted(QEMU72_FEATURES));
    await this.#sendMemory(pf & PF.CONFIGURE_MEM_SLOTS ? 'slots' : 'table');
    for (let q = 0; q < this.#callFds.length; q++) await this.#setupQueue(q, this.#opts.queueSize ?? 128, 'num-base-addr-kick');
    for (let q = 0; q < this.#callFds.length; q++) {
      if (this.acked.features & F.PROTOCOL_FEATURES) await this.call(Req.SET_VRING_ENABLE, vringState(q, 1));
      await this.call(Req.SET_VRING_CALL, u64(BigInt(q)), { fds: [this.#callFds[q]] });
    }
  }

  /** cloud-hypervisor v53 --fs (REFERENCES.md): NEED_REPLY on everything once REPLY_ACK is agreed. */
  async #handshakeCloudHypervisor(): Promise<void> {
    await this.call(Req.SET_OWNER);
    const offered = await this.getU64(Req.GET_FEATURES);
    if (offered & F.PROTOCOL_FEATURES & this.#wanted(F.PROTOCOL_FEATURES)) await this.#negotiateProtocol(CH_PROTOCOL);
    if (this.acked.protocolFeatures & PF.MQ) this.acked.queueNum = Number(await this.getU64(Req.GET_QUEUE_NUM));
    this.#createQueueFds(this.#opts.numQueues ?? (this.acked.queueNum || 2));
    await this.#setFeatures(offered & this.#wanted(CH_FEATURES & ~F.LOG_ALL));
    await this.#sendMemory('table');
    for (let q = 0; q < this.#callFds.length; q++) await this.#setupQueue(q, this.#opts.queueSize ?? 1024, 'num-addr-base-call-kick');
    if (this.acked.features & F.PROTOCOL_FEATURES) {
      for (let q = 0; q < this.#callFds.length; q++) await this.call(Req.SET_VRING_ENABLE, vringState(q, 1));
    }
  }

  #wanted(features: bigint): bigint {
    let f = features;
    if (this.#opts.eventIdx === false) f &= ~F.EVENT_IDX;
    if (this.#opts.protocolFeatures === false) f &= ~F.PROTOCOL_FEATURES;
    return f;
  }

  async #negotiateProtocol(ours: bigint): Promise<void> {
    const pf = (await this.getU64(Req.GET_PROTOCOL_FEATURES)) & (ours | (this.#opts.extraProtocolFeatures ?? 0n));
    await this.call(Req.SET_PROTOCOL_FEATURES, u64(pf));
    this.acked.protocolFeatures = pf;
    // A frontend with shared memory regions asks for their sizes right after negotiation.
    if (pf & PF.SHMEM) this.shmemSizes = decodeShmemConfig(await this.call(Req.GET_SHMEM_CONFIG));
  }

  async #setFeatures(features: bigint): Promise<void> {
    await this.call(Req.SET_FEATURES, u64(features));
    this.acked.features = features;
  }

  async #setBackendReqFd(): Promise<void> {
    const [mine, theirs] = native.socketpair();
    this.#backendFd = mine;
    this.#ownedFds.push(mine);
    native.setNonBlocking(mine, true);
    this.#watchers.push(new native.FdWatcher(mine, () => this.#onBackendRequest()).start());
    try {
      await this.call(Req.SET_BACKEND_REQ_FD, Buffer.alloc(0), { fds: [theirs], needReply: this.replyAck });
    } finally {
      native.closeQuietly(theirs);
    }
  }

  #createQueueFds(n: number): void {
    for (let q = 0; q < n; q++) {
      const kick = native.eventfd();
      const call = native.eventfd();
      const err = native.eventfd();
      this.#ownedFds.push(kick, call, err);
      this.#kickFds.push(kick);
      this.#callFds.push(call);
      this.#errFds.push(err);
      this.#errCounts.push(0);
      this.#callCounts.push(0);
      this.#errWaiters.push([]);
      this.#watchers.push(new native.FdWatcher(call, () => this.#onCall(q)).start());
      this.#watchers.push(new native.FdWatcher(err, () => this.#onErr(q)).start());
    }
  }

  /** ADD_MEM_REG per region (memory slots) or one SET_MEM_TABLE. */
  async #sendMemory(how: 'slots' | 'table'): Promise<void> {
    if (how === 'slots') {
      for (const r of this.memory.regions) {
        await this.call(Req.ADD_MEM_REG, Buffer.concat([Buffer.alloc(8), regionBytes(r)]), { fds: [this.memory.fd], needReply: this.replyAck });
      }
      return;
    }
    const regions = this.memory.regions;
    const head = Buffer.alloc(8);
    head.writeUInt32LE(regions.length, 0);
    await this.call(Req.SET_MEM_TABLE, Buffer.concat([head, ...regions.map(regionBytes)]), {
      fds: regions.map(() => this.memory.fd),
      needReply: this.replyAck,
    });
  }

  async #setupQueue(q: number, size: number, order: 'num-base-addr-kick' | 'num-addr-base-call-kick'): Promise<void> {
    const dq = new DriverQueue(this.memory, q, size);
    dq.eventIdx = (this.acked.features & F.EVENT_IDX) !== 0n;
    this.#queues[q] = dq;
    this.#arenaMark = this.memory.mark();
    await this.call(Req.SET_VRING_NUM, vringState(q, size));
    if (order === 'num-base-addr-kick') {
      await this.call(Req.SET_VRING_BASE, vringState(q, 0));
      await this.call(Req.SET_VRING_ADDR, this.vringAddr(q));
    } else {
      await this.call(Req.SET_VRING_ADDR, this.vringAddr(q));
      await this.call(Req.SET_VRING_BASE, vringState(q, 0));
      await this.call(Req.SET_VRING_CALL, u64(BigInt(q)), { fds: [this.#callFds[q]] });
    }
    await this.call(Req.SET_VRING_KICK, u64(BigInt(q)), { fds: [this.#kickFds[q]] });
  }

  /** struct vhost_vring_addr for queue q, in the frontend's address space. */
  vringAddr(q: number, override: Partial<{ desc: number; used: number; avail: number; flags: number }> = {}): Buffer {
    const dq = this.queue(q);
    const b = Buffer.alloc(40);
    b.writeUInt32LE(q, 0);
    b.writeUInt32LE(override.flags ?? 0, 4);
    b.writeBigUInt64LE(BigInt(override.desc ?? this.memory.userAddr(dq.desc)), 8);
    b.writeBigUInt64LE(BigInt(override.used ?? this.memory.userAddr(dq.used)), 16);
    b.writeBigUInt64LE(BigInt(override.avail ?? this.memory.userAddr(dq.avail)), 24);
    return b;
  }

  /** QEMU's stop sequence: disable each ring, GET_VRING_BASE each (stops it). Returns the bases. */
  async stop(): Promise<number[]> {
    const bases: number[] = [];
    for (let q = 0; q < this.#queues.length; q++) {
      if (this.acked.features & F.PROTOCOL_FEATURES) await this.call(Req.SET_VRING_ENABLE, vringState(q, 0));
      const r = await this.call(Req.GET_VRING_BASE, vringState(q, 0));
      bases.push((r as Buffer).readUInt32LE(4));
    }
    return bases;
  }

  // ---- requests -------------------------------------------------------------------------

  /** One chain, one kick, its completion. */
  async request(q: number, readable: Buffer[], writableSizes: number[], o: { indirect?: boolean } = {}): Promise<Completion> {
    const [c] = await this.batch(q, [{ readable, writableSizes, indirect: o.indirect }]);
    return c;
  }

  /** Many chains made available together, one kick (if the device wants one), all completions. */
  async batch(q: number, chains: ChainSpec[]): Promise<Completion[]> {
    const dq = this.queue(q);
    const old = dq.availIdx;
    const done = chains.map((c) => this.submit(q, c));
    if (dq.publish(old)) this.kick(q);
    return Promise.all(done);
  }

  /**
   * Sends the chains one after another as Linux's virtio-fs driver does (virtqueue_add_sgs,
   * then virtqueue_kick_prepare, per request): each is published as soon as it is laid out
   * and kicked only if the device asks for it (avail_event with EVENT_IDX, else the used
   * ring's NO_NOTIFY flag). A device that watches the ring may serve the first while the
   * rest are laid out, and may take them without kicks. Resolves with every completion.
   */
  async enqueue(q: number, chains: ChainSpec[]): Promise<Completion[]> {
    const dq = this.queue(q);
    const done = chains.map((c) => {
      const old = dq.availIdx;
      const completion = this.submit(q, c);
      if (dq.publish(old)) this.kick(q);
      return completion;
    });
    return Promise.all(done);
  }

  /** Lays out a chain and pushes its head (publish and kick are separate). */
  submit(q: number, c: ChainSpec): Promise<Completion> {
    const dq = this.queue(q);
    if (this.#queues.every((x) => x.inFlight === 0)) this.memory.release(this.#arenaMark);
    const bufs = [
      ...c.readable.map((b) => ({ gpa: this.#place(b), len: b.length, flags: 0 })),
      ...c.writableSizes.map((n) => ({ gpa: this.memory.alloc(n, 8, c.uncleared !== true), len: n, flags: DESC_F_WRITE })),
    ];
    const { head, descs } = c.indirect ? this.#layIndirect(dq, bufs) : this.#layDirect(dq, bufs);
    const { promise, waiter } = deferred<Completion>(this.#timeoutMs, `completion of chain ${head} on queue ${q}`);
    dq.track(head, { waiter, descs, writable: bufs.filter((b) => b.flags & DESC_F_WRITE), copyLimit: c.copyLimit ?? Infinity });
    dq.push(head);
    return promise;
  }

  kick(q: number): void {
    native.eventfdWrite(this.#kickFds[q], 1);
  }

  /** Queue q's kick eventfd (to send it again, e.g. when restarting a ring). */
  kickFd(q: number): number {
    return this.#kickFds[q];
  }

  #place(b: Buffer): number {
    const gpa = this.memory.alloc(b.length, 8);
    b.copy(this.memory.view(gpa, b.length));
    return gpa;
  }

  #layDirect(dq: DriverQueue, bufs: { gpa: number; len: number; flags: number }[]): { head: number; descs: number[] } {
    const descs = dq.takeDescriptors(bufs.length);
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      dq.writeDescriptor(dq.desc, descs[i], { addr: b.gpa, len: b.len, flags: b.flags | (last ? 0 : DESC_F_NEXT), next: last ? 0 : descs[i + 1] });
    });
    return { head: descs[0], descs };
  }

  #layIndirect(dq: DriverQueue, bufs: { gpa: number; len: number; flags: number }[]): { head: number; descs: number[] } {
    const table = this.memory.alloc(16 * bufs.length, 16);
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      dq.writeDescriptor(table, i, { addr: b.gpa, len: b.len, flags: b.flags | (last ? 0 : DESC_F_NEXT), next: last ? 0 : i + 1 });
    });
    const [head] = dq.takeDescriptors(1);
    dq.writeDescriptor(dq.desc, head, { addr: table, len: 16 * bufs.length, flags: DESC_F_INDIRECT, next: 0 });
    return { head, descs: [head] };
  }

  #onCall(q: number): void {
    native.eventfdRead(this.#callFds[q]);
    this.#callCounts[q]++;
    this.#queues[q]?.collect();
  }

  #onErr(q: number): void {
    native.eventfdRead(this.#errFds[q]);
    this.#errCounts[q]++;
    for (const w of this.#errWaiters[q].splice(0)) w.resolve();
  }

  /** Call eventfd wakeups seen on queue q (several signals before a wakeup count once). */
  callCount(q: number): number {
    return this.#callCounts[q];
  }

  errCount(q: number): number {
    return this.#errCounts[q];
  }

  /** Resolves at the next signal on queue q's err eventfd. */
  waitErr(q: number): Promise<void> {
    const { promise, waiter } = deferred<void>(this.#timeoutMs, `the err eventfd of queue ${q}`);
    this.#errWaiters[q].push(waiter);
    return promise;
  }

  // ---- backend channel ------------------------------------------------------------------

  #onBackendRequest(): void {
    const buf = Buffer.alloc(HDR + 4096);
    const r = native.recvmsg(this.#backendFd, buf, 0, HDR);
    if (r === null) return;
    if (r.bytes < HDR) return this.#watchers.forEach((w) => w.fd === this.#backendFd && w.stop());
    const size = buf.readUInt32LE(8);
    let have = 0;
    while (have < size) {
      const p = native.recvmsg(this.#backendFd, buf, HDR + have, size - have);
      if (p === null || p.bytes === 0) break;
      have += p.bytes;
    }
    const req = { request: buf.readUInt32LE(0), flags: buf.readUInt32LE(4), payload: Buffer.from(buf.subarray(HDR, HDR + size)), fds: r.fds };
    this.backendRequests.push(req);
    if (req.flags & NEED_REPLY) this.#ackBackend(req);
  }

  #ackBackend(req: BackendChannelRequest): void {
    const value = this.#opts.onBackendRequest?.(req) ?? 0n;
    const msg = Buffer.alloc(HDR + 8);
    msg.writeUInt32LE(req.request, 0);
    msg.writeUInt32LE(VERSION | REPLY, 4);
    msg.writeUInt32LE(8, 8);
    msg.writeBigUInt64LE(value, HDR);
    native.sendmsg(this.#backendFd, msg);
  }

  // ---- teardown -------------------------------------------------------------------------

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const e = new Error('frontend closed');
    for (const w of this.#replyWaiters.splice(0)) w.reject(e);
    for (const q of this.#queues) q.failAll(e);
    for (const ws of this.#errWaiters) for (const w of ws.splice(0)) w.reject(e);
    this.#watcher.close();
    for (const w of this.#watchers) w.close();
    for (const req of this.backendRequests) for (const fd of req.fds) native.closeQuietly(fd);
    native.closeQuietly(this.#fd);
    for (const fd of this.#ownedFds) native.closeQuietly(fd);
    this.memory.close();
    this.#peerClosedResolve();
  }
}

/** struct VhostUserMemoryRegion { guest_phys_addr, memory_size, userspace_addr, mmap_offset } */
export function regionBytes(r: { gpa: number; size: number; userAddr: number; fdOffset: number }): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(BigInt(r.gpa), 0);
  b.writeBigUInt64LE(BigInt(r.size), 8);
  b.writeBigUInt64LE(BigInt(r.userAddr), 16);
  b.writeBigUInt64LE(BigInt(r.fdOffset), 24);
  return b;
}
