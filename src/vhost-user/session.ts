/**
 * One vhost-user connection, backend side: the protocol state machine
 * (owner, negotiated features, memory table, vring state) and the glue that
 * turns kicks into queue drains. After a drain a vring may be polled for a
 * while before the session sleeps until the next kick (see poll.ts), so a
 * guest whose requests come back to back is served without waking anyone.
 *
 * Reactions, by kind of trouble:
 * - a framing error (bad header, size, fds) or a failed send: log, close the
 *   connection (every fd and mapping released), emit 'close' with the error;
 * - a request the session refuses (bad value, wrong state, unsupported): log,
 *   answer with a failure ack where a reply is expected, keep going;
 * - a broken ring: log, signal the vring's err eventfd, stop that queue; the
 *   control plane keeps working (RESET_DEVICE or a new SET_VRING_* revives it).
 * Nothing thrown here escapes into the event loop.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import * as native from '../native';
import type { RequestHandler } from '../io';
import { ClosurefsError } from '../errors';
import { GuestMemory, type MemoryRegionDescriptor } from '../virtio/guest-memory';
import { MemoryTableError, VirtqueueConfigError } from '../virtio/errors';
import { Virtqueue, type QueueSignals } from '../virtio/queue';
import { silentLogger, type Logger } from '../virtio/logger';
import { BackendChannel } from './backend-channel';
import { AdaptivePoll, DEFAULT_POLL_MAX_NS } from './poll';
import { MessageReader, encodeMessage, u64Payload, type VhostUserMessage } from './codec';
import { ENOENT, ENOTSUP, EINVAL, VhostUserProtocolError, VhostUserRequestError } from './errors';
import {
  encodeConfig,
  encodeVringState,
  readConfig,
  readMemoryRegion,
  readMemoryTable,
  readU64,
  readVringAddr,
  readVringFdPayload,
  readVringState,
} from './payloads';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FrontendRequest as R,
  MAX_MEM_SLOTS,
  OFFERED_FEATURES,
  OFFERED_PROTOCOL_FEATURES,
  ProtocolFeature,
  REQUESTS_WITH_REPLY,
  MAX_SHMEM_REGIONS,
  SHMEM_CONFIG_SIZE,
  VERSION,
  VRING_F_LOG,
  VirtioFeature,
  requestName,
} from './protocol';

/** What a session serves. Optional parts default to "not supported". */
export interface VhostUserDevice {
  /** 1 hiprio + N request queues (virtio-fs §5.11.2). */
  readonly numQueues: number;
  /** virtio-fs tag; when given, GET_CONFIG serves it and PROTOCOL_F_CONFIG is offered. */
  readonly tag?: string;
  handler: RequestHandler;
  /**
   * Sizes of the device's shared memory regions, by shmid (virtio-fs: [DAX window]).
   * When given, PROTOCOL_F_SHMEM is offered and GET_SHMEM_CONFIG answers with them.
   */
  readonly shmemSizes?: readonly number[];
  /** Called on RESET_DEVICE / RESET_OWNER: drop per-guest state (open files, DAX mappings). */
  reset?(): void;
}

export interface VhostUserSessionOptions {
  logger?: Logger;
  /** Ack timeout of the backend channel. */
  backendTimeoutMs?: number;
  /**
   * Longest a served vring is polled for its next request before the session sleeps
   * until a kick (see AdaptivePoll); 0 never polls. Default 32 us.
   */
  pollMaxNs?: number;
}

/** virtio-fs config space (§5.11.4): u8 tag[36]; le32 num_request_queues. */
export const FS_TAG_SIZE = 36;
export const FS_CONFIG_SIZE = FS_TAG_SIZE + 4;
/** Socket reads per wakeup (a message takes two) before yielding to kicks and timers. */
const READS_PER_WAKEUP = 64;

/** A snapshot of protocol state, for tests and diagnostics. */
export interface SessionState {
  owner: boolean;
  features: bigint;
  protocolFeatures: bigint;
  regions: readonly MemoryRegionDescriptor[];
  vrings: { size: number; enabled: boolean; started: boolean; nextAvail: number; nextUsed: number; broken: string | null }[];
  backendChannel: boolean;
  closed: boolean;
}

type Handler = (msg: VhostUserMessage) => Buffer | void;

/** Per-vring state that is not the ring itself: its fds and the start/enable rules. */
/** The session's hook for a queue whose last PENDING chain completed; a symbol, so not part of its API. */
const kQueuesIdle = Symbol('queuesIdle');

/** One vring's fds and state; it is also its queue's signals (see QueueSignals for why an object). */
class Vring implements QueueSignals {
  readonly queue: Virtqueue;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  /** Started: has a kick fd (SET_VRING_KICK), until GET_VRING_BASE stops it. */
  started = false;
  enabled = false;
  addressesSet = false;
  watcher: native.FdWatcher | null = null;
  pendingDrain: NodeJS.Immediate | null = null;
  /** performance.now() when the queue last went quiet after being served; NaN when not tracked. */
  quietSince = NaN;
  constructor(
    index: number,
    memory: GuestMemory,
    readonly poll: AdaptivePoll,
    private readonly session: VhostUserSession,
    private readonly log: Logger,
  ) {
    this.queue = new Virtqueue({ index, memory, logger: log, signals: this });
  }

  notify(): void {
    if (this.callFd < 0) return;
    try {
      native.eventfdWrite(this.callFd, 1);
    } catch (e) {
      this.log.warn({ queue: this.queue.index, err: errText(e) }, 'writing the call eventfd failed');
    }
  }

  idle(): void {
    this.session[kQueuesIdle]();
  }
}

export class VhostUserSession extends EventEmitter {
  readonly #fd: number;
  readonly #device: VhostUserDevice;
  /**
   * device.handler, kept in a field of our own for the request path: V8 tracks what a
   * field holds per object shape, and the daemon's device objects (one object literal
   * per connection) had that record reset when the VM's connection made its device
   * after the warm-up's, which threw away the compiled kick path that read it there.
   */
  readonly #handler: RequestHandler;
  readonly #log: Logger;
  readonly #backendTimeoutMs: number | undefined;
  readonly #pollMaxNs: number;
  readonly #reader = new MessageReader();
  readonly #watcher: native.FdWatcher;
  readonly #memory = new GuestMemory({ maxRegions: MAX_MEM_SLOTS });
  readonly #vrings: Vring[];
  readonly #config: Buffer | null;
  readonly #offeredProtocol: bigint;
  readonly #handlers: Record<number, Handler>;
  #owner = false;
  #features = 0n;
  #protocolFeatures = 0n;
  #backend: BackendChannel | null = null;
  /**
   * Closed until the constructor has the socket watched. Why not false from the start: V8
   * treats a field never written after its initializer as a constant and compiles it into
   * the kick path, so the start-up warm-up's session, closing, threw away the compiled kick
   * path just as a VM's session started on it. A second write here makes it a variable.
   */
  #closed = true;
  /**
   * A message arrived while requests were in flight: the socket is not read
   * until they complete. Every message may change what those requests write to
   * (the memory table, the rings, the device itself), and none is urgent.
   */
  #messagesHeld = false;
  /** Chains served because a poll saw them, before (or without) their kick. */
  #polledChains = 0;

  /** Serves the connected socket `fd` (taken over: closed by close()). */
  constructor(fd: number, device: VhostUserDevice, opts: VhostUserSessionOptions = {}) {
    super();
    checkDevice(device);
    this.#fd = fd;
    this.#device = device;
    this.#handler = device.handler;
    this.#log = opts.logger ?? silentLogger;
    this.#backendTimeoutMs = opts.backendTimeoutMs;
    this.#pollMaxNs = opts.pollMaxNs ?? DEFAULT_POLL_MAX_NS;
    this.#config = device.tag === undefined ? null : fsConfig(device.tag, device.numQueues - 1);
    this.#offeredProtocol =
      OFFERED_PROTOCOL_FEATURES | (this.#config ? ProtocolFeature.CONFIG : 0n) | (device.shmemSizes?.length ? ProtocolFeature.SHMEM : 0n);
    this.#vrings = Array.from({ length: device.numQueues }, (_, index) => this.#newVring(index));
    this.#handlers = this.#handlerTable();
    native.setNonBlocking(fd, true);
    this.#watcher = new native.FdWatcher(fd, () => this.#onReadable()).start();
    this.#closed = false;
  }

  /** The SET_BACKEND_REQ_FD channel, once the frontend has sent one. */
  get backendChannel(): BackendChannel | null {
    return this.#backend;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Chains a poll caught after a drain (see AdaptivePoll): served without waiting for their kick. */
  get polledChains(): number {
    return this.#polledChains;
  }

  state(): SessionState {
    return {
      owner: this.#owner,
      features: this.#features,
      protocolFeatures: this.#protocolFeatures,
      regions: this.#memory.regions.map(({ guestPhysAddr, size, userAddr, mmapOffset }) => ({ guestPhysAddr, size, userAddr, mmapOffset })),
      vrings: this.#vrings.map((v) => ({
        size: v.queue.size,
        enabled: v.enabled,
        started: v.started,
        nextAvail: v.queue.nextAvail,
        nextUsed: v.queue.nextUsed,
        broken: v.queue.broken?.message ?? null,
      })),
      backendChannel: this.#backend !== null,
      closed: this.#closed,
    };
  }

  /** Releases everything (rings, mappings, fds, the socket) and emits 'close' once. */
  close(reason?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher.close();
    this.#reader.close();
    for (const v of this.#vrings) {
      this.#releaseVring(v);
      // Requests still in flight complete into nothing: their rings are gone.
      v.queue.reset();
    }
    // Reads still running on other threads write into guest memory: it is unmapped after the last.
    if (this.#inflight() === 0) this.#memory.close();
    this.#backend?.close();
    this.#backend = null;
    native.closeQuietly(this.#fd);
    this.emit('close', reason);
  }

  // ---- socket --------------------------------------------------------------------

  #onReadable(): void {
    try {
      for (let i = 0; i < READS_PER_WAKEUP && !this.#closed; i++) {
        if (this.#inflight() > 0) return this.#holdMessages();
        if (!this.#readOnce()) return;
      }
    } catch (e) {
      this.#log.error({ err: errText(e), code: (e as ClosurefsError).code }, 'vhost-user connection broken; closing it');
      this.close(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** One recvmsg; false when the socket has nothing more for now. */
  #readOnce(): boolean {
    const w = this.#reader.window();
    const r = native.recvmsg(this.#fd, w.buf, w.offset, w.length);
    if (r === null) return false;
    if (r.bytes === 0) {
      for (const fd of r.fds) native.closeQuietly(fd);
      if (this.#reader.midMessage) {
        this.#log.warn('frontend closed the vhost-user connection in the middle of a message');
        this.close(new VhostUserProtocolError('connection closed in the middle of a message'));
      } else {
        this.#log.info('frontend closed the vhost-user connection');
        this.close();
      }
      return false;
    }
    const msg = this.#reader.received(r.bytes, r.fds, r.truncated);
    if (msg !== null) this.#dispatch(msg);
    return true;
  }

  #dispatch(msg: VhostUserMessage): void {
    const name = requestName(msg.request);
    // Decided before handling: SET_PROTOCOL_FEATURES itself follows the old state.
    const wantsAck = (msg.flags & FLAG_NEED_REPLY) !== 0 && this.#has(ProtocolFeature.REPLY_ACK);
    this.#log.debug({ request: name, flags: msg.flags, size: msg.payload.length, fds: msg.fds.length }, 'vhost-user request');
    try {
      const handler = this.#handlers[msg.request];
      if (handler === undefined) throw new VhostUserRequestError(`${name} is not supported`, ENOTSUP);
      const reply = handler(msg);
      if (reply !== undefined) this.#send(msg.request, reply);
      else if (wantsAck) this.#send(msg.request, u64Payload(0n));
    } catch (e) {
      if (!(e instanceof VhostUserRequestError)) throw e;
      this.#log.warn({ request: name, err: e.message }, 'vhost-user request refused');
      if (wantsAck || REQUESTS_WITH_REPLY.has(msg.request)) this.#send(msg.request, u64Payload(BigInt(e.ack)));
    } finally {
      for (const fd of msg.fds) native.closeQuietly(fd);
    }
  }

  #send(request: number, payload: Buffer): void {
    if (this.#closed) return;
    const msg = encodeMessage(request, VERSION | FLAG_REPLY, payload);
    const sent = native.sendmsg(this.#fd, msg);
    // Replies are tiny and the frontend waits for each: a full socket buffer means it stopped reading.
    if (sent !== msg.length) throw new VhostUserProtocolError(`reply to ${requestName(request)}: sent ${sent ?? 0} of ${msg.length} bytes`);
  }

  #inflight(): number {
    let n = 0;
    for (const v of this.#vrings) n += v.queue.inflight;
    return n;
  }

  #holdMessages(): void {
    this.#messagesHeld = true;
    this.#watcher.stop();
    // Until the messages are read, requests are served in place: the count in flight only falls.
    for (const v of this.#vrings) v.queue.inPlaceOnly = true;
  }

  /** The last request in flight completed: unmap what close() left, or read the messages held back. */
  [kQueuesIdle](): void {
    if (this.#inflight() > 0) return;
    if (this.#closed) {
      this.#memory.close();
      return;
    }
    if (!this.#messagesHeld) return;
    this.#messagesHeld = false;
    for (const v of this.#vrings) v.queue.inPlaceOnly = false;
    this.#watcher.start();
    setImmediate(() => {
      if (!this.#closed) this.#onReadable();
    });
  }

  #has(feature: bigint): boolean {
    return (this.#protocolFeatures & feature) !== 0n;
  }

  // ---- request handlers ----------------------------------------------------------

  #handlerTable(): Record<number, Handler> {
    return {
      [R.GET_FEATURES]: () => u64Payload(OFFERED_FEATURES),
      [R.SET_FEATURES]: (m) => this.#setFeatures(readU64(m.payload)),
      [R.GET_PROTOCOL_FEATURES]: () => u64Payload(this.#offeredProtocol),
      [R.SET_PROTOCOL_FEATURES]: (m) => this.#setProtocolFeatures(readU64(m.payload)),
      [R.SET_OWNER]: () => {
        this.#owner = true;
      },
      [R.RESET_OWNER]: () => this.#resetOwner(),
      [R.RESET_DEVICE]: () => this.#resetDevice(),
      [R.GET_QUEUE_NUM]: () => u64Payload(BigInt(this.#device.numQueues)),
      [R.GET_MAX_MEM_SLOTS]: () => u64Payload(BigInt(MAX_MEM_SLOTS)),
      [R.SET_MEM_TABLE]: (m) => this.#setMemTable(m),
      [R.ADD_MEM_REG]: (m) => this.#addMemReg(m),
      [R.REM_MEM_REG]: (m) => this.#remMemReg(m),
      [R.SET_VRING_NUM]: (m) => this.#setVringNum(m),
      [R.SET_VRING_ADDR]: (m) => this.#setVringAddr(m),
      [R.SET_VRING_BASE]: (m) => this.#setVringBase(m),
      [R.GET_VRING_BASE]: (m) => this.#getVringBase(m),
      [R.SET_VRING_KICK]: (m) => this.#setVringKick(m),
      [R.SET_VRING_CALL]: (m) => this.#setVringFd(m, 'callFd'),
      [R.SET_VRING_ERR]: (m) => this.#setVringFd(m, 'errFd'),
      [R.SET_VRING_ENABLE]: (m) => this.#setVringEnable(m),
      [R.SET_BACKEND_REQ_FD]: (m) => this.#setBackendReqFd(m),
      [R.GET_CONFIG]: (m) => this.#getConfig(m),
      [R.GET_SHMEM_CONFIG]: () => this.#getShmemConfig(),
      [R.SET_CONFIG]: () => {
        throw new VhostUserRequestError('the virtio-fs configuration space is read-only (§5.11.4)');
      },
    };
  }

  #setFeatures(features: bigint): void {
    const extra = features & ~OFFERED_FEATURES;
    if (extra !== 0n) throw new VhostUserRequestError(`SET_FEATURES acks bits 0x${extra.toString(16)} that were never offered`);
    this.#features = features;
    const eventIdx = (features & VirtioFeature.EVENT_IDX) !== 0n;
    for (const v of this.#vrings) v.queue.eventIdx = eventIdx;
    // vhost-user "Ring states": without PROTOCOL_FEATURES a ring starts enabled.
    if ((features & VirtioFeature.PROTOCOL_FEATURES) === 0n) {
      for (const v of this.#vrings) this.#setEnabled(v, true);
    }
  }

  #setProtocolFeatures(features: bigint): void {
    const extra = features & ~this.#offeredProtocol;
    if (extra !== 0n) throw new VhostUserRequestError(`SET_PROTOCOL_FEATURES acks bits 0x${extra.toString(16)} that were never offered`);
    this.#protocolFeatures = features;
  }

  /** Deprecated by the spec; treated as a device reset that also gives up ownership. */
  #resetOwner(): void {
    this.#log.info('RESET_OWNER: resetting the device');
    this.#resetRings();
    this.#owner = false;
  }

  /** "Disable all rings and reset all internal device state"; ownership and memory stay. */
  #resetDevice(): void {
    if (!this.#has(ProtocolFeature.RESET_DEVICE)) throw new VhostUserRequestError('RESET_DEVICE without the RESET_DEVICE protocol feature');
    this.#log.info('RESET_DEVICE');
    this.#resetRings();
  }

  #resetRings(): void {
    for (const v of this.#vrings) {
      this.#releaseVring(v);
      v.queue.reset();
      v.enabled = v.addressesSet = false;
    }
    this.#features = 0n;
    this.#device.reset?.();
  }

  #setMemTable(m: VhostUserMessage): void {
    const regions = readMemoryTable(m.payload);
    if (m.fds.length !== regions.length) {
      throw new VhostUserProtocolError(`SET_MEM_TABLE describes ${regions.length} regions but carries ${m.fds.length} fds`);
    }
    const fds = m.fds.splice(0);
    memoryOp(() => this.#memory.replace(regions.map((desc, i) => ({ desc, fd: fds[i] }))));
    this.#remapRings();
  }

  /** ADD_MEM_REG: { le64 padding; VhostUserMemoryRegion region; } + the region's fd. */
  #addMemReg(m: VhostUserMessage): void {
    const desc = readMemoryRegion(m.payload, 8);
    const fd = m.fds.splice(0)[0];
    memoryOp(() => this.#memory.add(desc, fd));
    this.#remapRings();
  }

  #remMemReg(m: VhostUserMessage): void {
    const desc = readMemoryRegion(m.payload, 8);
    if (!this.#memory.remove(desc.guestPhysAddr, desc.size)) {
      throw new VhostUserRequestError(`REM_MEM_REG: no region at GPA 0x${desc.guestPhysAddr.toString(16)} of size 0x${desc.size.toString(16)}`, ENOENT);
    }
    this.#remapRings();
  }

  #setVringNum(m: VhostUserMessage): void {
    const { index, num } = readVringState(m.payload);
    const v = this.#stoppedVring(index, 'SET_VRING_NUM');
    configOp(() => v.queue.setSize(num));
  }

  #setVringAddr(m: VhostUserMessage): void {
    const a = readVringAddr(m.payload);
    const v = this.#vring(a.index);
    if (a.flags & VRING_F_LOG) throw new VhostUserRequestError(`vring ${a.index}: used-ring logging requested, but LOG_ALL is not offered`, ENOTSUP);
    configOp(() => v.queue.setAddresses({ desc: a.desc, avail: a.avail, used: a.used }, 'frontend'));
    v.addressesSet = true;
    // Translate now when we can so a bad address is refused on the message that carried it.
    if (v.queue.size > 0 && this.#memory.regions.length > 0) configOp(() => v.queue.resolve(!v.started));
  }

  #setVringBase(m: VhostUserMessage): void {
    const { index, num } = readVringState(m.payload);
    const v = this.#stoppedVring(index, 'SET_VRING_BASE');
    configOp(() => v.queue.setBase(num));
  }

  /**
   * Stops the ring and reports where the device would continue (vhost-user
   * "Ring states"). A bad index has no state to report: the reply is empty, as
   * GET_CONFIG signals failure, rather than a u64 the frontend would misread
   * as {index, num}.
   */
  #getVringBase(m: VhostUserMessage): Buffer {
    const { index } = readVringState(m.payload);
    const v = this.#vrings[index];
    if (v === undefined) {
      this.#log.warn({ index }, 'GET_VRING_BASE for a vring that does not exist');
      return Buffer.alloc(0);
    }
    this.#stopVring(v);
    return encodeVringState({ index, num: v.queue.nextAvail });
  }

  #setVringKick(m: VhostUserMessage): void {
    const { index, noFd } = this.#vringFdPayload(m);
    const v = this.#vring(index);
    if (noFd) throw new VhostUserRequestError(`vring ${index}: polling mode (kick without an fd) is not supported`, ENOTSUP);
    this.#stopVring(v);
    v.kickFd = m.fds.splice(0)[0];
    v.started = true;
    if (v.addressesSet && v.queue.size > 0) configOp(() => v.queue.resolve(true));
    this.#run(v);
  }

  #setVringFd(m: VhostUserMessage, which: 'callFd' | 'errFd'): void {
    const { index, noFd } = this.#vringFdPayload(m);
    const v = this.#vring(index);
    native.closeQuietly(v[which]);
    v[which] = noFd ? -1 : m.fds.splice(0)[0];
  }

  /** The u64 of SET_VRING_KICK/CALL/ERR, with its fd count checked against the no-fd bit. */
  #vringFdPayload(m: VhostUserMessage): { index: number; noFd: boolean } {
    const p = readVringFdPayload(m.payload);
    if (m.fds.length !== (p.noFd ? 0 : 1)) {
      throw new VhostUserProtocolError(`${requestName(m.request)}: ${m.fds.length} fds with the no-fd flag ${p.noFd ? 'set' : 'clear'}`);
    }
    return p;
  }

  #setVringEnable(m: VhostUserMessage): void {
    const { index, num } = readVringState(m.payload);
    const v = this.#vring(index);
    if ((this.#features & VirtioFeature.PROTOCOL_FEATURES) === 0n) {
      throw new VhostUserRequestError('SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES negotiated');
    }
    if (num > 1) throw new VhostUserRequestError(`SET_VRING_ENABLE ${num}: expected 0 or 1`);
    this.#setEnabled(v, num === 1);
  }

  #setBackendReqFd(m: VhostUserMessage): void {
    if (!this.#has(ProtocolFeature.BACKEND_REQ)) throw new VhostUserRequestError('SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature');
    this.#backend?.close();
    const fd = m.fds.splice(0)[0];
    this.#backend = new BackendChannel(fd, {
      replyAck: () => this.#has(ProtocolFeature.REPLY_ACK),
      logger: this.#log,
      timeoutMs: this.#backendTimeoutMs,
    });
  }

  /** GET_SHMEM_CONFIG: the sizes of the shared memory regions (the DAX window is shmid 0). */
  #getShmemConfig(): Buffer {
    const sizes = this.#device.shmemSizes ?? [];
    if (sizes.length === 0) throw new VhostUserRequestError('GET_SHMEM_CONFIG without shared memory regions (PROTOCOL_F_SHMEM not offered)');
    const b = Buffer.alloc(SHMEM_CONFIG_SIZE);
    b.writeUInt32LE(sizes.length, 0);
    sizes.forEach((size, i) => b.writeBigUInt64LE(BigInt(size), 8 + 8 * i));
    return b;
  }

  /** GET_CONFIG: the requested slice of the config space; an empty payload signals failure. */
  #getConfig(m: VhostUserMessage): Buffer {
    const c = readConfig(m.payload);
    const ok = this.#config !== null && this.#has(ProtocolFeature.CONFIG) && c.data.length === c.size && c.offset + c.size <= FS_CONFIG_SIZE;
    if (!ok) {
      this.#log.warn({ offset: c.offset, size: c.size, tagged: this.#config !== null }, 'GET_CONFIG refused');
      return Buffer.alloc(0);
    }
    return encodeConfig({ ...c, data: (this.#config as Buffer).subarray(c.offset, c.offset + c.size) });
  }

  // ---- vrings --------------------------------------------------------------------

  #newVring(index: number): Vring {
    return new Vring(index, this.#memory, new AdaptivePoll(this.#pollMaxNs), this, this.#log);
  }

  #vring(index: number): Vring {
    const v = this.#vrings[index];
    if (v === undefined) throw new VhostUserRequestError(`vring index ${index} is out of range (${this.#vrings.length} queues)`);
    return v;
  }

  #stoppedVring(index: number, what: string): Vring {
    const v = this.#vring(index);
    if (v.started) throw new VhostUserRequestError(`${what} on vring ${index} while it is started (stop it with GET_VRING_BASE first)`);
    return v;
  }

  #setEnabled(v: Vring, enabled: boolean): void {
    v.enabled = enabled;
    this.#run(v);
  }

  /** Watches the kick fd exactly while the ring is started and enabled; drains once on start. */
  #run(v: Vring): void {
    if (this.#closed) return;
    if (!(v.started && v.enabled)) {
      v.watcher?.stop();
      return;
    }
    if (v.watcher === null) v.watcher = new native.FdWatcher(v.kickFd, () => this.#onKick(v));
    v.watcher.start();
    // Chains may already be waiting (a restarted ring, or a kick sent before enable).
    this.#scheduleDrain(v);
  }

  /**
   * Serves first and resets the kick eventfd after, so the read(2) is not between the
   * guest's kick and its reply (A/B at one request per kick: 3-5% more ops/s). The
   * reset may swallow a kick sent after the drain last looked at the ring; the driver
   * publishes avail idx before it kicks, so looking once more after the read finds it,
   * and a chain found then is served by another pass of the same loop. A separate call
   * for that rare case would be code V8 had never seen run when it compiled this: the
   * first guest to hit it threw the compiled kick path away mid-read (a 7 ms recompile).
   */
  #onKick(v: Vring): void {
    // How long the queue stayed quiet before this kick tells the poll window whether it would have caught it.
    if (!Number.isNaN(v.quietSince)) v.poll.observe((performance.now() - v.quietSince) * 1e6);
    v.quietSince = NaN;
    do {
      this.#serveAndPoll(v);
      // Polling asked the driver not to kick; ask again before sleeping. enableKicks fences, so the
      // look at the ring below sees any chain the driver added without a kick meanwhile.
      v.queue.enableKicks();
      if (v.kickFd < 0) return;
      try {
        native.eventfdRead(v.kickFd);
      } catch (e) {
        this.#log.error({ queue: v.queue.index, err: errText(e) }, 'reading the kick eventfd failed; stopping the queue');
        v.watcher?.stop();
        return;
      }
      // A drain already scheduled (budget spent) covers what is left and keeps the queue from hogging the loop.
    } while (v.pendingDrain === null && v.queue.hasAvailable);
  }

  /**
   * Drains the vring, then polls it for more while requests come back to back.
   *
   * A poll that catches a chain runs exactly the code a poll that misses runs, here and
   * in #pollForMore: the start-up warm-up never sees a catch (its driver shares our
   * thread, so nothing reaches the ring while we watch it), and V8 throws compiled code
   * away at the first call or property access it has never seen run. With the catch on
   * code of its own, a guest's first caught request deoptimized the whole kick path
   * (its callback, #onKick, this loop) and a V8 helper recompiled it for milliseconds.
   */
  #serveAndPoll(v: Vring): void {
    let served = 0;
    let caught = 0;
    for (let pass = 0, more = true; more; pass++) {
      const n = this.#drain(v);
      served += n;
      caught += pass === 0 ? 0 : n;
      // Bounded by the queue size per wake-up, so a guest that never pauses cannot keep the loop from its other work.
      more = n > 0 && served < v.queue.size && this.#pollForMore(v);
    }
    this.#polledChains += caught;
  }

  /**
   * Watches the available ring for up to the vring's poll window, with the driver's
   * kicks suppressed; true as soon as a chain is there. Not while requests are out on
   * other threads: their completions come through the event loop this would hold up.
   */
  #pollForMore(v: Vring): boolean {
    const start = performance.now();
    v.quietSince = start;
    const windowNs = v.poll.windowNs;
    if (windowNs === 0 || v.pendingDrain !== null || v.queue.inflight > 0 || v.kickFd < 0 || !this.#serving(v)) return false;
    const deadline = start + windowNs / 1e6;
    // While we watch the ring, the driver's kicks would only cost it (a VM exit each).
    v.queue.suppressKicks();
    let found = false;
    let now = start;
    while (!found && now < deadline) {
      found = v.queue.hasAvailable;
      now = performance.now();
    }
    // The same operations for a catch and a miss (see #serveAndPoll). A catch tells the window
    // how long it waited; after a miss the kick that ends the wait will (observe(0) keeps it).
    const waitedNs = (now - start) * 1e6;
    v.poll.observe(found ? waitedNs : 0);
    v.quietSince = found ? NaN : start;
    return found;
  }

  /** Serves what the vring has available; returns how many chains completed. */
  #drain(v: Vring): number {
    if (!this.#serving(v)) return 0;
    const r = v.queue.drain(this.#handler);
    if (r.error !== null) {
      this.#broken(v, r.error);
      return r.completed;
    }
    if (r.more) this.#scheduleDrain(v);
    return r.completed;
  }

  #serving(v: Vring): boolean {
    return v.started && v.enabled && !this.#closed;
  }

  #scheduleDrain(v: Vring): void {
    if (v.pendingDrain !== null) return;
    v.pendingDrain = setImmediate(() => {
      v.pendingDrain = null;
      this.#drain(v);
    });
  }

  #broken(v: Vring, err: ClosurefsError): void {
    this.#log.error({ queue: v.queue.index, code: err.code, rule: (err as { rule?: string }).rule, err: err.message }, 'virtqueue broken; stopped processing it');
    v.watcher?.stop();
    if (v.errFd >= 0) {
      try {
        native.eventfdWrite(v.errFd, 1);
      } catch {
        /* the frontend closed its err eventfd: the log line is all we can do */
      }
    }
  }

  /** GET_VRING_BASE, a new kick fd, or close: stop watching and drop the kick fd. */
  #stopVring(v: Vring): void {
    v.started = false;
    v.watcher?.close();
    v.watcher = null;
    if (v.pendingDrain !== null) clearImmediate(v.pendingDrain);
    v.pendingDrain = null;
    native.closeQuietly(v.kickFd);
    v.kickFd = -1;
  }

  #releaseVring(v: Vring): void {
    this.#stopVring(v);
    native.closeQuietly(v.callFd);
    native.closeQuietly(v.errFd);
    v.callFd = v.errFd = -1;
  }

  /** After a memory-table change every ring view must be translated again. */
  #remapRings(): void {
    for (const v of this.#vrings) {
      if (!v.addressesSet || v.queue.size === 0) continue;
      try {
        v.queue.resolve(false);
      } catch (e) {
        this.#log.warn({ queue: v.queue.index, err: errText(e) }, 'ring addresses are not covered by the new memory table');
      }
    }
  }
}

function checkDevice(d: VhostUserDevice): void {
  if (!Number.isInteger(d.numQueues) || d.numQueues < 1 || d.numQueues > 256) {
    throw new RangeError(`numQueues ${d.numQueues} must be in [1, 256]: vring indices are 8 bits on the wire`);
  }
  const sizes = d.shmemSizes ?? [];
  if (sizes.length > MAX_SHMEM_REGIONS || sizes.some((n) => !Number.isSafeInteger(n) || n <= 0)) {
    throw new RangeError(`shmemSizes must be at most ${MAX_SHMEM_REGIONS} positive sizes`);
  }
}

/** The virtio-fs config space: the tag, NUL-padded, then the request queue count. */
function fsConfig(tag: string, requestQueues: number): Buffer {
  const bytes = Buffer.from(tag, 'utf8');
  if (bytes.length === 0 || bytes.length > FS_TAG_SIZE) throw new RangeError(`tag "${tag}" must be 1 to ${FS_TAG_SIZE} bytes`);
  const b = Buffer.alloc(FS_CONFIG_SIZE);
  bytes.copy(b);
  b.writeUInt32LE(requestQueues, FS_TAG_SIZE);
  return b;
}

/** Memory-table errors are the frontend's bad request, not a broken stream. */
function memoryOp(f: () => void): void {
  try {
    f();
  } catch (e) {
    if (e instanceof MemoryTableError) throw new VhostUserRequestError(e.message, EINVAL, { cause: e });
    if (e instanceof Error && 'errno' in e) throw new VhostUserRequestError(`mapping guest memory failed: ${e.message}`, EINVAL, { cause: e });
    throw e;
  }
}

function configOp(f: () => void): void {
  try {
    f();
  } catch (e) {
    if (e instanceof VirtqueueConfigError) throw new VhostUserRequestError(e.message, EINVAL, { cause: e });
    throw e;
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
