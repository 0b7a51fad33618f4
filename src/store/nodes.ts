/**
 * The node table (what the guest's nodeids name) and the identity map (what st_ino
 * the guest sees). Nodeids come from a counter and are never reused, so a stale
 * nodeid can never alias a new node; they are never derived from host inode
 * numbers. A node is keyed by its host identity (dev, ino), so the number of
 * nodes can never exceed the number of distinct files in the closure, however
 * the guest looks them up; it holds no fd, only where it was found: its directory
 * and its name there, from which its path below the store directory is built when
 * a host call needs it (the store is immutable, so the path stays valid).
 */
import { InternalInvariantError } from '../fuse/errno';

export type NodeKind = 'dir' | 'reg' | 'lnk';

/** A host file's identity: a number for every (dev, ino) that fits in 53 bits, else a string. */
export type Identity = number | string;

export interface Node {
  readonly nodeid: number;
  /**
   * The directory the node was found in: the root for a store path, none for the root.
   * It may be a node the guest has forgotten since; that is fine, its path still holds.
   * A walked closure holds a node per file: a whole path in each was a third of its memory.
   */
  readonly parent: Node | undefined;
  /** The node's name in `parent` ('' for the root), latin1: one char per byte, so any host name round-trips. */
  readonly name: string;
  readonly kind: NodeKind;
  /** The host file's (dev, ino) as a key (see identityOf); '' for the root, which has no host counterpart. */
  readonly identity: Identity;
  /** The view's inode number: the st_ino the guest sees (never the host's). */
  readonly ino: number;
  /**
   * The attributes that differ between store files, kept flat: every other one is
   * canonical (see attrOf in view.ts), so a node costs a few fields, not a second object.
   */
  readonly size: number;
  readonly mtime: number;
  readonly mtimeNsec: number;
  /** Permission bits as the guest sees them: 0555 or 0444 for files, 0555 directories, 0777 symlinks. */
  readonly perm: number;
  readonly nlink: number;
  nlookup: number;
}

export const ROOT_NODEID = 1;

/** The node's path below the store directory, e.g. `<hash>-name/bin/x`; empty for the root. */
export function relPathOf(node: Node): string {
  const names: string[] = [];
  for (let n = node; n.parent !== undefined; n = n.parent) names.push(n.name);
  return names.reverse().join('/');
}

export class NodeTable {
  readonly #nodes = new Map<number, Node>();
  readonly #byIdentity = new Map<Identity, number>();
  #nextNodeid = ROOT_NODEID + 1;

  constructor(readonly root: Node) {
    this.#nodes.set(ROOT_NODEID, root);
  }

  get size(): number {
    return this.#nodes.size;
  }

  get(nodeid: number): Node | undefined {
    return this.#nodes.get(nodeid);
  }

  byIdentity(identity: Identity): Node | undefined {
    const id = this.#byIdentity.get(identity);
    return id === undefined ? undefined : this.#nodes.get(id);
  }

  /** Finds the node for a host identity or makes one; either way counts one lookup. */
  lookupOrCreate(identity: Identity, make: (nodeid: number) => Node): Node {
    let node = this.byIdentity(identity);
    if (node === undefined) {
      const nodeid = this.#nextNodeid++;
      node = make(nodeid);
      if (node.nodeid !== nodeid || node.identity !== identity) throw new InternalInvariantError('node made with the wrong id');
      this.#nodes.set(nodeid, node);
      this.#byIdentity.set(identity, nodeid);
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
    const node = this.#nodes.get(nodeid);
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
    for (const node of this.#nodes.values()) if (node.nodeid !== ROOT_NODEID) this.#free(node);
    this.root.nlookup = 0;
  }

  #free(node: Node): void {
    this.#nodes.delete(node.nodeid);
    this.#byIdentity.delete(node.identity);
  }
}

/**
 * Host identity -> the view's inode number, for the daemon's whole life: the same
 * host file always shows the same st_ino, and the number reveals nothing about the
 * host (it counts up from 2 in the order files are first seen; 1 is the root).
 */
export class InodeNumbers {
  readonly #map = new Map<Identity, number>();
  #next = 2;

  get size(): number {
    return this.#map.size;
  }

  of(identity: Identity): number {
    let ino = this.#map.get(identity);
    if (ino === undefined) {
      ino = this.#next++;
      this.#map.set(identity, ino);
    }
    return ino;
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
