/**
 * The node table (what the guest's nodeids name) and the identity map (what st_ino
 * the guest sees). Nodeids come from a counter and are never reused, so a stale
 * nodeid can never alias a new node; they are never derived from host inode
 * numbers. A node is keyed by its host identity (dev, ino), so the number of
 * nodes can never exceed the number of distinct files in the closure, however
 * the guest looks them up; it holds no fd, only its path relative to the store
 * directory (the store is immutable, so the path stays valid).
 */
import type { Attr } from '../fuse/abi';
import { InternalInvariantError } from '../fuse/errno';

export type NodeKind = 'dir' | 'reg' | 'lnk';

export interface Node {
  readonly nodeid: number;
  /** Path below the store directory, e.g. `<hash>-name/bin/x`; empty for the root. */
  readonly relPath: Buffer;
  readonly kind: NodeKind;
  /** "devMajor:devMinor:inoHi:inoLo"; '' for the root, which has no host counterpart. */
  readonly identity: string;
  /** Canonical attributes, computed once: nothing under the store changes. */
  readonly attr: Attr;
  nlookup: number;
}

export const ROOT_NODEID = 1;

export class NodeTable {
  readonly #nodes = new Map<number, Node>();
  readonly #byIdentity = new Map<string, number>();
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

  byIdentity(identity: string): Node | undefined {
    const id = this.#byIdentity.get(identity);
    return id === undefined ? undefined : this.#nodes.get(id);
  }

  /** Finds the node for a host identity or makes one; either way counts one lookup. */
  lookupOrCreate(identity: string, make: (nodeid: number) => Omit<Node, 'nlookup'>): Node {
    let node = this.byIdentity(identity);
    if (node === undefined) {
      const nodeid = this.#nextNodeid++;
      node = { ...make(nodeid), nlookup: 0 };
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
  readonly #map = new Map<string, number>();
  #next = 2;

  get size(): number {
    return this.#map.size;
  }

  of(identity: string): number {
    let ino = this.#map.get(identity);
    if (ino === undefined) {
      ino = this.#next++;
      this.#map.set(identity, ino);
    }
    return ino;
  }
}

/** The identity key of a statx result. */
export function identityOf(st: { devMajor: number; devMinor: number; inoHi: number; inoLo: number }): string {
  return `${st.devMajor}:${st.devMinor}:${st.inoHi}:${st.inoLo}`;
}
