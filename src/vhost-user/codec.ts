/**
 * vhost-user framing: the 12-byte header and a stream reader.
 *
 *   le32 request; le32 flags (bits 0-1 version = 1, bit 2 REPLY, bit 3 NEED_REPLY); le32 size;
 *   u8 payload[size]
 *
 * MessageReader is a two-state machine (HEADER, PAYLOAD). It never asks the
 * socket for more than the rest of the current message, so one read never spans
 * two messages and every fd received belongs to the message being assembled
 * (the kernel delivers SCM_RIGHTS with the first byte of the sendmsg that
 * carried them: the header). A short read parks the state; the next read resumes.
 *
 * Validation order per message: header (version, flags, size bound, size rule
 * of the request) -> payload bytes -> fd count rule. Any failure is a
 * VhostUserProtocolError and leaves the reader broken (sticky): the stream can
 * no longer be trusted to be in sync.
 */
import * as native from '../native';
import { VhostUserProtocolError } from './errors';
import {
  FLAG_REPLY,
  HEADER_SIZE,
  KNOWN_FLAGS,
  MAX_FDS,
  VERSION,
  VERSION_MASK,
  fdCountAllowed,
  payloadSizeAllowed,
  requestName,
} from './protocol';

export interface VhostUserMessage {
  readonly request: number;
  readonly flags: number;
  readonly payload: Buffer;
  /** fds that came with the message; whoever handles it takes or closes them. */
  fds: number[];
}

export interface MessageHeader {
  readonly request: number;
  readonly flags: number;
  readonly size: number;
}

export function encodeHeader(h: MessageHeader, out: Buffer = Buffer.allocUnsafe(HEADER_SIZE), off = 0): Buffer {
  out.writeUInt32LE(h.request, off);
  out.writeUInt32LE(h.flags, off + 4);
  out.writeUInt32LE(h.size, off + 8);
  return out;
}

export function decodeHeader(buf: Buffer, off = 0): MessageHeader {
  return { request: buf.readUInt32LE(off), flags: buf.readUInt32LE(off + 4), size: buf.readUInt32LE(off + 8) };
}

/** Header + payload in one buffer, ready for one sendmsg. */
export function encodeMessage(request: number, flags: number, payload: Buffer = EMPTY): Buffer {
  const out = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  encodeHeader({ request, flags, size: payload.length }, out);
  payload.copy(out, HEADER_SIZE);
  return out;
}

export function u64Payload(value: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64LE(value);
  return b;
}

/** A u64 wire field as a number, refusing values that a double cannot hold exactly. */
export function u64ToNumber(v: bigint, what: string, onError: (msg: string) => Error): number {
  if (v >= 1n << 53n) throw onError(`${what} 0x${v.toString(16)} is beyond 2^53`);
  return Number(v);
}

const EMPTY = Buffer.alloc(0);
const HEADER = 0;
const PAYLOAD = 1;

export class MessageReader {
  #state = HEADER;
  readonly #header = Buffer.alloc(HEADER_SIZE);
  #payload: Buffer = EMPTY;
  #have = 0;
  #current: MessageHeader | null = null;
  #fds: number[] = [];
  #broken: VhostUserProtocolError | null = null;

  /** A stream error already seen; every later call fails with it. */
  get broken(): VhostUserProtocolError | null {
    return this.#broken;
  }

  /** True while part of a message has arrived and the rest has not. */
  get midMessage(): boolean {
    return this.#have > 0 || this.#state === PAYLOAD;
  }

  /** Where the next recvmsg writes, and how much it may take (never past this message). */
  window(): { buf: Buffer; offset: number; length: number } {
    this.#checkState();
    if (this.#state === HEADER) return { buf: this.#header, offset: this.#have, length: HEADER_SIZE - this.#have };
    return { buf: this.#payload, offset: this.#have, length: this.#payload.length - this.#have };
  }

  /**
   * Accounts `bytes` just received into window() with their fds (and whether
   * the kernel truncated them). Returns a complete message, or null when more
   * bytes are needed. Throws VhostUserProtocolError on a framing violation.
   */
  received(bytes: number, fds: readonly number[], truncated = false): VhostUserMessage | null {
    this.#checkState();
    for (const fd of fds) this.#fds.push(fd);
    if (truncated) this.#fail('the kernel truncated the fds of a message (MSG_CTRUNC): more than it could deliver');
    if (this.#fds.length > MAX_FDS) this.#fail(`${this.#fds.length} fds arrived with one message, more than ${MAX_FDS}`);
    this.#have += bytes;
    if (this.#state === HEADER) {
      if (this.#have < HEADER_SIZE) return null;
      this.#startPayload();
    }
    if (this.#have < this.#payload.length) return null;
    return this.#complete();
  }

  /** Closes fds held for an incomplete message. */
  close(): void {
    for (const fd of this.#fds) native.closeQuietly(fd);
    this.#fds = [];
  }

  #startPayload(): void {
    const h = decodeHeader(this.#header);
    checkHeader(h, (msg) => this.#fail(msg));
    this.#current = h;
    this.#state = PAYLOAD;
    this.#have = 0;
    this.#payload = h.size === 0 ? EMPTY : Buffer.alloc(h.size);
  }

  #complete(): VhostUserMessage {
    const h = this.#current as MessageHeader;
    if (!fdCountAllowed(h.request, this.#fds.length)) {
      this.#fail(`${requestName(h.request)} arrived with ${this.#fds.length} fds, which it does not allow`);
    }
    const msg: VhostUserMessage = { request: h.request, flags: h.flags, payload: this.#payload, fds: this.#fds };
    this.#fds = [];
    this.#state = HEADER;
    this.#have = 0;
    this.#current = null;
    this.#payload = EMPTY;
    return msg;
  }

  #checkState(): void {
    if (this.#broken !== null) throw this.#broken;
  }

  #fail(message: string): never {
    this.close();
    this.#broken = new VhostUserProtocolError(message);
    throw this.#broken;
  }
}

/** A frontend request: version 1, no REPLY flag, no unknown flag bits, a size its request allows. */
export function checkHeader(h: MessageHeader, fail: (msg: string) => never): void {
  const name = requestName(h.request);
  if ((h.flags & VERSION_MASK) !== VERSION) fail(`${name}: header version ${h.flags & VERSION_MASK}, expected 1`);
  if (h.flags & FLAG_REPLY) fail(`${name}: a request carries the REPLY flag`);
  if (h.flags & ~KNOWN_FLAGS) fail(`${name}: reserved header flag bits 0x${((h.flags & ~KNOWN_FLAGS) >>> 0).toString(16)} are set`);
  if (!payloadSizeAllowed(h.request, h.size)) fail(`${name}: payload size ${h.size} is not allowed for this request`);
}
