/**
 * The driver half of one virtio-fs request queue, inside the daemon: guest memory
 * is a memfd of our own, the frontend is one end of a socketpair whose other end a
 * real VhostUserSession serves, and kicks and calls are real eventfds. It exists so
 * a fresh daemon can send its own request path guest-shaped traffic before a VM
 * does (see warmup.ts); it is not a general frontend.
 *
 * It sets up what QEMU's vhost-user-fs sets up for a Linux guest, minus what this
 * driver does not need: VERSION_1, INDIRECT_DESC, EVENT_IDX and PROTOCOL_FEATURES
 * acked; queue 1 (the first request queue) sized 16, enabled; no messages that want
 * a reply, so nothing is read from the socket.
 *
 * Where the shape of the traffic matters, it is the guest's. V8 compiles the request
 * path for the cases it has seen, and a case first met in the guest's traffic throws
 * the compiled code away (a deoptimization) and runs slow until it is compiled again:
 * - Memory is two regions, as QEMU hands over a PC's RAM: one low, one above 4 GiB
 *   (guest addresses past 2^32, and past what V8 keeps as small integers). A request
 *   touches both: its rings and indirect table in the first, its buffers in the second.
 * - Up to SLOTS requests are in flight at once (a guest's readahead keeps two), each
 *   with its own head descriptor, indirect table, request, out header and pages.
 * - A request's device-writable pages are laid out as the caller asks: one run,
 *   every other page, or runs of a few, as a guest's page cache hands pages out;
 *   the out header apart from them, or right before the first (the device then
 *   sees header and pages as one run of guest memory, and writes the data at an
 *   offset into it).
 * - Kicks follow the device's avail_event, and the driver asks for a call per reply
 *   through used_event, re-checking the used ring after moving it.
 */
import * as native from '../native';
import { encodeMessage } from '../vhost-user/codec';
import { FrontendRequest as R, VERSION, VirtioFeature } from '../vhost-user/protocol';

const PAGE = 4096;
const QUEUE = 1;
const QUEUE_SIZE = 16;
/** Descriptor flags (virtio 1.2 §2.7.5). */
const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;
const OUT_HEADER_SIZE = 16;
const ECANCELED = 125;

/** Requests that may be in flight at once; slot k always uses head descriptor k. */
export const SLOTS = 4;
/** Most device-writable pages one request may have (a 128 KiB READ). */
export const MAX_REPLY_PAGES = 32;
const MAX_REQUEST_BYTES = PAGE;

/**
 * Offsets in the memfd. The first region holds the rings and the indirect tables;
 * the second, at 4 GiB in guest-physical space, each slot's request, out header
 * and pages (room for every other page).
 */
const LAYOUT = {
  desc: 0x0000,
  avail: 0x1000,
  used: 0x2000,
  indirect: 0x3000, // + slot * 0x400: 34 descriptors of 16 bytes fit
  region1: 0x10000,
  request: 0x10000, // + slot * PAGE
  outHeader: 0x14000, // + slot * 0x100
  pages: 0x20000, // + slot * SLOT_PAGES_BYTES
} as const;
const SLOT_PAGES_BYTES = 2 * MAX_REPLY_PAGES * PAGE;
const MEMORY_SIZE = LAYOUT.pages + SLOTS * SLOT_PAGES_BYTES;
/** Guest-physical address of the second region, where a PC's RAM above 4 GiB starts. */
const HIGH_RAM = 2 ** 32;
/** Where "the frontend" has the memory mapped; only used to translate ring addresses. */
const USER_BASE = 0x7f00_0000_0000;

/**
 * How a request's writable pages lie in guest memory: `run` pages side by side, then
 * a one-page gap. 1 is every other page; MAX_REPLY_PAGES (or more) is one run.
 */
export type PageRun = number;

/** Where a request's out header lies: in the slot's header area, or ending where its first page starts. */
export type HeaderPlace = 'apart' | 'before-pages';

export interface Reply {
  /** fuse_out_header.error: 0 or a negative errno. */
  error: number;
  /** Bytes the device wrote after the out header (fuse_out_header.len - 16). */
  length: number;
}

/** The session side: whatever startSession returned for the socketpair end we gave it. */
export interface ServedConnection {
  close(): void;
}

/** Guest-physical address of a memfd offset. */
function gpa(offset: number): number {
  return offset < LAYOUT.region1 ? offset : HIGH_RAM + (offset - LAYOUT.region1);
}

/** Memfd offset of page i of a slot whose pages lie in runs of `run`. */
function pageOffset(slot: number, i: number, run: PageRun): number {
  const r = Math.max(1, Math.min(run, MAX_REPLY_PAGES));
  return LAYOUT.pages + slot * SLOT_PAGES_BYTES + (i + Math.floor(i / r)) * PAGE;
}

/**
 * Memfd offset of a slot's out header. Right before the first page it lies in the last
 * page of the slot before (or, for slot 0, below the page area), which no layout uses:
 * a slot's 32 pages with their gaps take at most 63 of its 64.
 */
function outHeaderOffset(slot: number, run: PageRun, place: HeaderPlace): number {
  return place === 'apart' ? LAYOUT.outHeader + slot * 0x100 : pageOffset(slot, 0, run) - OUT_HEADER_SIZE;
}

/** virtio's vring_need_event: has idx moved past event since old (all le16, wrapping)? */
function needEvent(event: number, idx: number, old: number): boolean {
  return ((idx - event - 1) & 0xffff) < ((idx - old) & 0xffff);
}

export class LoopbackDriver {
  readonly #socket: number;
  readonly #kick: number;
  readonly #call: number;
  readonly #memory: ArrayBuffer;
  readonly #bytes: Buffer;
  readonly #watcher: native.FdWatcher;
  readonly #connection: ServedConnection;
  #availIdx = 0;
  #usedIdx = 0;
  readonly #pending: (((r: Reply) => void) | null)[] = new Array(SLOTS).fill(null);
  readonly #runs: PageRun[] = new Array(SLOTS).fill(1);
  /** Memfd offset of each slot's out header for its request in flight. */
  readonly #headers: number[] = Array.from({ length: SLOTS }, (_, slot) => outHeaderOffset(slot, 1, 'apart'));
  #closed = false;

  /** Creates the memory, the socketpair and the eventfds, and hands one socket end to serve(). */
  constructor(serve: (fd: number) => ServedConnection) {
    const [ours, theirs] = native.socketpair();
    const memfd = native.memfdCreate('closurefs-warm-up', MEMORY_SIZE);
    this.#socket = ours;
    this.#kick = native.eventfd();
    this.#call = native.eventfd();
    try {
      this.#memory = native.mmap(memfd, MEMORY_SIZE, 0, { shared: true, writable: true });
      this.#bytes = Buffer.from(this.#memory);
      this.#setUp(memfd);
    } finally {
      native.closeQuietly(memfd);
    }
    this.#connection = serve(theirs);
    this.#watcher = new native.FdWatcher(this.#call, () => this.#onCall()).start();
  }

  /** A slot's request buffer, to fill before submit(): header and arguments, at most 4 KiB. */
  request(slot: number): Buffer {
    if (this.#closed) throw new Error('loopback driver closed');
    const at = LAYOUT.request + checkSlot(slot) * PAGE;
    return this.#bytes.subarray(at, at + MAX_REQUEST_BYTES);
  }

  /** Page i of a slot's last reply (the bytes after the out header). */
  replyPage(slot: number, i: number): Buffer {
    const at = pageOffset(checkSlot(slot), i, this.#runs[slot] as number);
    return this.#bytes.subarray(at, at + PAGE);
  }

  /** True when the slot has no request in flight. */
  idle(slot: number): boolean {
    return this.#pending[checkSlot(slot)] === null;
  }

  /**
   * Queues the first `requestBytes` of request(slot) with an out header and `pages`
   * writable pages laid out in runs of `run`, kicks if the device asks for it, and
   * resolves when the device puts the chain in the used ring.
   */
  submit(slot: number, requestBytes: number, pages: number, run: PageRun = 1, header: HeaderPlace = 'apart'): Promise<Reply> {
    if (this.#closed) return Promise.reject(new Error('loopback driver closed'));
    if (this.#pending[checkSlot(slot)] !== null) return Promise.reject(new Error(`slot ${slot} already has a request in flight`));
    if (pages < 0 || pages > MAX_REPLY_PAGES || requestBytes > MAX_REQUEST_BYTES) throw new RangeError('request does not fit the layout');
    this.#runs[slot] = run;
    this.#headers[slot] = outHeaderOffset(slot, run, header);
    this.#writeChain(slot, requestBytes, pages, run);
    const done = new Promise<Reply>((resolve) => (this.#pending[slot] = resolve));
    this.#publish(slot);
    return done;
  }

  /** Closes the session first (it owns the other socket end), then our fds and mapping. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#connection.close();
    this.#watcher.close();
    for (const fd of [this.#socket, this.#kick, this.#call]) native.closeQuietly(fd);
    native.munmap(this.#memory);
    // Requests cut off by close() complete as canceled, so whoever awaits them moves on.
    for (let slot = 0; slot < SLOTS; slot++) this.#resolve(slot, { error: -ECANCELED, length: 0 });
  }

  #send(request: number, payload: Buffer, fds: number[] = []): void {
    const msg = encodeMessage(request, VERSION, payload);
    if (native.sendmsg(this.#socket, msg, fds) !== msg.length) throw new Error(`loopback: short send of vhost-user request ${request}`);
  }

  /** The messages a frontend sends before its first kick; the session queues none of them a reply. */
  #setUp(memfd: number): void {
    const u64 = (v: bigint): Buffer => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(v);
      return b;
    };
    const state = (index: number, num: number): Buffer => {
      const b = Buffer.alloc(8);
      b.writeUInt32LE(index, 0);
      b.writeUInt32LE(num, 4);
      return b;
    };
    this.#send(R.SET_OWNER, Buffer.alloc(0));
    this.#send(R.SET_FEATURES, u64(VirtioFeature.VERSION_1 | VirtioFeature.INDIRECT_DESC | VirtioFeature.EVENT_IDX | VirtioFeature.PROTOCOL_FEATURES));
    // Two regions of one memfd, as QEMU sends a PC's RAM below and above 4 GiB.
    const regions: [offset: number, size: number][] = [
      [0, LAYOUT.region1],
      [LAYOUT.region1, MEMORY_SIZE - LAYOUT.region1],
    ];
    const table = Buffer.alloc(8 + 32 * regions.length);
    table.writeUInt32LE(regions.length, 0);
    regions.forEach(([offset, size], i) => {
      const at = 8 + 32 * i;
      table.writeBigUInt64LE(BigInt(gpa(offset)), at); // guest_phys_addr
      table.writeBigUInt64LE(BigInt(size), at + 8);
      table.writeBigUInt64LE(BigInt(USER_BASE + offset), at + 16);
      table.writeBigUInt64LE(BigInt(offset), at + 24); // mmap_offset
    });
    this.#send(R.SET_MEM_TABLE, table, regions.map(() => memfd));
    this.#send(R.SET_VRING_NUM, state(QUEUE, QUEUE_SIZE));
    const addr = Buffer.alloc(40);
    addr.writeUInt32LE(QUEUE, 0);
    addr.writeBigUInt64LE(BigInt(USER_BASE + LAYOUT.desc), 8);
    addr.writeBigUInt64LE(BigInt(USER_BASE + LAYOUT.used), 16);
    addr.writeBigUInt64LE(BigInt(USER_BASE + LAYOUT.avail), 24);
    this.#send(R.SET_VRING_ADDR, addr);
    this.#send(R.SET_VRING_BASE, state(QUEUE, 0));
    this.#send(R.SET_VRING_CALL, u64(BigInt(QUEUE)), [this.#call]);
    this.#send(R.SET_VRING_KICK, u64(BigInt(QUEUE)), [this.#kick]);
    this.#send(R.SET_VRING_ENABLE, state(QUEUE, 1));
  }

  #descriptor(at: number, addr: number, len: number, flags: number, next: number): void {
    const b = this.#bytes;
    b.writeBigUInt64LE(BigInt(addr), at);
    b.writeUInt32LE(len, at + 8);
    b.writeUInt16LE(flags, at + 12);
    b.writeUInt16LE(next, at + 14);
  }

  /** Head descriptor `slot` -> the slot's indirect table: [request] [out header] [page]*. */
  #writeChain(slot: number, requestBytes: number, pages: number, run: PageRun): void {
    const n = 2 + pages;
    const table = LAYOUT.indirect + slot * 0x400;
    const entry = (i: number): number => table + 16 * i;
    const more = (i: number): number => (i + 1 < n ? DESC_F_NEXT : 0);
    this.#descriptor(entry(0), gpa(LAYOUT.request + slot * PAGE), requestBytes, more(0), 1);
    this.#descriptor(entry(1), gpa(this.#headers[slot] as number), OUT_HEADER_SIZE, DESC_F_WRITE | more(1), 2);
    for (let p = 0; p < pages; p++) this.#descriptor(entry(2 + p), gpa(pageOffset(slot, p, run)), PAGE, DESC_F_WRITE | more(2 + p), 3 + p);
    this.#descriptor(LAYOUT.desc + 16 * slot, gpa(table), 16 * n, DESC_F_INDIRECT, 0);
  }

  /** avail.ring[idx % size] = head, used_event = the next reply, then avail.idx; kick if avail_event asks. */
  #publish(head: number): void {
    const b = this.#bytes;
    const old = this.#availIdx;
    b.writeUInt16LE(head, LAYOUT.avail + 4 + 2 * (old % QUEUE_SIZE));
    b.writeUInt16LE(this.#usedIdx, LAYOUT.avail + 4 + 2 * QUEUE_SIZE);
    this.#availIdx = (old + 1) & 0xffff;
    native.fence();
    b.writeUInt16LE(this.#availIdx, LAYOUT.avail + 2);
    native.fence();
    const availEvent = b.readUInt16LE(LAYOUT.used + 4 + 8 * QUEUE_SIZE);
    if (needEvent(availEvent, this.#availIdx, old)) native.eventfdWrite(this.#kick, 1);
  }

  /** Takes every reply in the used ring; asks for a call on the next one and looks again before leaving. */
  #onCall(): void {
    if (this.#closed) return;
    native.eventfdRead(this.#call);
    const b = this.#bytes;
    for (;;) {
      while (!this.#closed && b.readUInt16LE(LAYOUT.used + 2) !== this.#usedIdx) {
        const id = b.readUInt32LE(LAYOUT.used + 4 + 8 * (this.#usedIdx % QUEUE_SIZE));
        this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
        // Only a broken device returns a head we never queued: end the run rather than guess.
        if (id >= SLOTS || this.#pending[id] === null) return this.close();
        const out = this.#headers[id] as number;
        const len = b.readUInt32LE(out);
        this.#resolve(id, { error: b.readInt32LE(out + 4), length: Math.max(0, len - OUT_HEADER_SIZE) });
      }
      if (this.#closed) return;
      b.writeUInt16LE(this.#usedIdx, LAYOUT.avail + 4 + 2 * QUEUE_SIZE);
      native.fence();
      if (b.readUInt16LE(LAYOUT.used + 2) === this.#usedIdx) return;
    }
  }

  #resolve(slot: number, reply: Reply): void {
    const resolve = this.#pending[slot];
    this.#pending[slot] = null;
    resolve?.(reply);
  }
}

function checkSlot(slot: number): number {
  if (!Number.isInteger(slot) || slot < 0 || slot >= SLOTS) throw new RangeError(`slot ${slot} is not in [0, ${SLOTS})`);
  return slot;
}
