/**
 * The node table: what the guest's nodeids name, and the view's inode numbers (what
 * st_ino the guest sees) by host identity. A node's nodeid is its inode number: the
 * view's own number for the host file, counted up from 2 in the order files are
 * first seen, never derived from host inode numbers, and never given to another
 * host file. So a stale nodeid can only ever name the file it named before, and a
 * FORGET that crosses a new LOOKUP of the same file stays right: lookup counts add
 * up per nodeid on both sides. A node is keyed by its host identity (dev, ino), so
 * the number of nodes can never exceed the number of distinct files in the closure,
 * however the guest looks them up; it holds no fd, only where it was found: its
 * directory and its name there, from which its path below the store directory is
 * built when a host call needs it (the store is immutable, so the path stays valid).
 */
import { InternalInvariantError } from '../fuse/errno';

export type NodeKind = 'dir' | 'reg' | 'lnk';

/** A host file's identity: a number for every (dev, ino) that fits in 53 bits, else a string. */
export type Identity = number | string;

export interface Node {
  /**
   * The guest's name for the node, and also its inode number: the st_ino the guest
   * sees (never the host's). One field for both, since they are always equal.
   */
  readonly nodeid: number;
  /**
   * The directory the node was found in: the root for a store path, none for the root.
   * It may be a node the guest has forgotten since; that is fine, its path still holds.
   * A walked closure holds a node per file: a whole path in each was a third of its memory.
   */
  readonly parent: Node | undefined;
  /** The node's name in `parent` ('' for the root), latin1: one char per byte, so any host name round-trips. */
  readonly name: string;
  /**
   * st_mode as the guest sees it: the file type, and permission bits 0555 or 0444 for
   * files, 0555 for directories, 0777 for symlinks. Type and permissions share one
   * field: a walked closure holds a node per file, and each field costs 8 bytes.
   */
  readonly mode: number;
  /** The host file's (dev, ino) as a key (see identityOf); '' for the root, which has no host counterpart. */
  readonly identity: Identity;
  /**
   * The attributes that differ between store files, kept flat: every other one is
   * canonical (see attrOf in view.ts), so a node costs a few fields, not a second object.
   */
  readonly size: number;
  readonly mtime: number;
  readonly mtimeNsec: number;
  readonly nlink: number;
  nlookup: number;
}

export const ROOT_NODEID = 1;

// File type bits of st_mode (POSIX <sys/stat.h>; the same on every Linux architecture).
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

/** The node's kind, from the type bits of its mode. */
export function kindOfNode(node: Node): NodeKind {
  const type = node.mode & S_IFMT;
  return type === S_IFDIR ? 'dir' : type === S_IFREG ? 'reg' : 'lnk';
}

/** The node's path below the store directory, e.g. `<hash>-name/bin/x`; empty for the root. */
export function relPathOf(node: Node): string {
  const names: string[] = [];
  for (let n = node; n.parent !== undefined; n = n.parent) names.push(n.name);
  return names.reverse().join('/');
}

/**
 * The live nodes by nodeid, and every host file seen by identity. Inode numbers
 * (and so nodeids) are dense and bounded by the closure's file count, so the live
 * nodes sit in an array indexed by nodeid: 8 bytes per file seen, where a Map cost
 * about 28 per live node (a walked closure has a node per file).
 */
export class NodeTable {
  /** Index = nodeid = inode number; undefined where that file has no live node. */
  readonly #live: (Node | undefined)[] = [undefined];
  #liveCount = 1;
  /**
   * Host identity -> its live node, or its inode number while it has none. One map
   * for both, not one per question: a walked closure has an entry per file.
   */
  readonly #byIdentity = new Map<Identity, Node | number>();

  constructor(readonly root: Node) {
    if (root.nodeid !== ROOT_NODEID) throw new InternalInvariantError('the root must be nodeid (and inode) 1');
    this.#live.push(root);
  }

  /** Live nodes, the root included. */
  get size(): number {
    return this.#liveCount;
  }

  /** Host files given an inode number (every one seen). */
  get inodeNumbers(): number {
    return this.#byIdentity.size;
  }

  /** The live node of a nodeid from the guest (any number: out of range is simply unknown). */
  get(nodeid: number): Node | undefined {
    return nodeid < this.#live.length ? this.#live[nodeid] : undefined;
  }

  byIdentity(identity: Identity): Node | undefined {
    const known = this.#byIdentity.get(identity);
    return typeof known === 'object' ? known : undefined;
  }

  /** The view's inode number of a host file, given on first sight. */
  inoOf(identity: Identity): number {
    const known = this.#byIdentity.get(identity);
    if (known === undefined) {
      const ino = this.#live.length;
      // Appended, never assigned past the end: the array stays packed, with no holes.
      this.#live.push(undefined);
      this.#byIdentity.set(identity, ino);
      return ino;
    }
    return typeof known === 'number' ? known : known.nodeid;
  }

  /** Finds the node for a host identity or makes one (nodeid = inode number); either way counts one lookup. */
  lookupOrCreate(identity: Identity, make: (nodeid: number) => Node): Node {
    let node = this.byIdentity(identity);
    if (node === undefined) {
      const ino = this.inoOf(identity);
      node = make(ino);
      if (node.nodeid !== ino || node.identity !== identity) throw new InternalInvariantError('node made with the wrong ids');
      this.#live[ino] = node;
      this.#liveCount++;
      this.#byIdentity.set(identity, node);
    }
    node.nlookup++;
    return node;
  }

  /** Counts one more lookup of a node the guest already knows ("." lookups, the root). */
  ref(node: Node): Node {
    node.nlookup++;
    return node;
  }

  /**
   * Gives back n lookups. The root is never freed. An unknown nodeid is ignored
   * (a FORGET can race a DESTROY). A count below zero means our bookkeeping or
   * the guest's broke: the node is freed anyway and the caller hears about it.
   */
  forget(nodeid: number, n: number): void {
    const node = this.get(nodeid);
    if (node === undefined || nodeid === ROOT_NODEID) return;
    if (n > node.nlookup) {
      this.#free(node);
      throw new InternalInvariantError(`lookup count of node ${nodeid} would go below zero (${node.nlookup} - ${n})`);
    }
    node.nlookup -= n;
    if (node.nlookup === 0) this.#free(node);
  }

  /** Forgets every node but the root (DESTROY, or a new INIT). */
  clear(): void {
    for (const node of this.#live) if (node !== undefined && node.nodeid !== ROOT_NODEID) this.#free(node);
    this.root.nlookup = 0;
  }

  /** The node goes; its host file keeps its inode number, and so its nodeid. */
  #free(node: Node): void {
    this.#live[node.nodeid] = undefined;
    this.#liveCount--;
    this.#byIdentity.set(node.identity, node.nodeid);
  }
}

/** Small indices for the few host devices a store spans, so (dev, ino) fits in one number. */
const deviceIndex = new Map<number, number>();
const MAX_DEVICES = 32; // 5 bits above a 48-bit inode number stays below 2^53

const SMALL = 2 ** 30;

/**
 * The identity key of (dev, ino), injective over three disjoint ranges:
 * - below 2^30: the first device's inode numbers below 2^30 (the common case), a
 *   small integer V8 stores inline;
 * - 2^30 up to 2^53: any of 32 devices with a 48-bit inode number;
 * - otherwise a string.
 * A walked closure holds several keys per file, so their size is its memory.
 */
export function identityFromParts(devMajor: number, devMinor: number, inoHi: number, inoLo: number): Identity {
  // Linux device numbers: 12-bit major, 20-bit minor; one number, no string per call.
  const dev = devMajor * 2 ** 20 + devMinor;
  let index = deviceIndex.get(dev);
  if (index === undefined && deviceIndex.size < MAX_DEVICES) deviceIndex.set(dev, (index = deviceIndex.size));
  if (index === 0 && inoHi === 0 && inoLo < SMALL) return inoLo;
  if (index !== undefined && inoHi < 0x10000) return SMALL + index * 2 ** 48 + inoHi * 2 ** 32 + inoLo;
  return `${devMajor}:${devMinor}:${inoHi}:${inoLo}`;
}

/** The identity key of a statx result. */
export function identityOf(st: { devMajor: number; devMinor: number; inoHi: number; inoLo: number }): Identity {
  return identityFromParts(st.devMajor, st.devMinor, st.inoHi, st.inoLo);
}
