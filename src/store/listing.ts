/**
 * A directory listing as the view caches it between READDIR requests. A guest walk
 * lists every directory once and the cache keeps the last few, so a listing lives
 * across many requests: long enough for V8 to promote it to old space, where it
 * becomes garbage once evicted. What it costs there is what a walk leaves behind, so
 * a listing is a handful of objects whatever its size: an object per entry was ~250
 * bytes per walked entry, and even a typed array per column was ~900 bytes per
 * directory (each typed array carries its own buffer object). The entries handed to
 * READDIR are made on the fly and die young.
 */
import { Buffer } from 'node:buffer';
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
export type NamedEntry = Omit<ListedEntry, 'off'> & { identity: Identity };

/** #numbers holds, per named entry: where its name ends in #names, its d_type, its view inode number. */
const NAME_END = 0;
const TYPE = 1;
const INO = 2;
const STRIDE = 3;

export class Listing {
  readonly #selfIno: number;
  readonly #parentIno: number;
  /** The named entries' names back to back. */
  readonly #names: Buffer;
  readonly #numbers: number[];
  readonly #identities: Identity[];

  /** ".", "..", then `named` in the order given; an entry's cookie is its index + 1. */
  constructor(selfIno: number, parentIno: number, named: readonly NamedEntry[]) {
    this.#selfIno = selfIno;
    this.#parentIno = parentIno;
    // From Buffer's shared pool when small: one object, no buffer of its own.
    this.#names = Buffer.allocUnsafe(named.reduce((n, e) => n + e.name.length, 0));
    // Arrays of exactly their size (push would leave spare capacity): a listing may be long-lived.
    this.#numbers = new Array<number>(named.length * STRIDE);
    this.#identities = named.map((e) => e.identity);
    let end = 0;
    named.forEach((e, i) => {
      end += e.name.copy(this.#names, end);
      this.#numbers[i * STRIDE + NAME_END] = end;
      this.#numbers[i * STRIDE + TYPE] = e.type;
      this.#numbers[i * STRIDE + INO] = e.ino;
    });
  }

  /** Entries, "." and ".." included. */
  get length(): number {
    return 2 + this.#identities.length;
  }

  /** Entry i (0 <= i < length), made now; a name is a view of the listing's bytes. */
  entry(i: number): ListedEntry {
    // Every entry gets the same fields, identity too: one object shape for the READDIR sink.
    if (i === 0) return { name: DOT, ino: this.#selfIno, type: c.DT_DIR, off: 1, identity: undefined };
    if (i === 1) return { name: DOTDOT, ino: this.#parentIno, type: c.DT_DIR, off: 2, identity: undefined };
    const at = (i - 2) * STRIDE;
    const start = i === 2 ? 0 : this.#numbers[at - STRIDE + NAME_END];
    const name = this.#names.subarray(start, this.#numbers[at + NAME_END]);
    return { name, ino: this.#numbers[at + INO], type: this.#numbers[at + TYPE], off: i + 1, identity: this.#identities[i - 2] };
  }

  /** Named entries that are directories (a directory's nlink is 2 plus these). */
  subdirectories(): number {
    let n = 0;
    for (let at = 0; at < this.#numbers.length; at += STRIDE) if (this.#numbers[at + TYPE] === c.DT_DIR) n++;
    return n;
  }
}
