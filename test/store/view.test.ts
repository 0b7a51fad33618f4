/**
 * The closure view through the FUSE server, in process, on a hand-made store.
 * The same assertions run against the real Nix-built fixture in nix-fixture.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Errno, Opcode, FopenFlag, InitFlag } from '../../src/fuse';
import { FuseServer } from '../../src/fuse/server';
import { ClosureView } from '../../src/store/view';
import { PENDING, type Completion, type ScatterGather } from '../../src/io';
import { backendPair } from '../harness/backend-pair';
import { FuseClient, GUEST_INIT_FLAGS, cName, errnoOf, inProcessTransport } from '../harness/fuse-client';
import { fakeHash, makeFakeStore, type FakeStore } from './fake-store';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const DT_DIR = 4;
const DT_REG = 8;
const DT_LNK = 10;

let store: FakeStore;
beforeAll(() => {
  store = makeFakeStore();
});
afterAll(() => store.cleanup());

function setup(opts: { maxHandles?: number; cache?: 'auto' | 'always' | 'never' } = {}) {
  const view = new ClosureView({ storeDir: store.storeDir, paths: store.closure, maxHandles: opts.maxHandles });
  const server = new FuseServer(view, { cache: opts.cache ?? 'always' });
  const client = new FuseClient(inProcessTransport(server));
  return { view, server, client };
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

describe('ClosureView root', () => {
  test('lists exactly the closure, sorted, after . and ..', async () => {
    const { client, view } = setup();
    await client.init();
    const { fh } = await client.opendir(1);
    const names = (await client.readdirAll(1, fh)).map((d) => d.name.toString());
    expect(names).toEqual(['.', '..', ...store.closure]);
    view.close();
  });

  test('looks like a read-only store directory', async () => {
    const { client, view } = setup();
    await client.init();
    const { attr } = await client.getattr(1);
    expect(attr.mode).toBe(S_IFDIR | 0o555);
    expect([attr.uid, attr.gid, attr.mtime, attr.ctime, attr.atime, attr.ino]).toEqual([0, 0, 1, 1, 1, 1]);
    // 2 + the store paths that are directories (app, lib)
    expect(attr.nlink).toBe(4);
    view.close();
  });

  test('LOOKUP of anything outside the closure is ENOENT', async () => {
    const { client, view } = setup({ cache: 'never' });
    await client.init();
    for (const name of [...store.outside, 'nonexistent', `${store.names.app}x`]) {
      expect(await errnoOf(client.lookup(1, name))).toBe(Errno.ENOENT);
    }
    view.close();
  });

  test('a negative entry is cached by the guest under cache=always', async () => {
    const { client, view } = setup({ cache: 'always' });
    await client.init();
    const r = await client.request(Opcode.LOOKUP, 1, [cName('.links')], 128);
    expect(r.header.error).toBe(0);
    expect(r.payload.readBigUInt64LE(0)).toBe(0n); // nodeid 0
    expect(r.payload.readBigUInt64LE(16)).toBe(86400n); // entry_valid
    view.close();
  });

  test('. and .. at the root are the root', async () => {
    const { client, view } = setup();
    await client.init();
    expect((await client.lookup(1, '..')).nodeid).toBe(1);
    expect((await client.lookup(1, '.')).nodeid).toBe(1);
    view.close();
  });
});

describe('ClosureView below a store path', () => {
  test('reads are byte-identical, across chunk sizes', async () => {
    const { client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    expect(e.attr.size).toBe(store.largeContent.length);
    const { fh, openFlags } = await client.open(e.nodeid);
    expect(openFlags & FopenFlag.KEEP_CACHE).toBe(FopenFlag.KEEP_CACHE);
    expect((await client.readAll(e.nodeid, fh, 128 * 1024)).equals(store.largeContent)).toBe(true);
    expect((await client.readAll(e.nodeid, fh, 4096 + 17)).equals(store.largeContent)).toBe(true);
    expect((await client.read(e.nodeid, fh, store.largeContent.length - 5, 100)).equals(store.largeContent.subarray(-5))).toBe(true);
    await client.release(e.nodeid, fh);
    view.close();
  });

  test('cache=auto: the guest keeps its pages of a file while it is unchanged, and drops them once it was edited in place', async () => {
    const own = makeFakeStore(0);
    const view = new ClosureView({ storeDir: own.storeDir, paths: own.closure });
    const client = new FuseClient(inProcessTransport(new FuseServer(view, { cache: 'auto' })));
    try {
      await client.init();
      const e = await client.lookup(1, own.names.single);
      const keeps = async (): Promise<{ keep: boolean; bytes: string }> => {
        const { fh, openFlags } = await client.open(e.nodeid);
        const bytes = (await client.read(e.nodeid, fh, 0, 100)).toString();
        await client.release(e.nodeid, fh);
        return { keep: (openFlags & FopenFlag.KEEP_CACHE) !== 0, bytes };
      };
      expect(await keeps()).toEqual({ keep: true, bytes: 'I am a whole store path\n' });
      expect(await keeps()).toEqual({ keep: true, bytes: 'I am a whole store path\n' });
      // Same inode, same size, new bytes and a new mtime: what an in-place edit on the host looks like.
      const file = path.join(own.storeDir, own.names.single);
      fs.chmodSync(file, 0o644);
      fs.writeFileSync(file, 'I was edited in place!!\n');
      fs.utimesSync(file, new Date(), new Date());
      expect(await keeps()).toEqual({ keep: false, bytes: 'I was edited in place!!\n' });
    } finally {
      view.close();
      own.cleanup();
    }
  });

  test('READ fills scattered guest buffers in place', async () => {
    const { server, client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const { fh } = await client.open(e.nodeid);
    const header = Buffer.alloc(40);
    header.writeUInt32LE(80, 0);
    header.writeUInt32LE(Opcode.READ, 4);
    header.writeBigUInt64LE(77n, 8);
    header.writeBigUInt64LE(BigInt(e.nodeid), 16);
    const readIn = Buffer.alloc(40);
    readIn.writeBigUInt64LE(BigInt(fh), 0);
    readIn.writeBigUInt64LE(10n, 8);
    readIn.writeUInt32LE(10000, 16);
    // The out header and data split unevenly over three writable buffers.
    const writable = [Buffer.alloc(10), Buffer.alloc(3000), Buffer.alloc(7006)];
    const used = server.handle(1, { readable: [header, readIn], writable });
    expect(used).toBe(16 + 10000);
    const all = Buffer.concat(writable);
    expect(all.readInt32LE(4)).toBe(0);
    expect(all.subarray(16).equals(store.largeContent.subarray(10, 10010))).toBe(true);
    view.close();
  });

  test('READLINK returns targets verbatim: absolute, relative, dangling, escaping', async () => {
    const { client, view } = setup();
    await client.init();
    const app = store.names.app;
    const cases: [string, string][] = [
      [`${app}/lib-abs`, `/nix/store/${store.names.lib}/lib/libfoo.so`],
      [`${app}/bin/doc-rel`, '../share/doc.txt'],
      [`${app}/dangling`, '/nix/store/00000000000000000000000000000000-missing/x'],
      [`${app}/escape-abs`, '/etc/passwd'],
      [`${app}/escape-rel`, '../../../../../../etc'],
    ];
    for (const [p, target] of cases) {
      const e = await client.walk(p);
      expect(e.attr.mode & S_IFMT).toBe(S_IFLNK);
      expect(e.attr.mode & 0o7777).toBe(0o777);
      expect((await client.readlink(e.nodeid)).toString()).toBe(target);
    }
    view.close();
  });

  test('symlinks are never followed: lookup through one is ENOTDIR, open is ELOOP', async () => {
    const { client, view } = setup();
    await client.init();
    const esc = await client.walk(`${store.names.app}/escape-rel`);
    expect(await errnoOf(client.lookup(esc.nodeid, 'passwd'))).toBe(Errno.ENOTDIR);
    expect(await errnoOf(client.open(esc.nodeid))).toBe(Errno.ELOOP);
    view.close();
  });

  test('a single-file store path and a symlink store path work', async () => {
    const { client, view } = setup();
    await client.init();
    const single = await client.lookup(1, store.names.single);
    expect(single.attr.mode & S_IFMT).toBe(S_IFREG);
    const { fh } = await client.open(single.nodeid);
    expect((await client.read(single.nodeid, fh, 0, 4096)).toString()).toBe('I am a whole store path\n');
    const link = await client.lookup(1, store.names.symlinkPath);
    expect((await client.readlink(link.nodeid)).toString()).toBe(`/nix/store/${store.names.app}/bin/hello`);
    expect(await errnoOf(client.lookup(single.nodeid, 'x'))).toBe(Errno.ENOTDIR);
    view.close();
  });

  test('odd names list and resolve byte for byte', async () => {
    const { client, view } = setup();
    await client.init();
    const odd = await client.walk(`${store.names.app}/odd`);
    const { fh } = await client.opendir(odd.nodeid);
    const names = (await client.readdirAll(odd.nodeid, fh)).slice(2).map((d) => d.name);
    expect(names.map((n) => n.toString('hex')).sort()).toEqual(store.oddNames.map((n) => n.toString('hex')).sort());
    for (const name of store.oddNames) {
      const e = await client.lookup(odd.nodeid, name);
      const f = await client.open(e.nodeid);
      expect((await client.read(e.nodeid, f.fh, 0, 100)).toString()).toBe(`odd ${name.toString()}\n`);
      await client.release(e.nodeid, f.fh);
    }
    view.close();
  });

  test('.. below a store path goes up, .. of a store path is the root', async () => {
    const { client, view } = setup();
    await client.init();
    const app = await client.lookup(1, store.names.app);
    const bin = await client.lookup(app.nodeid, 'bin');
    expect((await client.lookup(bin.nodeid, '..')).nodeid).toBe(app.nodeid);
    expect((await client.lookup(app.nodeid, '..')).nodeid).toBe(1);
    expect((await client.lookup(bin.nodeid, '.')).nodeid).toBe(bin.nodeid);
    view.close();
  });
});

describe('ClosureView leaks', () => {
  test('no host inode numbers, link counts, owners or change times', async () => {
    const { client, view } = setup();
    await client.init();
    const twinPath = `${store.names.lib}/share/twin.txt`;
    const host = fs.lstatSync(path.join(store.storeDir, twinPath), { bigint: true });
    expect(host.nlink).toBeGreaterThanOrEqual(3n); // inside, outside and .links
    const e = await client.walk(twinPath);
    expect(e.attr.nlink).toBe(1);
    expect(BigInt(e.attr.ino)).not.toBe(host.ino);
    expect([e.attr.uid, e.attr.gid]).toEqual([0, 0]);
    expect(e.attr.ctime).toBe(e.attr.mtime);
    expect(e.attr.atime).toBe(e.attr.mtime);
    expect(e.attr.blocks).toBe(Math.ceil(e.attr.size / 512));
    expect(e.attr.mode).toBe(S_IFREG | 0o444);
    const hello = await client.walk(`${store.names.app}/bin/hello`);
    expect(hello.attr.mode).toBe(S_IFREG | 0o555);
    view.close();
  });

  test('st_ino and nodeid are stable for the same host file across forget and re-lookup', async () => {
    const { client, view } = setup();
    await client.init();
    const a = await client.walk(`${store.names.app}/share/doc.txt`);
    await client.forget(a.nodeid, 1);
    const b = await client.walk(`${store.names.app}/share/doc.txt`);
    expect(b.nodeid).toBe(a.nodeid); // a nodeid is the file's inode number: it names the same file again
    expect(b.attr.ino).toBe(a.attr.ino);
    view.close();
  });

  test('STATFS describes the closure, not the host disk', async () => {
    const { client, view } = setup();
    await client.init();
    const st = await client.statfs();
    expect([st.bfree, st.bavail, st.ffree, st.bsize, st.frsize, st.namelen]).toEqual([0, 0, 0, 4096, 4096, 255]);
    // app: itself, bin + 2, share + 2, 4 top symlinks, odd + 5, many + N, empty-dir
    const app = 1 + 3 + 3 + 4 + 6 + (1 + store.manyCount) + 1;
    // lib: itself, lib + libfoo.so, share + twin.txt (hard-linked outside: counted once, here)
    const lib = 1 + 2 + 2;
    const expectedFiles = 1 /* root */ + app + lib + 1 /* single file */ + 1 /* symlink path */;
    expect(st.files).toBe(expectedFiles);
    expect(st.blocks).toBeGreaterThanOrEqual(Math.ceil(store.largeContent.length / 4096));
    expect(st.blocks).toBeLessThan(Math.ceil(store.largeContent.length / 4096) + store.manyCount + 50);
    view.close();
  });
});

describe('ClosureView read-only', () => {
  const mutating: [string, number][] = [
    ['SETATTR', Opcode.SETATTR],
    ['MKNOD', Opcode.MKNOD],
    ['MKDIR', Opcode.MKDIR],
    ['UNLINK', Opcode.UNLINK],
    ['RMDIR', Opcode.RMDIR],
    ['RENAME', Opcode.RENAME],
    ['RENAME2', Opcode.RENAME2],
    ['LINK', Opcode.LINK],
    ['SYMLINK', Opcode.SYMLINK],
    ['CREATE', Opcode.CREATE],
    ['WRITE', Opcode.WRITE],
    ['FSYNC', Opcode.FSYNC],
    ['FSYNCDIR', Opcode.FSYNCDIR],
    ['SETXATTR', Opcode.SETXATTR],
    ['REMOVEXATTR', Opcode.REMOVEXATTR],
    ['FALLOCATE', Opcode.FALLOCATE],
    ['COPY_FILE_RANGE', Opcode.COPY_FILE_RANGE],
    ['TMPFILE', Opcode.TMPFILE],
  ];
  test.each(mutating)('%s is EROFS', async (_name, opcode) => {
    const { client, view } = setup();
    await client.init();
    const body = Buffer.concat([Buffer.alloc(64), cName('newname'), cName('other')]);
    expect(await errnoOf(client.call(opcode, 1, [body], 256))).toBe(Errno.EROFS);
    const app = await client.lookup(1, store.names.app);
    expect(await errnoOf(client.call(opcode, app.nodeid, [body], 256))).toBe(Errno.EROFS);
    view.close();
  });

  test.each([
    ['O_WRONLY', 0o1],
    ['O_RDWR', 0o2],
    ['O_TRUNC', 0o1000],
    ['O_APPEND', 0o2000],
  ])('OPEN with %s is EROFS', async (_n, flags) => {
    const { client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/doc.txt`);
    expect(await errnoOf(client.open(e.nodeid, flags))).toBe(Errno.EROFS);
    expect(view.counts.handles).toBe(0);
    view.close();
  });

  test('ACCESS: W_OK is EROFS, X_OK needs an x bit', async () => {
    const { client, view } = setup();
    await client.init();
    const doc = await client.walk(`${store.names.app}/share/doc.txt`);
    const hello = await client.walk(`${store.names.app}/bin/hello`);
    await client.access(doc.nodeid, 4);
    expect(await errnoOf(client.access(doc.nodeid, 2))).toBe(Errno.EROFS);
    expect(await errnoOf(client.access(doc.nodeid, 1))).toBe(Errno.EACCES);
    await client.access(hello.nodeid, 1);
    view.close();
  });

  test('xattrs are not supported at all (ENOSYS), so a guest stops asking', async () => {
    const { client, view } = setup();
    await client.init();
    expect(await errnoOf(client.getxattr(1, 'security.capability', 0))).toBe(Errno.ENOSYS);
    expect(await errnoOf(client.listxattr(1, 0))).toBe(Errno.ENOSYS);
    view.close();
  });
});

describe('ClosureView directories', () => {
  test('READDIR cookies across small buffers give every entry exactly once', async () => {
    const { client, view } = setup();
    await client.init();
    const many = await client.walk(`${store.names.app}/many`);
    const { fh } = await client.opendir(many.nodeid);
    const small = await client.readdirAll(many.nodeid, fh, 80); // two or three entries a call
    const big = await client.readdirAll(many.nodeid, fh, 65536);
    expect(small.map((d) => d.name.toString())).toEqual(big.map((d) => d.name.toString()));
    expect(small.length).toBe(store.manyCount + 2);
    expect(new Set(small.map((d) => d.name.toString())).size).toBe(small.length);
    const first = await client.readdir(many.nodeid, fh, 0, 80);
    const used = first.reduce((n, d) => n + ((24 + d.name.length + 7) & ~7), 0);
    expect(used).toBeLessThanOrEqual(80);
    expect(used + ((24 + 6 + 7) & ~7)).toBeGreaterThan(80); // the next entry would not have fit
    await client.releasedir(many.nodeid, fh);
    view.close();
  });

  test('READDIR types and inode numbers match LOOKUP', async () => {
    const { client, view } = setup();
    await client.init();
    const app = await client.lookup(1, store.names.app);
    const { fh } = await client.opendir(app.nodeid);
    const entries = await client.readdirAll(app.nodeid, fh);
    const byName = new Map(entries.map((d) => [d.name.toString(), d]));
    expect(byName.get('bin')?.type).toBe(DT_DIR);
    expect(byName.get('lib-abs')?.type).toBe(DT_LNK);
    expect(byName.get('.')?.ino).toBe(app.attr.ino);
    expect(byName.get('..')?.ino).toBe(1);
    const bin = await client.lookup(app.nodeid, 'bin');
    expect(byName.get('bin')?.ino).toBe(bin.attr.ino);
    const root = await client.readdirAll(1, (await client.opendir(1)).fh);
    expect(root.find((d) => d.name.toString() === store.names.single)?.type).toBe(DT_REG);
    view.close();
  });

  test('READDIRPLUS counts one lookup per entry it returns, none for . and ..', async () => {
    const { client, view } = setup();
    await client.init();
    const bin = await client.walk(`${store.names.app}/bin`);
    const nodesBefore = view.counts.nodes;
    const { fh } = await client.opendir(bin.nodeid);
    const all = await client.readdirplus(bin.nodeid, fh, 0, 65536);
    expect(all.map((d) => d.name.toString())).toEqual(['.', '..', 'doc-rel', 'hello']);
    expect(all[0].entry.nodeid).toBe(0);
    expect(all[1].entry.nodeid).toBe(0);
    expect(view.counts.nodes).toBe(nodesBefore + 2);
    // Each returned entry has exactly one lookup: FORGET 1 frees it, another FORGET would underflow.
    for (const d of all.slice(2)) await client.forget(d.entry.nodeid, 1);
    expect(view.counts.nodes).toBe(nodesBefore);
    view.close();
  });

  test('the name cache answers repeated LOOKUPs with the same node and never with a freed one', async () => {
    const view = new ClosureView({ storeDir: store.storeDir, paths: store.closure, nameCacheSize: 1 });
    const client = new FuseClient(inProcessTransport(new FuseServer(view, { cache: 'auto' })));
    await client.init();
    const bin = await client.walk(`${store.names.app}/bin`);
    const first = await client.lookup(bin.nodeid, 'hello');
    const again = await client.lookup(bin.nodeid, 'hello');
    expect(again.nodeid).toBe(first.nodeid);
    expect(again.attr).toEqual(first.attr);
    // Two lookups counted: FORGET 2 frees the node; the cached answer must not bring it back.
    const nodes = view.counts.nodes;
    await client.forget(first.nodeid, 2);
    expect(view.counts.nodes).toBe(nodes - 1);
    const fresh = await client.lookup(bin.nodeid, 'hello');
    expect(view.counts.nodes).toBe(nodes); // a new node, counted once: not the freed one brought back
    expect(fresh.nodeid).toBe(first.nodeid); // same host file, same nodeid and view inode number
    expect(fresh.attr.ino).toBe(first.attr.ino);
    await client.forget(fresh.nodeid, 1);
    expect(view.counts.nodes).toBe(nodes - 1);
    await client.lookup(bin.nodeid, 'hello');
    // A cache of one entry: another name evicts it, and both still resolve right.
    const doc = await client.lookup(bin.nodeid, 'doc-rel');
    expect(doc.nodeid).not.toBe(fresh.nodeid);
    expect((await client.lookup(bin.nodeid, 'hello')).nodeid).toBe(fresh.nodeid);
    expect(await errnoOf(client.lookup(bin.nodeid, 'nope'))).toBe(Errno.ENOENT);
    view.close();
  });

  test('READDIRPLUS of known entries answers from the node table: same nodes, one more lookup each, no leak', async () => {
    const { client, view } = setup();
    await client.init();
    const bin = await client.walk(`${store.names.app}/bin`);
    const hello = await client.lookup(bin.nodeid, 'hello');
    const { fh } = await client.opendir(bin.nodeid);
    const first = await client.readdirplus(bin.nodeid, fh, 0, 65536);
    const second = await client.readdirplus(bin.nodeid, fh, 0, 65536);
    const byName = (l: typeof first, n: string) => l.find((d) => d.name.toString() === n)!;
    // The listing's getdents identity found the node the name lookup made: same nodeid, same attributes.
    expect(byName(first, 'hello').entry.nodeid).toBe(hello.nodeid);
    expect(byName(second, 'hello').entry).toEqual(byName(first, 'hello').entry);
    expect(byName(second, 'hello').entry.attr).toEqual(hello.attr);
    // hello was looked up three times (LOOKUP + two READDIRPLUS): three FORGETs free it, exactly.
    const nodes = view.counts.nodes;
    await client.forget(hello.nodeid, 2);
    expect(view.counts.nodes).toBe(nodes);
    await client.forget(hello.nodeid, 1);
    expect(view.counts.nodes).toBe(nodes - 1);
    view.close();
  });

  test('LOOKUP after READDIRPLUS finds the nodes READDIRPLUS made, counting one more lookup', async () => {
    const { client, view } = setup();
    await client.init();
    const bin = await client.walk(`${store.names.app}/bin`);
    const listed = await client.readdirplus(bin.nodeid, 0, 0, 65536);
    const hello = listed.find((d) => d.name.toString() === 'hello')!.entry;
    const nodes = view.counts.nodes;
    const again = await client.lookup(bin.nodeid, 'hello');
    expect(again.nodeid).toBe(hello.nodeid);
    expect(again.attr).toEqual(hello.attr);
    expect((await client.lookup(bin.nodeid, 'hello')).nodeid).toBe(hello.nodeid);
    await client.forget(hello.nodeid, 2);
    expect(view.counts.nodes).toBe(nodes);
    await client.forget(hello.nodeid, 1);
    expect(view.counts.nodes).toBe(nodes - 1);
    view.close();
  });

  test('READDIRPLUS in small buffers: only entries that fit are looked up', async () => {
    const { client, view } = setup();
    await client.init();
    const many = await client.walk(`${store.names.app}/many`);
    const before = view.counts.nodes;
    const { fh } = await client.opendir(many.nodeid);
    // 152 + 6 rounds to 160: room for two "fNNNNN" entries and most of a third.
    const batch = await client.readdirplus(many.nodeid, fh, 2, 400);
    expect(batch.map((d) => d.name.toString())).toEqual(['f00000', 'f00001']);
    expect(view.counts.nodes).toBe(before + 2);
    const next = await client.readdirplus(many.nodeid, fh, batch[1].off, 400);
    expect(next[0].name.toString()).toBe('f00002');
    view.close();
  });

  test('READDIR without OPENDIR (fh 0) works from the listing cache', async () => {
    const { client, view } = setup();
    await client.init();
    const app = await client.lookup(1, store.names.app);
    const names = (await client.readdirAll(app.nodeid, 0)).map((d) => d.name.toString());
    expect(names).toContain('bin');
    view.close();
  });

  test('zero-message opendir: OPENDIR is ENOSYS so the guest stops sending it', async () => {
    const view = new ClosureView({ storeDir: store.storeDir, paths: store.closure });
    const client = new FuseClient(inProcessTransport(new FuseServer(view, { zeroMessageOpendir: true })));
    const init = await client.init();
    expect(init.flags & InitFlag.NO_OPENDIR_SUPPORT).toBe(0);
    expect(await errnoOf(client.opendir(1))).toBe(Errno.ENOSYS);
    expect((await client.readdirAll(1, 0)).length).toBe(store.closure.length + 2);
    view.close();
  });
});

/** A READ request as the guest lays it out, and room for the reply. */
function readRequest(nodeid: number, fh: number, offset: number, size: number): { readable: Buffer[]; writable: Buffer[] } {
  const header = Buffer.alloc(40);
  header.writeUInt32LE(80, 0);
  header.writeUInt32LE(Opcode.READ, 4);
  header.writeBigUInt64LE(BigInt(offset + 1), 8);
  header.writeBigUInt64LE(BigInt(nodeid), 16);
  const readIn = Buffer.alloc(40);
  readIn.writeBigUInt64LE(BigInt(fh), 0);
  readIn.writeBigUInt64LE(BigInt(offset), 8);
  readIn.writeUInt32LE(size, 16);
  return { readable: [header, readIn], writable: [Buffer.alloc(16), Buffer.alloc(size)] };
}

/** Serves a READ offered a completion; resolves with the used length the completion got. */
function readLater(server: FuseServer, req: { readable: Buffer[]; writable: Buffer[] }): { returned: number; done: Promise<number> } {
  let complete!: (n: number) => void;
  const done = new Promise<number>((r) => (complete = r));
  return { returned: server.handle(1, req, complete), done };
}

describe('ClosureView reads without a handle (zero-message open: fh 0)', () => {
  function noOpenSetup(nodeFileCacheSize: number) {
    const view = new ClosureView({ storeDir: store.storeDir, paths: store.closure, nodeFileCacheSize });
    const client = new FuseClient(inProcessTransport(new FuseServer(view, { cache: 'always', zeroMessageOpen: true })));
    return { view, client };
  }

  test('the guest opens without asking and reads by nodeid, byte-identical; no RELEASE or FLUSH to send', async () => {
    const { view, client } = noOpenSetup(4);
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    expect(await client.open(e.nodeid)).toEqual({ fh: 0, openFlags: FopenFlag.KEEP_CACHE });
    expect(client.opensWithoutOpen).toBe(true);
    expect((await client.readAll(e.nodeid, 0, 128 * 1024)).equals(store.largeContent)).toBe(true);
    expect(view.counts.nodeFiles).toBe(1);
    view.close();
  });

  test('files read by nodeid stay open only up to the cache size, and a forgotten node closes its file', async () => {
    const { view, client } = noOpenSetup(3);
    await client.init();
    const dir = await client.walk(`${store.names.app}/many`);
    await client.lookup(dir.nodeid, 'f00000'); // the directory's own fd (lookups keep it) is open before counting
    const before = openFdCount();
    const files = [];
    for (let i = 0; i < 10; i++) {
      const e = await client.lookup(dir.nodeid, `f${String(i).padStart(5, '0')}`);
      files.push(e.nodeid);
      expect((await client.read(e.nodeid, 0, 0, 100)).toString()).toBe(`${i}\n`);
      expect(view.counts.nodeFiles).toBe(Math.min(i + 1, 3));
    }
    expect(openFdCount() - before).toBeLessThanOrEqual(3);
    // An evicted one opens again when read again.
    expect((await client.read(files[0], 0, 0, 100)).toString()).toBe('0\n');
    await client.forget(files[0], 2); // looked up twice (before counting, and in the loop)
    expect(view.counts.nodeFiles).toBe(2);
    await client.destroy();
    expect(view.counts.nodeFiles).toBe(0);
    expect(openFdCount()).toBeLessThanOrEqual(before);
    view.close();
  });

  test('fh 0 on something that is not a regular file, or on an unknown nodeid, is an errno', async () => {
    const { view, client } = noOpenSetup(4);
    await client.init();
    const dir = await client.walk(`${store.names.app}/share`);
    const link = await client.walk(`${store.names.app}/lib-abs`);
    expect(await errnoOf(client.read(dir.nodeid, 0, 0, 100))).toBe(Errno.EISDIR);
    expect(await errnoOf(client.read(link.nodeid, 0, 0, 100))).toBe(Errno.EINVAL);
    expect(await errnoOf(client.read(999_999, 0, 0, 100))).toBe(Errno.ENOENT);
    expect(view.counts.nodeFiles).toBe(0);
    view.close();
  });

  test('a write open still gets EROFS, and a guest without FUSE_NO_OPEN_SUPPORT still gets handles', async () => {
    const { view, client } = noOpenSetup(4);
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const O_WRONLY = 1;
    expect(await errnoOf(client.open(e.nodeid, O_WRONLY))).toBe(Errno.EROFS);
    await client.destroy();
    await client.init({ flags: GUEST_INIT_FLAGS & ~InitFlag.NO_OPEN_SUPPORT });
    const again = await client.walk(`${store.names.app}/share/large.bin`);
    const { fh } = await client.open(again.nodeid);
    expect(fh).toBeGreaterThan(0);
    await client.release(again.nodeid, fh);
    view.close();
  });
});

describe('ClosureView reads off the main thread', () => {
  test('a large READ offered a completion is read on the pool: PENDING, then the same bytes as in place', async () => {
    const { server, client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const { fh } = await client.open(e.nodeid);
    const reqs = [0, 200_000, 700_000, 1_000_000].map((off) => ({ off, req: readRequest(e.nodeid, fh, off, 128 * 1024) }));
    const started = reqs.map(({ req }) => readLater(server, req));
    expect(started.map((s) => s.returned)).toEqual([-1, -1, -1, -1]);
    const used = await Promise.all(started.map((s) => s.done));
    reqs.forEach(({ off, req }, i) => {
      const want = store.largeContent.subarray(off, off + 128 * 1024);
      expect(used[i]).toBe(16 + want.length);
      expect(req.writable[0].readInt32LE(4)).toBe(0);
      expect(req.writable[0].readBigUInt64LE(8)).toBe(BigInt(off + 1)); // unique echoed
      expect(req.writable[1].subarray(0, want.length).equals(want)).toBe(true);
    });
    view.close();
  });

  test('a small READ, or any READ with offloading off, is answered in place even when offered a completion', async () => {
    const { server, client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const { fh } = await client.open(e.nodeid);
    expect(readLater(server, readRequest(e.nodeid, fh, 0, 4096)).returned).toBe(16 + 4096);
    const inPlace = new FuseServer(view, { offloadReadMin: Infinity });
    await new FuseClient(inProcessTransport(inPlace)).init();
    const fh2 = (await client.open((await client.walk(`${store.names.app}/share/large.bin`)).nodeid)).fh;
    expect(readLater(inPlace, readRequest(e.nodeid, fh2, 0, 1 << 20)).returned).toBe(16 + (1 << 20));
    view.close();
  });

  test('RELEASE and DESTROY while reads run: each fd stays open until its read lands, then closes', async () => {
    const { server, client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const fdsOnLarge = () => fs.readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith('/share/large.bin');
      } catch {
        return false; // the listing's own fd, gone by now
      }
    }).length;
    const before = fdsOnLarge();
    const a = await client.open(e.nodeid);
    const b = await client.open(e.nodeid);
    const ra = readLater(server, readRequest(e.nodeid, a.fh, 0, 1 << 20));
    const rb = readLater(server, readRequest(e.nodeid, b.fh, 4096, 1 << 20));
    await client.release(e.nodeid, a.fh);
    expect(view.counts.handles).toBe(1);
    await client.destroy();
    expect(view.counts.handles).toBe(0);
    expect(fdsOnLarge()).toBe(before + 2); // both reads still hold their fd
    await expect(ra.done).resolves.toBe(16 + (1 << 20));
    await expect(rb.done).resolves.toBe(16 + store.largeContent.length - 4096); // to EOF
    expect(fdsOnLarge()).toBe(before);
    view.close();
  });

  test('through a real ring: a batch of large and small READs, the large ones on the pool, all intact', async () => {
    const view = new ClosureView({ storeDir: store.storeDir, paths: store.closure });
    const server = new FuseServer(view);
    let pending = 0;
    const counting = {
      handle: (q: number, sg: ScatterGather, complete?: Completion) => {
        const r = server.handle(q, sg, complete);
        if (r === PENDING) pending++;
        return r;
      },
    };
    const p = await backendPair({ regions: [{ gpa: 0, size: 16 << 20 }] }, { handler: counting });
    try {
      await p.fe.handshake();
      const client = new FuseClient((readable, sizes) => p.fe.request(1, readable, sizes));
      await client.init();
      const e = await client.walk(`${store.names.app}/share/large.bin`);
      const { fh } = await client.open(e.nodeid);
      const reads = [[0, 131072], [5, 4096], [300_000, 262144], [1_000_000, 131072], [77, 100], [600_000, 131072]];
      const done = await p.fe.batch(1, reads.map(([off, size]) => readRequest(e.nodeid, fh, off, size)).map((r) => ({ readable: r.readable, writableSizes: [16, r.writable[1].length] })));
      done.forEach((c, i) => {
        const [off, size] = reads[i];
        const want = store.largeContent.subarray(off, off + size);
        expect(c.written.readInt32LE(4)).toBe(0);
        expect(c.usedLen).toBe(16 + want.length);
        expect(c.written.subarray(16).equals(want)).toBe(true);
      });
      expect(pending).toBe(3); // the 128 KiB+ READs with others behind them; the last one in place
      expect(server.requestCounts()).toMatchObject({ READ: 6, 'READ off the main thread': 3 });
    } finally {
      p.close();
      view.close();
    }
  });

  test('a READ on an unknown fh is EBADF at once, never PENDING', async () => {
    const { server, client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const req = readRequest(e.nodeid, 999, 0, 1 << 20);
    expect(readLater(server, req).returned).toBe(16);
    expect(req.writable[0].readInt32LE(4)).toBe(-Errno.EBADF);
    view.close();
  });
});

describe('ClosureView resources', () => {
  test('FORGET and BATCH_FORGET free nodes; DESTROY frees all', async () => {
    const { client, view } = setup();
    await client.init();
    const base = view.counts.nodes;
    const a = await client.lookup(1, store.names.app);
    await client.lookup(1, store.names.app);
    const b = await client.lookup(a.nodeid, 'bin');
    expect(view.counts.nodes).toBe(base + 2);
    expect(await client.forget(a.nodeid, 1)).toBe(0);
    expect(view.counts.nodes).toBe(base + 2); // one lookup left
    expect(await client.batchForget([{ nodeid: a.nodeid, nlookup: 1 }, { nodeid: b.nodeid, nlookup: 1 }])).toBe(0);
    expect(view.counts.nodes).toBe(base);
    expect(await errnoOf(client.getattr(a.nodeid))).toBe(Errno.ENOENT);
    await client.lookup(1, store.names.lib);
    await client.destroy();
    expect(view.counts.nodes).toBe(1);
    view.close();
  });

  test('a FORGET below zero frees the node and does not reply or throw', async () => {
    const { client, view } = setup();
    await client.init();
    const a = await client.lookup(1, store.names.app);
    expect(await client.forget(a.nodeid, 5)).toBe(0);
    expect(await errnoOf(client.getattr(a.nodeid))).toBe(Errno.ENOENT);
    expect(await client.forget(123456, 1)).toBe(0);
    view.close();
  });

  test('held fds do not grow with the number of nodes', async () => {
    const { client, view } = setup();
    await client.init();
    const many = await client.walk(`${store.names.app}/many`);
    const before = openFdCount();
    const { fh } = await client.opendir(many.nodeid);
    const entries = (await client.readdirAll(many.nodeid, fh, 65536)).slice(2);
    for (const d of entries) await client.lookup(many.nodeid, d.name);
    // readlink/lookups elsewhere touch other directories (the dir fd LRU is bounded)
    for (const p of ['bin', 'share', 'odd']) await client.lookup((await client.lookup(1, store.names.app)).nodeid, p);
    expect(view.counts.nodes).toBeGreaterThan(store.manyCount);
    expect(openFdCount() - before).toBeLessThanOrEqual(view.counts.dirFds + 1);
    expect(view.counts.dirFds).toBeLessThanOrEqual(32);
    view.close();
  });

  test('the handle cap gives EMFILE, and release makes room again', async () => {
    const { client, view } = setup({ maxHandles: 4 });
    await client.init();
    const e = await client.walk(`${store.names.app}/share/doc.txt`);
    const fhs: number[] = [];
    for (let i = 0; i < 3; i++) fhs.push((await client.open(e.nodeid)).fh);
    fhs.push((await client.opendir(1)).fh);
    expect(new Set(fhs).size).toBe(4);
    expect(await errnoOf(client.open(e.nodeid))).toBe(Errno.EMFILE);
    expect(await errnoOf(client.opendir(1))).toBe(Errno.EMFILE);
    await client.release(e.nodeid, fhs[0]);
    const again = await client.open(e.nodeid);
    expect(fhs).not.toContain(again.fh); // handles are never reused either
    view.close();
  });

  test('a new INIT (guest reset without DESTROY, or a new server) drops the old session', async () => {
    const { client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/doc.txt`);
    await client.open(e.nodeid);
    expect(view.counts.handles).toBe(1);
    await new FuseClient(inProcessTransport(new FuseServer(view))).init();
    expect(view.counts).toMatchObject({ handles: 0, nodes: 1, dirFds: 0 });
    view.close();
  });

  test('close() releases every fd the view opened', async () => {
    const before = openFdCount();
    const { client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/doc.txt`);
    await client.open(e.nodeid);
    await client.walk(`${store.names.app}/bin/hello`);
    view.close();
    expect(openFdCount()).toBe(before);
  });

  test('LSEEK SEEK_DATA/SEEK_HOLE go to the host file', async () => {
    const { client, view } = setup();
    await client.init();
    const e = await client.walk(`${store.names.app}/share/large.bin`);
    const { fh } = await client.open(e.nodeid);
    expect(await client.lseek(e.nodeid, fh, 0, 3)).toBe(0);
    expect(await client.lseek(e.nodeid, fh, 0, 4)).toBe(store.largeContent.length);
    expect(await errnoOf(client.lseek(e.nodeid, fh + 100, 0, 3))).toBe(Errno.EBADF);
    view.close();
  });
});

/**
 * A store path of raw byte names and a deep tree, made per run: names that are not
 * UTF-8 cannot live in the shared fake store (its helpers take strings).
 */
describe('ClosureView on byte names and deep trees', () => {
  const base = `${fakeHash(9)}-bytes`;
  const oddNames = [Buffer.from([0x66, 0xff, 0xfe]), Buffer.from('new\nline'), Buffer.from('ütf8'), Buffer.from('a')];
  let root: string;
  let storeDir: string;
  const at = (...parts: (string | Buffer)[]): Buffer => Buffer.concat([Buffer.from(storeDir), ...[base, ...parts].map((p) => Buffer.concat([Buffer.from('/'), Buffer.from(p)]))]);

  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-bytes-'));
    storeDir = path.join(root, 'store');
    fs.mkdirSync(path.join(storeDir, base, 'names'), { recursive: true });
    for (const n of oddNames) fs.writeFileSync(at('names', n), n.toString('hex'));
    fs.mkdirSync(path.join(storeDir, base, 'empty'));
    fs.mkdirSync(path.join(storeDir, base, 'a', 'b', 'c'), { recursive: true });
    fs.writeFileSync(path.join(storeDir, base, 'a', 'b', 'c', 'deep.txt'), 'deep\n');
    fs.linkSync(path.join(storeDir, base, 'a', 'b', 'c', 'deep.txt'), path.join(storeDir, base, 'a', 'twin'));
    fs.symlinkSync('c/deep.txt', path.join(storeDir, base, 'a', 'b', 'link'));
  });
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  function session() {
    const view = new ClosureView({ storeDir, paths: [base] });
    const client = new FuseClient(inProcessTransport(new FuseServer(view, { zeroMessageOpendir: true })));
    return { view, client };
  }

  async function readFile(client: FuseClient, nodeid: number): Promise<string> {
    const { fh } = await client.open(nodeid);
    const text = (await client.read(nodeid, fh, 0, 100)).toString();
    await client.release(nodeid, fh);
    return text;
  }

  test('READDIRPLUS without a handle, one entry a call: every name byte for byte, sorted, each one opens', async () => {
    const { view, client } = session();
    await client.init();
    const names = await client.walk(`${base}/names`);
    const seen: Buffer[] = [];
    for (let off = 0; ; ) {
      const batch = await client.readdirplus(names.nodeid, 0, off, 180); // room for one entry
      if (batch.length === 0) break;
      expect(batch.length).toBe(1);
      const [d] = batch;
      expect(d.off).toBe(seen.length + 1);
      seen.push(d.name);
      if (d.entry.nodeid !== 0) expect(await readFile(client, d.entry.nodeid)).toBe(d.name.toString('hex'));
      off = d.off;
    }
    const sorted = [...oddNames].sort(Buffer.compare);
    expect(seen.map((n) => n.toString('hex'))).toEqual([Buffer.from('.'), Buffer.from('..'), ...sorted].map((n) => n.toString('hex')));
    view.close();
  });

  test('an empty directory lists . and .. with its own and its parent\'s inode numbers', async () => {
    const { view, client } = session();
    await client.init();
    const top = await client.lookup(1, base);
    const empty = await client.lookup(top.nodeid, 'empty');
    const all = await client.readdirAll(empty.nodeid, 0, 64);
    expect(all.map((d) => [d.name.toString(), d.ino, d.off])).toEqual([['.', empty.attr.ino, 1], ['..', top.attr.ino, 2]]);
    expect(await client.readdir(empty.nodeid, 0, 2)).toEqual([]);
    view.close();
  });

  test('.. climbs a deep tree, also after the guest forgot the directories above', async () => {
    const { view, client } = session();
    await client.init();
    const top = await client.lookup(1, base);
    const a = await client.lookup(top.nodeid, 'a');
    const b = await client.lookup(a.nodeid, 'b');
    const c = await client.lookup(b.nodeid, 'c');
    expect((await client.readdirAll(c.nodeid, 0)).find((d) => d.name.toString() === '..')?.ino).toBe(b.attr.ino);
    expect((await client.lookup(c.nodeid, '..')).nodeid).toBe(b.nodeid);
    expect((await client.lookup(b.nodeid, '..')).nodeid).toBe(a.nodeid);
    expect((await client.lookup(a.nodeid, '..')).nodeid).toBe(top.nodeid);
    await client.forget(b.nodeid, 2);
    await client.forget(a.nodeid, 2);
    const live = view.counts.nodes;
    const b2 = await client.lookup(c.nodeid, '..');
    expect(view.counts.nodes).toBe(live + 1); // a fresh node for the same directory...
    expect(b2.nodeid).toBe(b.nodeid); // ...under the same nodeid: it is the same file
    expect(b2.attr).toEqual(b.attr);
    const a2 = await client.lookup(b2.nodeid, '..');
    expect(a2.attr).toEqual(a.attr);
    expect((await client.lookup(a2.nodeid, '..')).nodeid).toBe(top.nodeid);
    view.close();
  });

  test('a node keeps working after the directories it was found under are forgotten', async () => {
    const { view, client } = session();
    await client.init();
    const dirs = [await client.lookup(1, base)];
    for (const name of ['a', 'b', 'c']) dirs.push(await client.lookup(dirs[dirs.length - 1].nodeid, name));
    const link = await client.lookup(dirs[2].nodeid, 'link');
    const deep = await client.lookup(dirs[3].nodeid, 'deep.txt');
    for (const dir of dirs) await client.forget(dir.nodeid, 1);
    expect(view.counts.nodes).toBe(3); // the root, link, deep.txt
    expect((await client.readlink(link.nodeid)).toString()).toBe('c/deep.txt');
    expect(await readFile(client, deep.nodeid)).toBe('deep\n');
    view.close();
  });

  test('hard-link twins are one node, whichever name found it first', async () => {
    const { view, client } = session();
    await client.init();
    const twin = await client.walk(`${base}/a/twin`);
    const deep = await client.walk(`${base}/a/b/c/deep.txt`);
    expect(deep.nodeid).toBe(twin.nodeid);
    await client.forget(twin.nodeid, 2);
    const viaDeep = await client.walk(`${base}/a/b/c/deep.txt`);
    expect(viaDeep.attr.ino).toBe(twin.attr.ino);
    expect(await readFile(client, viaDeep.nodeid)).toBe('deep\n');
    const viaTwin = await client.lookup((await client.walk(`${base}/a`)).nodeid, 'twin');
    expect(viaTwin.nodeid).toBe(viaDeep.nodeid);
    expect(await readFile(client, viaTwin.nodeid)).toBe('deep\n');
    view.close();
  });
});
