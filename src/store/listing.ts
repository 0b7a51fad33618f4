/**
 * A directory listing as the view caches it between READDIR requests. A guest walk
 * lists every directory once and the cache keeps the last few, so a listing lives
 * across many requests: long enough for V8 to promote it to old space, where it
 * becomes garbage once evicted. Kept as an object per entry that was ~250 bytes of
 * promoted garbage per walked entry; kept as a few flat arrays it is a handful of
 * objects per directory, and the entries handed to READDIR are made on the fly and
 * die young.
 */
import type { DirEntry } from '../fuse/filesystem';
import * as native from '../native';
import type { Identity } from './nodes';

const c = native.constants;
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

/**
 * A listing entry as the view uses it: the host identity from getdents (d_ino on the
 * directory's device) rides along, so READDIRPLUS finds a known node without a statx.
 * "." and ".." have none.
 */
export type ListedEntry = DirEntry & { identity?: Identity };

/** A named entry before it gets its cookie. */
export type NamedEntry = Omit<ListedEntry, 'off'>;

export class Listing {
  /** Every name back to back (".", "..", then the named entries), in listing order. */
  readonly #names: Buffer;
  /** Where entry i's name ends in #names; it starts where entry i - 1's ends. */
  readonly #ends: Uint32Array;
  readonly #types: Uint8Array;
  readonly #inos: Float64Array;
  readonly #identities: (Identity | undefined)[];

  /** ".", "..", then `named` in the order given; an entry's cookie is its index + 1. */
  constructor(selfIno: number, parentIno: number, named: readonly NamedEntry[]) {
    const all: NamedEntry[] = [{ name: DOT, ino: selfIno, type: c.DT_DIR }, { name: DOTDOT, ino: parentIno, type: c.DT_DIR }, ...named];
    // Not from Buffer's shared pool: a small listing would keep a whole 8 KiB pool slab alive.
    this.#names = Buffer.allocUnsafeSlow(all.reduce((n, e) => n + e.name.length, 0));
    this.#ends = new Uint32Array(all.length);
    this.#types = new Uint8Array(all.length);
    this.#inos = new Float64Array(all.length);
    this.#identities = new Array<Identity | undefined>(all.length);
    let end = 0;
    all.forEach((e, i) => {
      end += e.name.copy(this.#names, end);
      this.#ends[i] = end;
      this.#types[i] = e.type;
      this.#inos[i] = e.ino;
      this.#identities[i] = e.identity;
    });
  }

  /** Entries, "." and ".." included. */
  get length(): number {
    return this.#ends.length;
  }

  /** Entry i (0 <= i < length), made now; its name is a view of the listing's bytes. */
  entry(i: number): ListedEntry {
    const name = this.#names.subarray(i === 0 ? 0 : this.#ends[i - 1], this.#ends[i]);
    return { name, ino: this.#inos[i], type: this.#types[i], off: i + 1, identity: this.#identities[i] };
  }

  /** Named entries that are directories (a directory's nlink is 2 plus these). */
  subdirectories(): number {
    let n = 0;
    for (let i = 2; i < this.#types.length; i++) if (this.#types[i] === c.DT_DIR) n++;
    return n;
  }
}
