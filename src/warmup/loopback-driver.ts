/**
 * The driver half of one virtio-fs request queue, inside the daemon: guest memory
 * is a memfd of our own, the frontend is one end of a socketpair whose other end a
 * real VhostUserSession serves, and kicks and calls are real eventfds. It exists so
 * a fresh daemon can send its own request path guest-shaped traffic before a VM
 * does (see warmup.ts); it is not a general frontend.
 *
 * It sets up what QEMU's vhost-user-fs sets up for a Linux guest, minus what a
 * one-request-at-a-time driver does not need: VERSION_1, INDIRECT_DESC, EVENT_IDX
 * and PROTOCOL_FEATURES acked; one memory region; queue 1 (the first request
 * queue) sized 16, enabled; no messages that want a reply, so nothing is read
 * from the socket. Every request is one indirect descriptor table, its device-
 * writable part split into separate 4 KiB pages, every other page, as a guest's
 * page cache hands them out.
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

/** Guest-physical layout of the memfd; the frontend addresses are these plus USER_BASE. */
const LAYOUT = {
  desc: 0x0000,
  avail: 0x1000,
  used: 0x2000,
  indirect: 0x3000,
  request: 0x4000,
  outHeader: 0x5000,
  pages: 0x10000,
} as const;
/** Most device-writable pages one request may have (a 128 KiB READ). */
export const MAX_REPLY_PAGES = 32;
/** Pages are every other page, so a reply's buffers are not one contiguous range. */
const PAGE_STRIDE = 2 * PAGE;
const MEMORY_SIZE = LAYOUT.pages + MAX_REPLY_PAGES * PAGE_STRIDE;
/** Where "the frontend" has the memory mapped; only used to translate ring addresses. */
const USER_BASE = 0x7f00_0000_0000;
const MAX_REQUEST_BYTES = LAYOUT.outHeader - LAYOUT.request;

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
  #pending: ((r: Reply) => void) | null = null;
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

  /** The request buffer to fill before submit(): header and arguments, at most 4 KiB. */
  get request(): Buffer {
    if (this.#closed) throw new Error('loopback driver closed');
    return this.#bytes.subarray(LAYOUT.request, LAYOUT.request + MAX_REQUEST_BYTES);
  }

  /** Page i of the last reply (the bytes after the out header). */
  replyPage(i: number): Buffer {
    const at = LAYOUT.pages + i * PAGE_STRIDE;
    return this.#bytes.subarray(at, at + PAGE);
  }

  /**
   * Queues the first `requestBytes` of request() with an out header and `pages`
   * writable pages, kicks, and resolves when the device puts the chain in the used ring.
   */
  submit(requestBytes: number, pages: number): Promise<Reply> {
    if (this.#closed) return Promise.reject(new Error('loopback driver closed'));
    if (this.#pending !== null) return Promise.reject(new Error('one request at a time'));
    if (pages < 0 || pages > MAX_REPLY_PAGES || requestBytes > MAX_REQUEST_BYTES) throw new RangeError('request does not fit the layout');
    this.#writeChain(requestBytes, pages);
    const done = new Promise<Reply>((resolve) => (this.#pending = resolve));
    this.#publish();
    native.eventfdWrite(this.#kick, 1);
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
    // A request cut off by close() completes as canceled, so whoever awaits it moves on.
    const resolve = this.#pending;
    this.#pending = null;
    resolve?.({ error: -ECANCELED, length: 0 });
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
    const table = Buffer.alloc(8 + 32);
    table.writeUInt32LE(1, 0);
    table.writeBigUInt64LE(0n, 8); // guest_phys_addr
    table.writeBigUInt64LE(BigInt(MEMORY_SIZE), 16);
    table.writeBigUInt64LE(BigInt(USER_BASE), 24);
    table.writeBigUInt64LE(0n, 32); // mmap_offset
    this.#send(R.SET_MEM_TABLE, table, [memfd]);
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

  /** Head descriptor 0 -> indirect table: [request] [out header] [page]*. */
  #writeChain(requestBytes: number, pages: number): void {
    const n = 2 + pages;
    const entry = (i: number): number => LAYOUT.indirect + 16 * i;
    const more = (i: number): number => (i + 1 < n ? DESC_F_NEXT : 0);
    this.#descriptor(entry(0), LAYOUT.request, requestBytes, more(0), 1);
    this.#descriptor(entry(1), LAYOUT.outHeader, OUT_HEADER_SIZE, DESC_F_WRITE | more(1), 2);
    for (let p = 0; p < pages; p++) this.#descriptor(entry(2 + p), LAYOUT.pages + p * PAGE_STRIDE, PAGE, DESC_F_WRITE | more(2 + p), 3 + p);
    this.#descriptor(LAYOUT.desc, LAYOUT.indirect, 16 * n, DESC_F_INDIRECT, 0);
  }

  /** avail.ring[idx % size] = head 0, used_event = the entry we wait for, then avail.idx (after a fence). */
  #publish(): void {
    const b = this.#bytes;
    b.writeUInt16LE(0, LAYOUT.avail + 4 + 2 * (this.#availIdx % QUEUE_SIZE));
    b.writeUInt16LE(this.#usedIdx, LAYOUT.avail + 4 + 2 * QUEUE_SIZE);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    native.fence();
    b.writeUInt16LE(this.#availIdx, LAYOUT.avail + 2);
    native.fence();
  }

  #onCall(): void {
    if (this.#closed) return;
    native.eventfdRead(this.#call);
    const b = this.#bytes;
    if (b.readUInt16LE(LAYOUT.used + 2) === this.#usedIdx) return;
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    const resolve = this.#pending;
    this.#pending = null;
    const len = b.readUInt32LE(LAYOUT.outHeader);
    resolve?.({ error: b.readInt32LE(LAYOUT.outHeader + 4), length: Math.max(0, len - OUT_HEADER_SIZE) });
  }
}
