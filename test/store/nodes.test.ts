/** The node table: nodeid = inode number, given once per host file for the daemon's life, one entry per host file. */
import { kindOfNode, NodeTable, ROOT_NODEID, relPathOf, S_IFDIR, S_IFLNK, S_IFREG, type Identity, type Node } from '../../src/store/nodes';

function node(nodeid: number, identity: Identity, parent: Node | undefined, name: string): Node {
  return { nodeid, identity, parent, name, nlookup: 0, mode: parent ? S_IFREG | 0o444 : S_IFDIR | 0o555, size: 0, mtime: 1, mtimeNsec: 0, nlink: 1 };
}

function table() {
  const root = node(ROOT_NODEID, '', undefined, '');
  return { root, nodes: new NodeTable(root) };
}

describe('NodeTable', () => {
  test('a freed node\'s host file keeps its inode number, and its next node gets the same nodeid', () => {
    const { root, nodes } = table();
    const first = nodes.lookupOrCreate(42, (nodeid) => node(nodeid, 42, root, 'f'));
    expect(first.nodeid).toBe(2);
    expect(nodes.lookupOrCreate(42, () => { throw new Error('made twice'); })).toBe(first);
    nodes.forget(first.nodeid, 2);
    expect(nodes.get(first.nodeid)).toBeUndefined();
    expect(nodes.byIdentity(42)).toBeUndefined();
    expect(nodes.inoOf(42)).toBe(2);
    const again = nodes.lookupOrCreate(42, (nodeid) => node(nodeid, 42, root, 'f'));
    expect(again).not.toBe(first);
    expect(again.nodeid).toBe(2);
    expect([nodes.size, nodes.inodeNumbers]).toEqual([2, 1]);
  });

  test('a nodeid never names another host file, however lookups and forgets interleave', () => {
    const { root, nodes } = table();
    const fileOf = new Map<number, Identity>();
    for (let round = 0; round < 50; round++) {
      for (const id of [round % 7, 100 + (round % 3), 200 + round]) {
        const n = nodes.lookupOrCreate(id, (nodeid) => node(nodeid, id, root, String(id)));
        expect(fileOf.get(n.nodeid) ?? id).toBe(id);
        fileOf.set(n.nodeid, id);
        if (round % 2 === 0) nodes.forget(n.nodeid, n.nlookup);
      }
    }
    expect(nodes.inodeNumbers).toBe(fileOf.size);
  });

  test('a FORGET that crosses a new LOOKUP of the same file keeps the counts right', () => {
    const { root, nodes } = table();
    const make = (nodeid: number) => node(nodeid, 9, root, 'x');
    const a = nodes.lookupOrCreate(9, make);
    nodes.lookupOrCreate(9, make); // the guest holds 2
    nodes.lookupOrCreate(9, make); // its new LOOKUP is served before the FORGET of the old inode
    nodes.forget(a.nodeid, 2);
    expect(nodes.get(a.nodeid)?.nlookup).toBe(1);
    nodes.forget(a.nodeid, 1);
    expect(nodes.get(a.nodeid)).toBeUndefined();
  });

  test('nodeids the table never gave are unknown, however large', () => {
    const { nodes } = table();
    for (const id of [0, 2, 3, 2 ** 40, Number.MAX_SAFE_INTEGER, Infinity]) expect(nodes.get(id)).toBeUndefined();
    expect(() => nodes.forget(2 ** 40, 1)).not.toThrow();
  });

  test('inode numbers count up in order of first sight, listed or looked up, either identity kind', () => {
    const { root, nodes } = table();
    expect(nodes.inoOf('8:1:1:2')).toBe(2);
    expect(nodes.inoOf(7)).toBe(3);
    const n = nodes.lookupOrCreate(7, (nodeid) => node(nodeid, 7, root, 'x'));
    expect(n.nodeid).toBe(3);
    expect(nodes.inoOf(7)).toBe(3);
    expect(nodes.inoOf('8:1:1:2')).toBe(2);
    expect(nodes.inodeNumbers).toBe(2);
  });

  test('clear frees every node but the root and keeps the inode numbers', () => {
    const { root, nodes } = table();
    for (const id of [10, 11]) nodes.lookupOrCreate(id, (nodeid) => node(nodeid, id, root, String(id)));
    nodes.clear();
    expect(nodes.size).toBe(1);
    expect(nodes.get(ROOT_NODEID)).toBe(root);
    expect([nodes.inoOf(10), nodes.inoOf(11)]).toEqual([2, 3]);
  });

  test('a node made with other ids than it was given is refused', () => {
    const { root, nodes } = table();
    expect(() => nodes.lookupOrCreate(5, (nodeid) => node(nodeid + 1, 5, root, 'bad'))).toThrow('wrong ids');
  });
});

describe('relPathOf', () => {
  test('joins the names from the store path down; the root is empty', () => {
    const { root } = table();
    const top = node(2, 1, root, 'abc-pkg');
    const odd = node(3, 2, top, 'new\nline\xff');
    expect(relPathOf(root)).toBe('');
    expect(relPathOf(top)).toBe('abc-pkg');
    expect(relPathOf(node(4, 3, odd, 'x'))).toBe('abc-pkg/new\nline\xff/x');
  });
});

describe('kindOfNode', () => {
  test('a node\'s kind comes from the type bits of its mode', () => {
    const { root } = table();
    expect(kindOfNode(root)).toBe('dir');
    expect(kindOfNode(node(2, 1, root, 'f'))).toBe('reg');
    expect(kindOfNode({ ...node(3, 2, root, 'l'), mode: S_IFLNK | 0o777 })).toBe('lnk');
  });
});
