/**
 * Open handles (fh): their own counter, separate from nodeids, and a cap. A file
 * handle holds one host fd, so the cap bounds the fds a guest can make us hold;
 * reaching it is EMFILE for the guest, never an exhausted daemon.
 */
import { Errno, FsError } from '../fuse/errno';

export class HandleTable<T> {
  readonly #handles = new Map<number, T>();
  /** fh 0 is left unused: with zero-message opendir the guest sends fh 0 meaning "none". */
  #next = 1;

  constructor(readonly cap: number) {
    if (!Number.isSafeInteger(cap) || cap < 1) throw new RangeError(`handle cap must be a positive integer, got ${cap}`);
  }

  get size(): number {
    return this.#handles.size;
  }

  /** Stores v under a new fh, or throws EMFILE when the table is full. */
  add(v: T): number {
    if (this.#handles.size >= this.cap) throw new FsError(Errno.EMFILE, `open handle cap (${this.cap}) reached`);
    const fh = this.#next++;
    this.#handles.set(fh, v);
    return fh;
  }

  get(fh: number): T | undefined {
    return this.#handles.get(fh);
  }

  remove(fh: number): T | undefined {
    const v = this.#handles.get(fh);
    this.#handles.delete(fh);
    return v;
  }

  values(): IterableIterator<T> {
    return this.#handles.values();
  }

  clear(): void {
    this.#handles.clear();
  }
}

/**
 * A small LRU of values that own a resource (directory fds, files read by nodeid): the least recently
 * used is handed to `evict` when a new one would exceed the capacity.
 */
export class Lru<K, V> {
  readonly #map = new Map<K, V>();
  /** The most recently used key, which a hit need not move. */
  #newest: K | undefined;

  constructor(
    readonly capacity: number,
    private readonly evict: (v: V) => void,
  ) {}

  get size(): number {
    return this.#map.size;
  }

  get(k: K): V | undefined {
    const v = this.#map.get(k);
    if (v !== undefined && k !== this.#newest) {
      // Map keeps insertion order: re-inserting makes this the most recent. Each re-insert
      // leaves a deleted slot that a later rehash copies the table to clear; hits come in
      // runs on one key (the entries of one directory), so the first of a run moves it.
      this.#map.delete(k);
      this.#map.set(k, v);
      this.#newest = k;
    }
    return v;
  }

  set(k: K, v: V): void {
    const old = this.#map.get(k);
    if (old !== undefined) {
      this.#map.delete(k);
      if (old !== v) this.evict(old);
    }
    this.#map.set(k, v);
    this.#newest = k;
    while (this.#map.size > this.capacity) {
      const [oldestKey, oldest] = this.#map.entries().next().value as [K, V];
      this.#map.delete(oldestKey);
      this.evict(oldest);
    }
  }

  /** Drops k, handing its value to `evict`. */
  delete(k: K): void {
    const v = this.#map.get(k);
    if (v === undefined) return;
    this.#map.delete(k);
    if (k === this.#newest) this.#newest = undefined;
    this.evict(v);
  }

  clear(): void {
    for (const v of this.#map.values()) this.evict(v);
    this.#map.clear();
    this.#newest = undefined;
  }
}
