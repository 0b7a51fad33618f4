/**
 * Guest memory: the regions of the frontend's memory table, each mapped once,
 * and the only code that turns guest addresses into bytes.
 *
 * Two address spaces reach us (vhost-user spec, "Memory regions description"):
 * - GPA, guest physical addresses: what descriptors carry;
 * - frontend user addresses (the VMM's virtual addresses): what SET_VRING_ADDR
 *   carries for the rings.
 * Both translate through the same regions. Every translation is bounds-checked
 * and returns a Buffer *view* of the mapping, never a copy.
 *
 * Splitting: slice() refuses a range that crosses a region's end (rings must lie
 * inside one region). slices() is for descriptor buffers: it splits a range
 * across regions that are contiguous in GPA, as a driver may legally place a
 * buffer across such a boundary; a gap between regions is still an error.
 *
 * Addresses are plain numbers on the hot path. Everything that enters (from the
 * u64 fields of the wire format) is checked to be below 2^53 first, so the
 * arithmetic here is exact.
 */
import { Buffer } from 'node:buffer';
import * as native from '../native';
import { GuestMemoryError, MemoryTableError } from './errors';

/** 2^53: first integer a double cannot represent exactly; bounds every address. */
export const ADDRESS_LIMIT = 2 ** 53;

/** One region as the memory table describes it (vhost-user "VhostUserMemoryRegion"). */
export interface MemoryRegionDescriptor {
  readonly guestPhysAddr: number;
  readonly size: number;
  /** Where the frontend has this region mapped in its own address space. */
  readonly userAddr: number;
  /** Offset of the region inside the fd. */
  readonly mmapOffset: number;
}

export interface GuestMemoryRegion extends MemoryRegionDescriptor {
  /** The fd the region was mapped from (owned here: closed on remove/close). */
  readonly fd: number;
  readonly mapping: ArrayBuffer;
  /** Where the region starts inside `mapping` (mmap offsets are page-aligned, region offsets need not be). */
  readonly mapDelta: number;
}

export interface GuestMemoryOptions {
  /** Most regions at once (GET_MAX_MEM_SLOTS). */
  maxRegions?: number;
}

export const DEFAULT_MAX_REGIONS = 32;

export class GuestMemory {
  readonly maxRegions: number;
  #regions: GuestMemoryRegion[] = [];
  /** The region that answered last: most lookups hit the same one. */
  #lastHit: GuestMemoryRegion | undefined;

  constructor(opts: GuestMemoryOptions = {}) {
    this.maxRegions = opts.maxRegions ?? DEFAULT_MAX_REGIONS;
  }

  get regions(): readonly GuestMemoryRegion[] {
    return this.#regions;
  }

  /** Maps `fd` and adds the region. Takes ownership of fd: it is closed on every failure path too. */
  add(desc: MemoryRegionDescriptor, fd: number): GuestMemoryRegion {
    try {
      this.#checkAddable(desc, this.#regions);
      const region = mapRegion(desc, fd);
      this.#regions.push(region);
      return region;
    } catch (e) {
      native.closeQuietly(fd);
      throw e;
    }
  }

  /**
   * Replaces the whole table (SET_MEM_TABLE). All or nothing: the new table is
   * validated and mapped before the old one is released. Takes ownership of every fd.
   */
  replace(entries: readonly { desc: MemoryRegionDescriptor; fd: number }[]): void {
    const mapped: GuestMemoryRegion[] = [];
    try {
      const checked: MemoryRegionDescriptor[] = [];
      for (const { desc } of entries) {
        this.#checkAddable(desc, checked);
        checked.push(desc);
      }
      for (const { desc, fd } of entries) mapped.push(mapRegion(desc, fd));
    } catch (e) {
      for (const r of mapped) releaseRegion(r);
      for (const { fd } of entries.slice(mapped.length)) native.closeQuietly(fd);
      throw e;
    }
    this.close();
    this.#regions = mapped;
  }

  /** Removes the region with this GPA and size (REM_MEM_REG); false if there is none. */
  remove(guestPhysAddr: number, size: number): boolean {
    const i = this.#regions.findIndex((r) => r.guestPhysAddr === guestPhysAddr && r.size === size);
    if (i < 0) return false;
    const [region] = this.#regions.splice(i, 1);
    this.#lastHit = undefined;
    releaseRegion(region);
    return true;
  }

  /** Unmaps every region (their views read as empty from now on) and closes their fds. */
  close(): void {
    const old = this.#regions;
    this.#regions = [];
    this.#lastHit = undefined;
    for (const r of old) releaseRegion(r);
  }

  /** The region holding GPA `addr`, if any. */
  findRegion(addr: number): GuestMemoryRegion | undefined {
    return this.#find(addr);
  }

  /** True when [addr, addr+len) lies inside one region. */
  checkRange(addr: number, len: number): boolean {
    const r = this.#find(addr);
    return r !== undefined && len >= 0 && addr + len <= r.guestPhysAddr + r.size;
  }

  /**
   * The region holding all of [gpa, gpa+len), or undefined when none does (the
   * range is unmapped or crosses a region's end). Never throws: for callers that
   * fall back to slices() for its error or its split.
   */
  regionOf(gpa: number, len: number): GuestMemoryRegion | undefined {
    const r = this.#find(gpa);
    // Compared by subtraction: every term is below 2^53, so it is exact where a sum might round.
    return r !== undefined && len <= r.guestPhysAddr + r.size - gpa ? r : undefined;
  }

  /** A view of [gpa, gpa+len) that must lie inside one region. */
  slice(gpa: number, len: number): Buffer {
    checkArgs(gpa, len);
    const r = this.#find(gpa);
    return viewOf(r, r?.guestPhysAddr ?? 0, 'GPA', gpa, len);
  }

  /** A view of [va, va+len) in the frontend's address space (ring addresses of SET_VRING_ADDR). */
  sliceFrontend(va: number, len: number): Buffer {
    checkArgs(va, len);
    const r = this.#regions.find((x) => va >= x.userAddr && va < x.userAddr + x.size);
    return viewOf(r, r?.userAddr ?? 0, 'frontend address', va, len);
  }

  /**
   * Views covering [gpa, gpa+len), one per region crossed, appended to `out`.
   * Regions must be contiguous in GPA across the range. Zero length appends nothing.
   */
  slices(gpa: number, len: number, out: Buffer[]): void {
    checkArgs(gpa, len);
    let addr = gpa;
    let left = len;
    while (left > 0) {
      const r = this.#find(addr);
      if (r === undefined) throw unmapped('GPA', gpa, len, addr);
      const n = Math.min(left, r.guestPhysAddr + r.size - addr);
      out.push(Buffer.from(r.mapping, r.mapDelta + (addr - r.guestPhysAddr), n));
      addr += n;
      left -= n;
    }
  }

  /*
   * GPAs only: the frontend's addresses are looked up once per ring setup, and keeping
   * them out of this function keeps its property loads fixed (V8 would otherwise
   * compile them for whichever field it saw first and recompile at the other).
   */
  #find(addr: number): GuestMemoryRegion | undefined {
    const hit = this.#lastHit;
    if (hit !== undefined && addr >= hit.guestPhysAddr && addr < hit.guestPhysAddr + hit.size) return hit;
    for (const r of this.#regions) {
      if (addr >= r.guestPhysAddr && addr < r.guestPhysAddr + r.size) {
        this.#lastHit = r;
        return r;
      }
    }
    return undefined;
  }

  #checkAddable(desc: MemoryRegionDescriptor, existing: readonly MemoryRegionDescriptor[]): void {
    checkDescriptor(desc);
    if (existing.length >= this.maxRegions) {
      throw new MemoryTableError(`no free memory slot: ${existing.length} of ${this.maxRegions} in use`);
    }
    for (const r of existing) {
      if (overlaps(desc.guestPhysAddr, desc.size, r.guestPhysAddr, r.size)) {
        throw new MemoryTableError(`region at GPA 0x${hex(desc.guestPhysAddr)}+0x${hex(desc.size)} overlaps region at 0x${hex(r.guestPhysAddr)}+0x${hex(r.size)}`);
      }
      if (overlaps(desc.userAddr, desc.size, r.userAddr, r.size)) {
        throw new MemoryTableError(`region at frontend address 0x${hex(desc.userAddr)}+0x${hex(desc.size)} overlaps region at 0x${hex(r.userAddr)}+0x${hex(r.size)}`);
      }
    }
  }
}

/** Rejects zero-sized regions and any whose end would pass 2^53 (which covers u64 wrap-around). */
export function checkDescriptor(desc: MemoryRegionDescriptor): void {
  const { guestPhysAddr, size, userAddr, mmapOffset } = desc;
  for (const [name, v] of [['guest address', guestPhysAddr], ['size', size], ['frontend address', userAddr], ['mmap offset', mmapOffset]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new MemoryTableError(`region ${name} ${v} is not an integer in [0, 2^53)`);
  }
  if (size === 0) throw new MemoryTableError(`region at GPA 0x${hex(guestPhysAddr)} has size 0`);
  if (guestPhysAddr + size > ADDRESS_LIMIT || userAddr + size > ADDRESS_LIMIT || mmapOffset + size > ADDRESS_LIMIT) {
    throw new MemoryTableError(`region at GPA 0x${hex(guestPhysAddr)}+0x${hex(size)} wraps or ends beyond 2^53`);
  }
}

function mapRegion(desc: MemoryRegionDescriptor, fd: number): GuestMemoryRegion {
  // mmap(2) wants a page-aligned file offset: map from the page below and remember the delta.
  const mapDelta = desc.mmapOffset % native.PAGE_SIZE;
  const mapping = native.mmap(fd, desc.size + mapDelta, desc.mmapOffset - mapDelta, { shared: true, writable: true });
  return { ...pick(desc), fd, mapping, mapDelta };
}

function releaseRegion(r: GuestMemoryRegion): void {
  try {
    native.munmap(r.mapping);
  } catch {
    /* already unmapped: nothing left to release */
  }
  native.closeQuietly(r.fd);
}

function pick(d: MemoryRegionDescriptor): MemoryRegionDescriptor {
  return { guestPhysAddr: d.guestPhysAddr, size: d.size, userAddr: d.userAddr, mmapOffset: d.mmapOffset };
}

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

function checkArgs(addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0 || addr + len > ADDRESS_LIMIT) {
    throw new GuestMemoryError(`address 0x${hex(addr)}+${len} is outside [0, 2^53)`, addr, len);
  }
}

function unmapped(space: string, addr: number, len: number, at: number): GuestMemoryError {
  return new GuestMemoryError(`${space} range 0x${hex(addr)}+${len} is not mapped (no region holds 0x${hex(at)})`, addr, len);
}

/** A view of [addr, addr+len) in region r, whose range in this address space starts at `base`. */
function viewOf(r: GuestMemoryRegion | undefined, base: number, space: string, addr: number, len: number): Buffer {
  if (r === undefined) throw unmapped(space, addr, len, addr);
  const end = base + r.size;
  if (addr + len > end) throw new GuestMemoryError(`${space} range 0x${hex(addr)}+${len} crosses the end of its region (0x${hex(end)})`, addr, len);
  return Buffer.from(r.mapping, r.mapDelta + (addr - base), len);
}

function hex(n: number): string {
  return Number.isFinite(n) && n >= 0 ? n.toString(16) : String(n);
}
