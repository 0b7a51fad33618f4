/**
 * Bookkeeping of the virtio-fs DAX window (shared memory region shmid 0): which
 * file range is mapped at which window offset. The frontend refuses overlapping
 * maps and unmaps that do not match one earlier map exactly, so every unmap we
 * send must come from this table.
 */

export interface WindowMapping {
  /** Offset in the window (shm_offset). */
  readonly moffset: number;
  /** Bytes actually mapped: whole pages, never past the page holding the file's end. */
  readonly len: number;
  readonly nodeid: number;
  /** Offset in the file (fd_offset). */
  readonly foffset: number;
}

export class DaxWindow {
  /** Sorted by moffset; mappings never overlap. */
  #mappings: WindowMapping[] = [];

  constructor(readonly size: number) {}

  get mappings(): readonly WindowMapping[] {
    return this.#mappings;
  }

  /** True when [moffset, moffset+len) lies inside the window (no wrap-around). */
  contains(moffset: number, len: number): boolean {
    return Number.isSafeInteger(moffset) && Number.isSafeInteger(len) && moffset >= 0 && len > 0 && moffset + len <= this.size;
  }

  /** Mappings that share at least one byte with [moffset, moffset+len). */
  overlapping(moffset: number, len: number): WindowMapping[] {
    const end = moffset + len;
    return this.#mappings.filter((m) => m.moffset < end && moffset < m.moffset + m.len);
  }

  /** Mappings lying wholly inside [moffset, moffset+len), and whether some other one straddles its edge. */
  within(moffset: number, len: number): { inside: WindowMapping[]; straddling: boolean } {
    const end = moffset + len;
    const hit = this.overlapping(moffset, len);
    const inside = hit.filter((m) => m.moffset >= moffset && m.moffset + m.len <= end);
    return { inside, straddling: inside.length !== hit.length };
  }

  add(m: WindowMapping): void {
    if (!this.contains(m.moffset, m.len)) throw new Error(`internal: mapping outside the window at ${m.moffset}+${m.len}`);
    if (this.overlapping(m.moffset, m.len).length > 0) throw new Error(`internal: overlapping mapping at ${m.moffset}`);
    const at = this.#mappings.findIndex((x) => x.moffset > m.moffset);
    if (at < 0) this.#mappings.push(m);
    else this.#mappings.splice(at, 0, m);
  }

  remove(m: WindowMapping): void {
    const at = this.#mappings.indexOf(m);
    if (at < 0) throw new Error(`internal: unknown mapping at ${m.moffset}`);
    this.#mappings.splice(at, 1);
  }

  /** Forgets every mapping (the frontend drops them itself on reset or disconnect). */
  clear(): WindowMapping[] {
    const all = this.#mappings;
    this.#mappings = [];
    return all;
  }
}
