/**
 * The name cache: what a name in a directory resolved to, as (directory nodeid,
 * name bytes) -> inode number. A view's nodeids are its inode numbers, fixed per
 * host file for the daemon's life, and the store never changes, so an answer stays
 * right; a guest with short entry timeouts (cache=auto revalidates every second)
 * asks the same names again and again.
 *
 * A LOOKUP's name arrives as bytes in guest memory. The cache is keyed by a hash of
 * the directory and those bytes, so a hit makes no string: a key built as a string
 * (decode, concatenate, hash, compare) was about 7% of the daemon's CPU for LOOKUPs
 * at 16 per kick. Each slot keeps its directory and name and a hit checks both, so
 * two entries whose hashes collide read as a miss, never as each other.
 */
import { Lru } from './handles';

interface Slot {
  readonly dir: number;
  /** The name as latin1: one char per byte. */
  readonly name: string;
  readonly ino: number;
}

/** FNV-1a over the directory's nodeid and the name's bytes, kept in V8's small-integer range. */
export function nameHash(dir: number, name: Buffer): number {
  let h = Math.imul(0x811c9dc5 ^ (dir & 0xffff), 0x01000193) ^ (dir >>> 16);
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name[i], 0x01000193);
  return h & 0x3fffffff;
}

function sameBytes(latin1: string, b: Buffer): boolean {
  if (latin1.length !== b.length) return false;
  for (let i = 0; i < b.length; i++) if (latin1.charCodeAt(i) !== b[i]) return false;
  return true;
}

export class NameCache {
  readonly #slots: Lru<number, Slot>;

  constructor(capacity: number) {
    this.#slots = new Lru(capacity, () => {});
  }

  get size(): number {
    return this.#slots.size;
  }

  /** The inode number `name` in directory `dir` resolved to, if cached. */
  get(dir: number, name: Buffer): number | undefined {
    const slot = this.#slots.get(nameHash(dir, name));
    return slot !== undefined && slot.dir === dir && sameBytes(slot.name, name) ? slot.ino : undefined;
  }

  /** Records an answer; a slot with the same hash (this entry or a collision) is replaced. */
  set(dir: number, name: Buffer, latin1: string, ino: number): void {
    this.#slots.set(nameHash(dir, name), { dir, name: latin1, ino });
  }

  clear(): void {
    this.#slots.clear();
  }
}
