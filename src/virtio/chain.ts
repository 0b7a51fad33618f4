/**
 * Descriptor chains of a split virtqueue (VIRTIO 1.2 §2.7.5): walks a chain from
 * its head through NEXT links and at most one indirect table, validating every
 * descriptor, and returns views of guest memory in chain order.
 *
 * Descriptors that continue one another in guest memory (the next starts where
 * the previous ended, in the same region, on the same side) come back as one
 * view: a 128 KiB READ's 32 page-sized buffers are often partly contiguous, and
 * each view costs an allocation on the hot path and an iovec in the readv.
 *
 * Descriptor layout (16 bytes, little endian):
 *   le64 addr; le32 len; le16 flags; le16 next;
 */
// Node's global Buffer is a getter: the module binding saves a call per use on the request path.
import { Buffer } from 'node:buffer';
import type { ScatterGather } from '../io';
import { ADDRESS_LIMIT, GuestMemory } from './guest-memory';
import { DescriptorChainError, GuestMemoryError, type ChainRule } from './errors';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const DESCRIPTOR_SIZE = 16;

/** used.len is a le32: a chain must not describe more bytes than it can report. */
export const MAX_CHAIN_BYTES = 2 ** 32 - 1;
/** An indirect table is addressed by le16 `next` fields: more entries could never be reached. */
export const MAX_INDIRECT_ENTRIES = 65536;

const HIGH_WORD_LIMIT = ADDRESS_LIMIT / 2 ** 32;

export interface DescriptorChain extends ScatterGather {
  /** Index of the head descriptor: the id that goes into the used ring. */
  readonly head: number;
  readonly readableBytes: number;
  /** Room for the reply: the most the device may report as used length. */
  readonly writableBytes: number;
}

/** Where the walk currently reads descriptors: the ring's table or an indirect table. */
interface Table {
  /** A DataView: one bounds-checked load per field, where Buffer's readers check and assemble bytes. */
  view: DataView;
  entries: number;
  indirect: boolean;
}

/** A descriptor table as walkChain reads it. Made once per ring: a DataView costs a runtime call to build. */
export function descriptorTable(b: Buffer): DataView {
  return new DataView(b.buffer, b.byteOffset, b.length);
}

/**
 * The views of one side (readable or writable) of a chain, in order. A range
 * that continues the pending one in the same mapping extends it; the view is made
 * when the run ends.
 */
class Gather {
  readonly views: Buffer[] = [];
  #mapping: ArrayBuffer | null = null;
  #start = 0;
  #end = 0;

  add(memory: GuestMemory, addr: number, len: number, head: number): void {
    if (len === 0) return;
    const r = memory.regionOf(addr, len);
    if (r === undefined) {
      // Unmapped (slices() throws the error) or crossing into the next region (slices() splits it).
      this.done();
      mapBuffer(memory, addr, len, this.views, head);
      return;
    }
    const start = r.mapDelta + (addr - r.guestPhysAddr);
    if (r.mapping === this.#mapping && start === this.#end) {
      this.#end += len;
      return;
    }
    this.done();
    this.#mapping = r.mapping;
    this.#start = start;
    this.#end = start + len;
  }

  /** Ends the pending run; returns every view so far. */
  done(): Buffer[] {
    if (this.#mapping !== null) {
      this.views.push(Buffer.from(this.#mapping, this.#start, this.#end - this.#start));
      this.#mapping = null;
    }
    return this.views;
  }
}

/**
 * Walks the chain starting at `head` of the descriptor table `descTable` (from
 * descriptorTable(), `queueSize` entries). Throws DescriptorChainError naming the
 * broken rule.
 */
export function walkChain(memory: GuestMemory, descTable: DataView, queueSize: number, head: number): DescriptorChain {
  const readable = new Gather();
  const writable = new Gather();
  let table: Table = { view: descTable, entries: queueSize, indirect: false };
  // TTL: a chain visits each descriptor of its table at most once (§2.7.5.2: no
  // chain longer than the queue size); more steps means the links form a loop.
  let ttl = queueSize;
  let index = head;
  let readableBytes = 0;
  let writableBytes = 0;
  let seenWritable = false;
  for (;;) {
    if (index >= table.entries) {
      throw chainError('index-out-of-range', `descriptor index ${index} is outside the ${table.indirect ? 'indirect ' : ''}table of ${table.entries} entries (head ${head})`);
    }
    if (ttl-- === 0) {
      throw chainError('loop', `chain from head ${head} has more than ${table.entries} descriptors: its links form a loop`);
    }
    const off = index * DESCRIPTOR_SIZE;
    const v = table.view;
    const addr = readAddress(v, off, head);
    const len = v.getUint32(off + 8, true);
    const flags = v.getUint16(off + 12, true);
    const next = v.getUint16(off + 14, true);
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      table = enterIndirect(memory, table, addr, len, flags, head);
      ttl = table.entries;
      index = 0;
      continue;
    }
    if (readableBytes + writableBytes + len > MAX_CHAIN_BYTES) {
      throw chainError('length-overflow', `chain from head ${head} describes more than 2^32-1 bytes`);
    }
    if (flags & VIRTQ_DESC_F_WRITE) {
      seenWritable = true;
      writableBytes += len;
      writable.add(memory, addr, len, head);
    } else {
      if (seenWritable) {
        throw chainError('writable-before-readable', `chain from head ${head} has a device-readable descriptor after a device-writable one (§2.7.4.2)`);
      }
      readableBytes += len;
      readable.add(memory, addr, len, head);
    }
    if (!(flags & VIRTQ_DESC_F_NEXT)) return { head, readable: readable.done(), writable: writable.done(), readableBytes, writableBytes };
    index = next;
  }
}

/** Switches the walk to the indirect table a descriptor points at (§2.7.5.3). */
function enterIndirect(memory: GuestMemory, from: Table, addr: number, len: number, flags: number, head: number): Table {
  if (from.indirect) {
    throw chainError('nested-indirect', `chain from head ${head}: an indirect table holds an INDIRECT descriptor (§2.7.5.3.1: only one table per descriptor)`);
  }
  if (flags & VIRTQ_DESC_F_NEXT) {
    throw chainError('indirect-with-next', `chain from head ${head}: a descriptor sets both INDIRECT and NEXT (§2.7.5.3.1)`);
  }
  if (len === 0 || len % DESCRIPTOR_SIZE !== 0 || len / DESCRIPTOR_SIZE > MAX_INDIRECT_ENTRIES) {
    throw chainError('indirect-length', `chain from head ${head}: indirect table length ${len} is not a nonzero multiple of 16 up to ${MAX_INDIRECT_ENTRIES} entries`);
  }
  let view: Buffer;
  try {
    view = memory.slice(addr, len);
  } catch (e) {
    throw addressError(e, head);
  }
  return { view: descriptorTable(view), entries: len / DESCRIPTOR_SIZE, indirect: true };
}

function mapBuffer(memory: GuestMemory, addr: number, len: number, out: Buffer[], head: number): void {
  try {
    memory.slices(addr, len, out);
  } catch (e) {
    throw addressError(e, head);
  }
}

/** A le64 address as a number; anything at or above 2^53 cannot be guest RAM here. */
function readAddress(v: DataView, off: number, head: number): number {
  const lo = v.getUint32(off, true);
  const hi = v.getUint32(off + 4, true);
  if (hi >= HIGH_WORD_LIMIT) {
    throw chainError('address', `chain from head ${head}: descriptor address 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is beyond 2^53`);
  }
  return hi * 2 ** 32 + lo;
}

function addressError(e: unknown, head: number): unknown {
  if (!(e instanceof GuestMemoryError)) return e;
  return new DescriptorChainError(`chain from head ${head}: ${e.message}`, 'address', { cause: e });
}

function chainError(rule: ChainRule, message: string): DescriptorChainError {
  return new DescriptorChainError(message, rule);
}
