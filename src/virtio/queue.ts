/**
 * The device side of a split virtqueue (VIRTIO 1.2 §2.7).
 *
 * Ring layouts (little endian), sizes include the EVENT_IDX fields:
 *   descriptor table  16 * size          align 16
 *   available ring    le16 flags; le16 idx; le16 ring[size]; le16 used_event    align 2
 *   used ring         le16 flags; le16 idx; {le32 id; le32 len} ring[size]; le16 avail_event   align 4
 *
 * The queue knows nothing about sockets or eventfds: it is configured, then
 * drained by its owner, and asks for a notification through `signals.notify()`.
 * drain() never throws: a ring that breaks a rule is marked broken (and stays
 * so until reset) and the error is handed back for the owner to log.
 *
 * Completion order: a chain whose handler returned PENDING is completed later,
 * out of order (the used ring names chains by head, §2.7.8). While any is in
 * flight its buffers are being written from another thread: `inflight` says how
 * many, and `signals.idle()` fires when the count falls back to 0, so the owner can hold
 * back whatever would unmap guest memory until then.
 */
import * as native from '../native';
import { PENDING, type Completion, type RequestHandler } from '../io';
import { ClosurefsError } from '../errors';
import { GuestMemory } from './guest-memory';
import { AvailRingError, VirtqueueConfigError } from './errors';
import { DESCRIPTOR_SIZE, descriptorTable, walkChain, type DescriptorChain } from './chain';
import { silentLogger, type Logger } from './logger';

export const MAX_QUEUE_SIZE = 32768;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

// le16 word indices in the rings (§2.7.6, §2.7.8).
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 1;
/** ring[size], then used_event. */
const AVAIL_RING = 2;
const USED_FLAGS = 0;
const USED_IDX = 1;
/** ring[size] of 8-byte elements, then avail_event. */
const USED_RING = 2;
/** The rings are little-endian and read as native 16-bit words, which needs a little-endian host. */
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Where the three parts of a ring are, in one address space. */
export interface RingAddresses {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
}

/** GPAs (a driver-side test harness) or the frontend's virtual addresses (SET_VRING_ADDR). */
export type AddressSpace = 'guest' | 'frontend';

/**
 * What a queue tells its owner, as methods of one object rather than closures: a
 * daemon makes new owners for every connection (its start-up warm-up, then the VMM),
 * and V8 compiles a call of a closure for the one closure it saw there, throwing that
 * code away when the next connection's closure comes by. A method of one class is
 * the same function for every owner.
 */
export interface QueueSignals {
  /** Signals the driver (writes the call eventfd). */
  notify(): void;
  /** The last chain left PENDING has completed. */
  idle(): void;
}

export interface VirtqueueOptions {
  readonly index: number;
  readonly memory: GuestMemory;
  readonly signals: QueueSignals;
  readonly logger?: Logger;
}

export interface DrainResult {
  /** Chains completed by this call. */
  readonly completed: number;
  /** True when the budget ran out with chains still available: drain again soon. */
  readonly more: boolean;
  readonly notified: boolean;
  /** The error that broke the queue during this call, if it did. */
  readonly error: ClosurefsError | null;
}

const IDLE: DrainResult = { completed: 0, more: false, notified: false, error: null };

/** Byte sizes of the ring parts for a queue of `size` entries. */
export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESCRIPTOR_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size > 0 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

export class Virtqueue {
  readonly index: number;
  #memory: GuestMemory;
  readonly #signals: QueueSignals;
  #log: Logger;
  #size = 0;
  #addresses: { addrs: RingAddresses; space: AddressSpace } | null = null;
  #desc: DataView | null = null;
  /** The available ring as le16 words: flags, idx, ring[size], used_event. */
  #avail: Uint16Array | null = null;
  /** The used ring; its le16 fields (flags, idx, avail_event) go through #usedWords. */
  #used: Buffer | null = null;
  #usedWords: Uint16Array | null = null;
  /** EVENT_IDX negotiated: use used_event/avail_event instead of the flags (§2.7.7, §2.7.10). */
  eventIdx = false;
  /**
   * Serve every chain in place, offering no completion: set by an owner that waits
   * for `inflight` to reach 0, so that a steady stream of batches cannot keep it above.
   */
  inPlaceOnly = false;
  #nextAvail = 0;
  #nextUsed = 0;
  #broken: ClosurefsError | null = null;
  /** Chains handed out PENDING and not yet completed. */
  #inflight = 0;
  /**
   * Bumped whenever the ring views are dropped (new size, addresses, memory, reset):
   * a completion from before belongs to rings that are gone and is not published.
   */
  #generation = 0;

  constructor(opts: VirtqueueOptions) {
    this.index = opts.index;
    this.#memory = opts.memory;
    this.#signals = opts.signals;
    this.#log = opts.logger ?? silentLogger;
  }

  get size(): number {
    return this.#size;
  }

  /** Index of the next available-ring entry the device will read (GET_VRING_BASE). */
  get nextAvail(): number {
    return this.#nextAvail;
  }

  get nextUsed(): number {
    return this.#nextUsed;
  }

  get broken(): ClosurefsError | null {
    return this.#broken;
  }

  /** Chains whose handler returned PENDING and has not completed them yet. */
  get inflight(): number {
    return this.#inflight;
  }

  /** The driver has made chains available that drain() has not served (unchecked: drain() validates them). */
  get hasAvailable(): boolean {
    if (this.#broken !== null || !this.ready) return false;
    return (this.#avail as Uint16Array)[AVAIL_IDX] !== this.#nextAvail;
  }

  /** Size set and all three rings translated to views of guest memory. */
  get ready(): boolean {
    // All three views are made together; a detached mapping reads as length 0 (a DataView would throw).
    return this.#desc !== null && this.#used !== null && this.#used.length > 0;
  }

  /** Queue Size must be a power of two no larger than 32768 (§2.7). */
  setSize(size: number): void {
    if (!isValidQueueSize(size)) {
      throw new VirtqueueConfigError(`queue ${this.index}: size ${size} is not a power of two in [1, ${MAX_QUEUE_SIZE}]`);
    }
    this.#size = size;
    this.#unmapRings();
  }

  /** Where the rings are. Checked for alignment now, translated by resolve(). */
  setAddresses(addrs: RingAddresses, space: AddressSpace): void {
    checkAlignment(this.index, addrs);
    this.#addresses = { addrs, space };
    this.#unmapRings();
  }

  /**
   * The first available-ring index to process (SET_VRING_BASE). The frontend
   * sends it when it (re)initialises a stopped ring, so it also clears a
   * broken state: the driver has started over.
   */
  setBase(nextAvail: number): void {
    if (!Number.isInteger(nextAvail) || nextAvail < 0 || nextAvail > 0xffff) {
      throw new VirtqueueConfigError(`queue ${this.index}: base ${nextAvail} is not a 16-bit ring index`);
    }
    this.#nextAvail = nextAvail;
    this.#broken = null;
  }

  /**
   * Translates the ring addresses into views of guest memory, each of which must
   * lie inside one region. Called when addresses, size or the memory table change.
   * With `syncUsed` the used index is read back from the ring (a (re)started
   * queue continues where the used ring says it is).
   */
  resolve(syncUsed = false): void {
    this.#unmapRings();
    if (this.#size === 0) throw new VirtqueueConfigError(`queue ${this.index}: size is not set`);
    if (this.#addresses === null) throw new VirtqueueConfigError(`queue ${this.index}: ring addresses are not set`);
    const { addrs, space } = this.#addresses;
    const sizes = ringSizes(this.#size);
    const at = (addr: number, len: number, what: string): Buffer => {
      try {
        return space === 'guest' ? this.#memory.slice(addr, len) : this.#memory.sliceFrontend(addr, len);
      } catch (e) {
        throw new VirtqueueConfigError(`queue ${this.index}: ${what} ring: ${(e as Error).message}`, { cause: e });
      }
    };
    const desc = at(addrs.desc, sizes.desc, 'descriptor');
    this.#avail = this.#words(at(addrs.avail, sizes.avail, 'available'), 'available');
    this.#used = at(addrs.used, sizes.used, 'used');
    this.#usedWords = this.#words(this.#used, 'used');
    this.#desc = descriptorTable(desc);
    if (syncUsed) this.#nextUsed = this.#usedWords[USED_IDX] as number;
  }

  /** Back to the state of a new queue (RESET_DEVICE, RESET_OWNER). */
  reset(): void {
    this.#unmapRings();
    this.#size = 0;
    this.#addresses = null;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#broken = null;
    this.eventIdx = false;
  }

  /**
   * Serves every available chain (up to `size` per call, so one busy queue cannot
   * starve the event loop), publishes the used entries, re-enables kicks and
   * re-checks the available ring after a fence so a chain added meanwhile is not
   * left without a kick, then notifies the driver at most once.
   */
  drain(handler: RequestHandler): DrainResult {
    if (this.#broken !== null || !this.ready) return IDLE;
    const oldUsed = this.#nextUsed;
    let completed = 0;
    try {
      for (;;) {
        completed += this.#serveAvailable(handler, this.#size - completed);
        this.#publishUsed();
        this.#enableKicks();
        // Store-load barrier: avail_event / used idx must be visible before we
        // look at avail idx again, or the driver and we could both skip a kick.
        native.fence();
        const empty = this.#availIdx() === this.#nextAvail;
        // Both tests run on every pass: with `empty || completed >= size` the size was read only
        // when a chain came in during the pass, which no warm-up produces, and V8 threw the
        // compiled drain away the first time a guest did (no feedback for that load).
        const spent = completed >= this.#size;
        if (empty || spent) return this.#finish(oldUsed, completed, !empty);
      }
    } catch (e) {
      // Count from the used index: chains served before the throw are complete.
      return this.#fail(e, oldUsed, (this.#nextUsed - oldUsed) & 0xffff);
    }
  }

  /** Called after the fence of drain(): used_event / flags are read after used idx was published. */
  #finish(oldUsed: number, completed: number, more: boolean): DrainResult {
    const notified = this.#notifyIfNeeded(oldUsed);
    return { completed, more, notified, error: null };
  }

  #fail(e: unknown, oldUsed: number, completed: number): DrainResult {
    const error = e instanceof ClosurefsError ? e : new ClosurefsError(`queue ${this.index}: ${String(e)}`, { cause: e });
    this.#broken = error;
    let notified = false;
    try {
      // Chains completed before the bad one still get their replies.
      this.#publishUsed();
      native.fence();
      notified = this.#notifyIfNeeded(oldUsed);
    } catch {
      /* the rings themselves are gone: nothing more to tell the driver */
    }
    return { completed, more: false, notified, error };
  }

  /**
   * Pops and serves chains until the ring is empty or `budget` is spent. A chain
   * with more behind it in this pass may be left PENDING by the handler: the
   * others are served meanwhile. A lone chain is always served in place, since
   * handing it to another thread would only add a wake-up to its latency.
   */
  #serveAvailable(handler: RequestHandler, budget: number): number {
    const avail = this.#avail as Uint16Array;
    const mask = this.#size - 1;
    let availIdx = this.#availIdx();
    let n = 0;
    while (n < budget && this.#nextAvail !== availIdx) {
      const head = avail[AVAIL_RING + (this.#nextAvail & mask)] as number;
      if (head >= this.#size) {
        throw new AvailRingError(`queue ${this.index}: available ring entry ${this.#nextAvail} names head ${head}, outside a table of ${this.#size}`);
      }
      const chain = walkChain(this.#memory, this.#desc as DataView, this.#size, head);
      this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
      n++;
      // Before serving what looks like the last chain in place, look again: a driver that publishes
      // chain by chain (Linux does) may have added the next one while we walked this one.
      if (this.#nextAvail === availIdx && n < budget && !this.inPlaceOnly) availIdx = this.#availIdx();
      const more = n < budget && this.#nextAvail !== availIdx && !this.inPlaceOnly;
      const written = more ? this.#serveChainAsync(handler, chain) : this.#serveChain(handler, chain);
      if (written !== PENDING) this.#addUsed(head, written);
    }
    return n;
  }

  /** Runs the handler; a throwing handler is a bug above us, logged, and the chain completes empty. */
  #serveChain(handler: RequestHandler, chain: DescriptorChain): number {
    let written: number;
    try {
      written = handler.handle(this.index, chain);
    } catch (e) {
      return this.#handlerThrew(e, chain);
    }
    return this.#usedLength(chain, written);
  }

  /** As #serveChain, offering the handler a completion: returns PENDING when it took it. */
  #serveChainAsync(handler: RequestHandler, chain: DescriptorChain): number {
    // Counted before the call, so a completion that comes early still finds itself counted.
    this.#inflight++;
    const completion = this.#completion(chain);
    let written: number;
    try {
      written = handler.handle(this.index, chain, completion.complete);
    } catch (e) {
      written = this.#handlerThrew(e, chain);
    }
    if (written === PENDING && !completion.done) return PENDING;
    if (!completion.done) {
      completion.done = true;
      this.#inflight--;
    }
    // A handler that completed in place and also returned a length has answered twice: the completion stands.
    return completion.published ? PENDING : this.#usedLength(chain, written);
  }

  /**
   * The completion of one PENDING chain: publishes its used entry and notifies the
   * driver as a drain would, unless the rings it came from are gone or broken.
   */
  #completion(chain: DescriptorChain): { complete: Completion; done: boolean; published: boolean } {
    const generation = this.#generation;
    const state = {
      done: false,
      published: false,
      complete: (written: number): void => {
        if (state.done) {
          this.#log.error({ queue: this.index, head: chain.head }, 'request completed twice; the second completion is ignored');
          return;
        }
        state.done = true;
        this.#inflight--;
        if (generation === this.#generation && this.#broken === null && this.ready) {
          state.published = true;
          this.#publishOne(chain, written);
        }
        if (this.#inflight === 0) this.#signals.idle();
      },
    };
    return state;
  }

  #publishOne(chain: DescriptorChain, written: number): void {
    const oldUsed = this.#nextUsed;
    try {
      this.#addUsed(chain.head, this.#usedLength(chain, written));
      this.#publishUsed();
      // Used idx must be visible before we read used_event / the flags to decide on a signal.
      native.fence();
      this.#notifyIfNeeded(oldUsed);
    } catch (e) {
      this.#log.error({ err: e, queue: this.index, head: chain.head }, 'publishing a completed request failed');
    }
  }

  #handlerThrew(e: unknown, chain: DescriptorChain): number {
    this.#log.error({ err: e, queue: this.index, head: chain.head }, 'request handler threw; completing the chain with no reply bytes');
    return 0;
  }

  /** The used length to publish: what the handler wrote, clamped to the chain's writable bytes. */
  #usedLength(chain: DescriptorChain, written: number): number {
    if (!Number.isInteger(written) || written < 0 || written > chain.writableBytes) {
      this.#log.error({ queue: this.index, head: chain.head, written, room: chain.writableBytes }, 'request handler reported an impossible used length; clamped');
      return Number.isInteger(written) && written > 0 ? chain.writableBytes : 0;
    }
    return written;
  }

  /** Reads avail idx; a driver never makes more than `size` entries available ahead of us. */
  #availIdx(): number {
    const idx = (this.#avail as Uint16Array)[AVAIL_IDX] as number;
    const ahead = (idx - this.#nextAvail) & 0xffff;
    if (ahead > this.#size) {
      throw new AvailRingError(`queue ${this.index}: avail idx ${idx} is ${ahead} entries ahead of ${this.#nextAvail}, more than the queue size ${this.#size}`);
    }
    return idx;
  }

  #addUsed(head: number, len: number): void {
    const used = this.#used as Buffer;
    const off = 4 + 8 * (this.#nextUsed & (this.#size - 1));
    used.writeUInt32LE(head, off);
    used.writeUInt32LE(len, off + 4);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
  }

  #publishUsed(): void {
    const used = this.#usedWords as Uint16Array;
    if (used[USED_IDX] === this.#nextUsed) return;
    // Write barrier: the entries must be visible before the index that publishes them.
    native.fence();
    used[USED_IDX] = this.#nextUsed;
  }

  /**
   * Asks the driver not to kick while the device watches the available ring itself
   * (QEMU does the same while it polls): with EVENT_IDX, an avail_event the driver
   * has already passed, so vring_need_event stays false (§2.7.10); without it, the
   * used ring's NO_NOTIFY flag (§2.7.7). A kick costs a guest a VM exit. Kicks stay
   * off until drain() or enableKicks(), which the owner must call before it sleeps.
   */
  suppressKicks(): void {
    if (this.#broken !== null || !this.ready) return;
    const used = this.#usedWords as Uint16Array;
    if (this.eventIdx) used[this.#availEventWord()] = (this.#nextAvail - 1) & 0xffff;
    else used[USED_FLAGS] = (used[USED_FLAGS] as number) | VIRTQ_USED_F_NO_NOTIFY;
  }

  /**
   * Turns kicks back on. The driver may have added a chain without a kick while they
   * were off, so the caller must look at the ring again after this (which fences).
   */
  enableKicks(): void {
    if (this.#broken !== null || !this.ready) return;
    this.#enableKicks();
    native.fence();
  }

  /** With EVENT_IDX, avail_event tells the driver which avail idx should kick us next. */
  #enableKicks(): void {
    const used = this.#usedWords as Uint16Array;
    if (this.eventIdx) {
      used[this.#availEventWord()] = this.#nextAvail;
      return;
    }
    const flags = used[USED_FLAGS] as number;
    if ((flags & VIRTQ_USED_F_NO_NOTIFY) !== 0) used[USED_FLAGS] = flags & ~VIRTQ_USED_F_NO_NOTIFY;
  }

  /** §2.7.7.2: signal when used idx passed used_event (EVENT_IDX), else unless NO_INTERRUPT. */
  #notifyIfNeeded(oldUsed: number): boolean {
    const newUsed = this.#nextUsed;
    if (newUsed === oldUsed) return false;
    const avail = this.#avail as Uint16Array;
    const need = this.eventIdx
      ? needEvent(avail[AVAIL_RING + this.#size] as number, newUsed, oldUsed)
      : ((avail[AVAIL_FLAGS] as number) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    if (need) this.#signals.notify();
    return need;
  }

  /** avail_event follows the used ring's `size` 8-byte elements (§2.7.8). */
  #availEventWord(): number {
    return USED_RING + 4 * this.#size;
  }

  /**
   * A ring as le16 words. The driver reads and writes the indices and event fields at
   * any moment, so each access must be one 16-bit load or store: Buffer's
   * readUInt16LE/writeUInt16LE go byte by byte, and a driver could see used idx torn
   * (0x01ff, 0x0100, 0x0200) and break the ring, or we could read avail idx torn and
   * call the driver hostile. A Uint16Array element is a single access.
   */
  #words(ring: Buffer, what: string): Uint16Array {
    if (!HOST_IS_LITTLE_ENDIAN) throw new VirtqueueConfigError('virtio rings are little-endian and this host is not');
    if (ring.byteOffset % 2 !== 0) {
      throw new VirtqueueConfigError(`queue ${this.index}: ${what} ring is not 2-byte aligned in the daemon's mapping`);
    }
    return new Uint16Array(ring.buffer, ring.byteOffset, ring.length >> 1);
  }

  #unmapRings(): void {
    this.#desc = this.#avail = this.#used = this.#usedWords = null;
    this.#generation++;
  }
}

/** vring_need_event: did the index move from `old` to `next` across `event`? (mod 2^16) */
export function needEvent(event: number, next: number, old: number): boolean {
  return ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);
}

function checkAlignment(index: number, a: RingAddresses): void {
  const rules: [string, number, number][] = [['descriptor table', a.desc, 16], ['available ring', a.avail, 2], ['used ring', a.used, 4]];
  for (const [what, addr, align] of rules) {
    if (!Number.isSafeInteger(addr) || addr < 0) throw new VirtqueueConfigError(`queue ${index}: ${what} address ${addr} is not an address`);
    if (addr % align !== 0) throw new VirtqueueConfigError(`queue ${index}: ${what} at 0x${addr.toString(16)} is not ${align}-byte aligned`);
  }
}
