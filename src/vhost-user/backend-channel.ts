/**
 * The backend-request channel: the socket the frontend hands over with
 * SET_BACKEND_REQ_FD, on which the *backend* sends requests (e.g. SHMEM_MAP)
 * and the frontend replies.
 *
 * request() is synchronous: it is called from inside a FUSE handler (which
 * itself runs synchronously inside a queue drain) and the FUSE reply depends on
 * the answer. With REPLY_ACK negotiated it sets NEED_REPLY and waits, with
 * poll(2) and a timeout, for the u64 ack. A timeout or a malformed reply breaks
 * the channel for good: a late ack would otherwise be taken as the answer to
 * the next request.
 */
import * as native from '../native';
import { silentLogger, type Logger } from '../virtio/logger';
import { BackendChannelError } from './errors';
import { decodeHeader, encodeMessage } from './codec';
import { FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, VERSION, VERSION_MASK } from './protocol';

export interface BackendChannelOptions {
  /** Whether REPLY_ACK is negotiated (asked at each request: it may change). */
  replyAck: () => boolean;
  logger?: Logger;
  /** How long to wait for an ack. */
  timeoutMs?: number;
}

export const DEFAULT_BACKEND_TIMEOUT_MS = 5000;
const ACK_SIZE = HEADER_SIZE + 8;

export class BackendChannel {
  readonly #fd: number;
  readonly #replyAck: () => boolean;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  #broken: BackendChannelError | null = null;
  #closed = false;

  /** Takes ownership of `fd`. */
  constructor(fd: number, opts: BackendChannelOptions) {
    this.#fd = fd;
    this.#replyAck = opts.replyAck;
    this.#log = opts.logger ?? silentLogger;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_BACKEND_TIMEOUT_MS;
    native.setNonBlocking(fd, true);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends backend request `type` with `payload` (and `fd`, e.g. the file of a
   * SHMEM_MAP). Returns the frontend's ack (0 = success) when REPLY_ACK is
   * negotiated, else 0 as soon as the message is sent.
   */
  request(type: number, payload: Buffer, fd?: number): number {
    this.#check();
    const needReply = this.#replyAck();
    const msg = encodeMessage(type, VERSION | (needReply ? FLAG_NEED_REPLY : 0), payload);
    this.#send(type, msg, fd === undefined ? [] : [fd]);
    return needReply ? this.#awaitAck(type) : 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native.closeQuietly(this.#fd);
  }

  #send(type: number, msg: Buffer, fds: number[]): void {
    let sent: number | null;
    try {
      sent = native.sendmsg(this.#fd, msg, fds);
    } catch (e) {
      throw this.#fail(`backend request ${type}: send failed: ${(e as Error).message}`);
    }
    // A partial or refused send leaves the frontend's parser mid-message: unusable.
    if (sent !== msg.length) throw this.#fail(`backend request ${type}: the frontend is not reading (sent ${sent ?? 0} of ${msg.length} bytes)`);
  }

  #awaitAck(type: number): number {
    const buf = Buffer.alloc(ACK_SIZE);
    const deadline = Date.now() + this.#timeoutMs;
    let have = 0;
    while (have < ACK_SIZE) {
      const left = deadline - Date.now();
      if (left <= 0 || !native.pollIn(this.#fd, left)) throw this.#fail(`backend request ${type}: no ack within ${this.#timeoutMs} ms`);
      const r = this.#recv(buf, have);
      if (r === null) continue;
      if (r === 0) throw this.#fail(`backend request ${type}: the frontend closed the channel`);
      have += r;
    }
    return this.#decodeAck(type, buf);
  }

  #recv(buf: Buffer, have: number): number | null {
    let r: native.Received | null;
    try {
      r = native.recvmsg(this.#fd, buf, have, ACK_SIZE - have);
    } catch (e) {
      throw this.#fail(`backend channel: receive failed: ${(e as Error).message}`);
    }
    if (r === null) return null;
    for (const fd of r.fds) native.closeQuietly(fd);
    if (r.fds.length > 0) this.#log.warn({ fds: r.fds.length }, 'backend channel: the frontend sent fds with an ack; closed them');
    return r.bytes;
  }

  #decodeAck(type: number, buf: Buffer): number {
    const h = decodeHeader(buf);
    if (h.request !== type || (h.flags & VERSION_MASK) !== VERSION || !(h.flags & FLAG_REPLY) || h.size !== 8) {
      throw this.#fail(`backend request ${type}: malformed ack (request ${h.request}, flags 0x${h.flags.toString(16)}, size ${h.size})`);
    }
    const value = buf.readBigUInt64LE(HEADER_SIZE);
    // Only zero versus nonzero matters; a huge failure code may round.
    return Number(value);
  }

  #check(): void {
    if (this.#closed) throw new BackendChannelError('backend channel is closed');
    if (this.#broken !== null) throw this.#broken;
  }

  #fail(message: string): BackendChannelError {
    this.#broken = new BackendChannelError(message);
    this.#log.error({ err: message }, 'backend channel broken');
    return this.#broken;
  }
}
