/**
 * A private virtqueue the daemon drives itself: the driver half of a split ring
 * (VIRTIO 1.2 §2.7) over a memfd, feeding the real Virtqueue. Requests are laid
 * out as the Linux virtio-fs driver sends them: one indirect table holding the
 * request header, its arguments, the reply header and the reply payload.
 *
 * Only the warm-up uses it; it speaks to no frontend and shares nothing with a
 * session.
 */
import * as native from '../native';
import type { RequestHandler } from '../io';
import { GuestMemory } from '../virtio/guest-memory';
import { Virtqueue } from '../virtio/queue';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../virtio/chain';

const QUEUE_SIZE = 16;
/** Fixed layout of the private "guest RAM" (GPAs). */
const DESC = 0;
const AVAIL = 0x1000;
const USED = 0x2000;
const INDIRECT = 0x3000;
const REQUEST = 0x4000;
const REQUEST_MAX = 0x1000;
const REPLY_HEADER = 0x5000;
const REPLY = 0x10000;
/** The largest reply the ring has room for (a 128 KiB READ, a 4 KiB READDIRPLUS). */
export const SELF_RING_REPLY_MAX = 128 * 1024;
const RAM_SIZE = REPLY + SELF_RING_REPLY_MAX;
const OUT_HEADER_SIZE = 16;
/** replyRoom for requests that get no reply (FORGET). */
export const NO_REPLY = -1;

export interface SelfReply {
  /** 0 or a negative errno, as in fuse_out_header.error. */
  error: number;
  /** The payload after fuse_out_header (a view: valid until the next request). */
  payload: Buffer;
  /** The used length the device reported (0 for requests that get no reply). */
  usedLen: number;
}

export class SelfRing {
  readonly #memory = new GuestMemory();
  readonly #queue: Virtqueue;
  readonly #handler: RequestHandler;
  #availIdx = 0;

  constructor(handler: RequestHandler) {
    this.#handler = handler;
    this.#memory.add({ guestPhysAddr: 0, size: RAM_SIZE, userAddr: 0, mmapOffset: 0 }, native.memfdCreate('closurefs-warm-up', RAM_SIZE));
    this.#queue = new Virtqueue({ index: 1, memory: this.#memory, notify: () => {} });
    this.#queue.eventIdx = true;
    this.#queue.setSize(QUEUE_SIZE);
    this.#queue.setAddresses({ desc: DESC, avail: AVAIL, used: USED }, 'guest');
    this.#queue.resolve(true);
    this.#queue.setBase(0);
  }

  /**
   * Sends one request (header and arguments, already encoded; the arguments start
   * at argsAt) and returns the reply. replyRoom is the payload room after the
   * reply header; NO_REPLY sends no writable buffer at all, as for FORGET.
   */
  request(request: Buffer, argsAt: number, replyRoom: number): SelfReply {
    if (request.length > REQUEST_MAX || replyRoom > SELF_RING_REPLY_MAX) throw new RangeError('request or reply too large for the warm-up ring');
    request.copy(this.#slice(REQUEST, request.length));
    const parts: [number, number, number][] = [[REQUEST, argsAt, 0]];
    if (request.length > argsAt) parts.push([REQUEST + argsAt, request.length - argsAt, 0]);
    if (replyRoom !== NO_REPLY) parts.push([REPLY_HEADER, OUT_HEADER_SIZE, VIRTQ_DESC_F_WRITE]);
    if (replyRoom > 0) parts.push([REPLY, replyRoom, VIRTQ_DESC_F_WRITE]);
    const table = this.#slice(INDIRECT, 16 * parts.length);
    parts.forEach(([addr, len, flags], i) => writeDescriptor(table, i, addr, len, flags | (i + 1 < parts.length ? VIRTQ_DESC_F_NEXT : 0), i + 1));
    writeDescriptor(this.#slice(DESC, 16), 0, INDIRECT, table.length, VIRTQ_DESC_F_INDIRECT, 0);
    return this.#submit();
  }

  close(): void {
    this.#memory.close();
  }

  #submit(): SelfReply {
    const avail = this.#slice(AVAIL, 6 + 2 * QUEUE_SIZE);
    avail.writeUInt16LE(0, 4 + 2 * (this.#availIdx % QUEUE_SIZE)); // head: descriptor 0
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    avail.writeUInt16LE(this.#availIdx, 2);
    const drained = this.#queue.drain(this.#handler);
    if (drained.error !== null) throw drained.error;
    const used = this.#slice(USED, 6 + 8 * QUEUE_SIZE);
    const usedLen = used.readUInt32LE(4 + 8 * ((this.#availIdx - 1) % QUEUE_SIZE) + 4);
    const header = this.#slice(REPLY_HEADER, OUT_HEADER_SIZE);
    const payloadLen = Math.max(0, Math.min(usedLen, header.readUInt32LE(0)) - OUT_HEADER_SIZE);
    return { error: usedLen === 0 ? 0 : header.readInt32LE(4), payload: this.#slice(REPLY, payloadLen), usedLen };
  }

  #slice(gpa: number, len: number): Buffer {
    return this.#memory.slice(gpa, len);
  }
}

function writeDescriptor(table: Buffer, i: number, addr: number, len: number, flags: number, next: number): void {
  const o = 16 * i;
  table.writeUInt32LE(addr, o); // every GPA here is below 4 GiB
  table.writeUInt32LE(0, o + 4);
  table.writeUInt32LE(len, o + 8);
  table.writeUInt16LE(flags, o + 12);
  table.writeUInt16LE(next, o + 14);
}
