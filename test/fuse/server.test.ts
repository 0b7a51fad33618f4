/**
 * The dispatcher on plain Buffers: no ring, no store. A stub FileSystem records
 * what reaches it.
 */
import {
  Errno,
  FileSystem,
  FlushIn,
  FopenFlag,
  FsError,
  FuseServer,
  InHeader,
  InitFlag,
  Opcode,
  OpenIn,
  OpenOut,
  OutHeader,
  type Attr,
  type DaxMapper,
  type DirEntrySink,
  type Entry,
  type FuseLogger,
  type Opened,
  type RequestContext,
} from '../../src/fuse';
import { FuseClient, GUEST_INIT_FLAGS, cName, encode, errnoOf, inProcessTransport } from '../harness/fuse-client';

const attr = (ino: number, mode = 0o100444): Attr => ({
  ino, size: 3, blocks: 1, atime: 1, mtime: 1, ctime: 1, atimensec: 0, mtimensec: 0, ctimensec: 0,
  mode, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096, flags: 0,
});

class StubFs extends FileSystem {
  calls: string[] = [];
  forgets: [number, number][] = [];
  override lookup(_c: RequestContext, parent: number, name: Buffer): Entry {
    this.calls.push(`lookup ${parent} ${name.toString('hex')}`);
    if (name.toString() === 'missing') throw new FsError(Errno.ENOENT);
    if (name.toString() === 'bug') throw new Error('boom');
    return { nodeid: 10, generation: 0, attr: attr(10) };
  }
  override forget(nodeid: number, n: number): void {
    this.forgets.push([nodeid, n]);
  }
  override getattr(_c: RequestContext, nodeid: number, fh: number | undefined): Attr {
    this.calls.push(`getattr ${nodeid} ${fh}`);
    return attr(nodeid);
  }
  /** Nodeid 3 stands for a file changed since the guest saw it. */
  override open(_c: RequestContext, nodeid: number): Opened {
    this.calls.push(`open ${nodeid}`);
    return { fh: 7, unchanged: nodeid !== 3 };
  }
  override flush(_c: RequestContext, nodeid: number, fh: number): void {
    this.calls.push(`flush ${nodeid} ${fh}`);
  }
  override read(_c: RequestContext, _n: number, _fh: number, offset: number, dst: readonly Buffer[]): number {
    let n = 0;
    for (const b of dst) for (let i = 0; i < b.length && offset + n < 10; i++) b[i] = 0x30 + ((offset + n++) % 10);
    return n;
  }
  override getxattr(): Buffer {
    return Buffer.from('value');
  }
  override listxattr(): Buffer[] {
    return [Buffer.from('user.a'), Buffer.from('user.b')];
  }
  override readdir(_c: RequestContext, _n: number, _fh: number, offset: number, add: DirEntrySink): void {
    const names = ['.', '..', 'a', 'bb', 'ccc'];
    for (let i = offset; i < names.length; i++) if (!add({ name: Buffer.from(names[i]), ino: 100 + i, type: 8, off: i + 1 })) return;
  }
  override destroy(): void {
    this.calls.push('destroy');
  }
}

function recordingLogger(): FuseLogger & { lines: string[] } {
  const lines: string[] = [];
  const log = (level: string) => (_o: object, msg?: string) => void lines.push(`${level}: ${msg}`);
  return { lines, debug: log('debug'), warn: log('warn'), error: log('error') };
}

function raw(opcode: number, body: Buffer = Buffer.alloc(0), o: { len?: number; unique?: bigint; nodeid?: number } = {}): Buffer {
  const h = encode(InHeader, { len: o.len ?? 40 + body.length, opcode, unique: o.unique ?? 99n, nodeid: o.nodeid ?? 1, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
  return Buffer.concat([h, body]);
}

function handleRaw(server: FuseServer, readable: Buffer[], writable = [Buffer.alloc(16), Buffer.alloc(4096)]) {
  const used = server.handle(1, { readable, writable });
  const all = Buffer.concat(writable);
  return { used, header: used >= 16 ? OutHeader.decode(all, 0) : undefined, payload: all.subarray(16, used) };
}

async function setup(opts: ConstructorParameters<typeof FuseServer>[1] = {}) {
  const fs = new StubFs();
  const logger = recordingLogger();
  const server = new FuseServer(fs, { logger, ...opts });
  const client = new FuseClient(inProcessTransport(server));
  await client.init();
  return { fs, server, client, logger };
}

describe('INIT', () => {
  test('negotiates 7.38 with the Debian 6.1 guest and offers only what a read-only store wants', async () => {
    const server = new FuseServer(new StubFs());
    const init = await new FuseClient(inProcessTransport(server)).init();
    expect([init.major, init.minor, init.timeGran, init.maxPages, init.maxReadahead]).toEqual([7, 38, 1, 256, 128 * 1024]);
    expect(init.maxWrite).toBe(256 * 4096);
    const want = [InitFlag.ASYNC_READ, InitFlag.DO_READDIRPLUS, InitFlag.READDIRPLUS_AUTO, InitFlag.PARALLEL_DIROPS, InitFlag.CACHE_SYMLINKS, InitFlag.EXPORT_SUPPORT, InitFlag.MAX_PAGES, InitFlag.INIT_EXT];
    for (const f of want) expect(init.flags & f).toBe(f);
    const never = [InitFlag.POSIX_LOCKS, InitFlag.FLOCK_LOCKS, InitFlag.WRITEBACK_CACHE, InitFlag.ATOMIC_O_TRUNC, InitFlag.AUTO_INVAL_DATA, InitFlag.HANDLE_KILLPRIV, InitFlag.HANDLE_KILLPRIV_V2, InitFlag.POSIX_ACL, InitFlag.MAP_ALIGNMENT];
    for (const f of never) expect(init.flags & f).toBe(0);
    expect((init.flags & ~GUEST_INIT_FLAGS) >>> 0).toBe(0); // nothing the guest did not offer
    expect(server.initialized).toBe(true);
  });

  test('takes the lower minor, and the guest readahead only up to our cap', async () => {
    const client = new FuseClient(inProcessTransport(new FuseServer(new StubFs(), { maxReadahead: 65536, maxPages: 64 })));
    expect(await client.init({ minor: 36 })).toMatchObject({ minor: 36, maxReadahead: 65536, maxPages: 64 });
    expect(await client.init({ minor: 45, maxReadahead: 4096 })).toMatchObject({ minor: 38, maxReadahead: 4096 });
  });

  test('a pre-7.23 guest gets the 24-byte reply; a pre-7.36 16-byte init_in is accepted', async () => {
    const server = new FuseServer(new StubFs());
    const body = Buffer.alloc(16);
    body.writeUInt32LE(7, 0);
    body.writeUInt32LE(22, 4);
    body.writeUInt32LE(InitFlag.ASYNC_READ | InitFlag.INIT_EXT, 12);
    const r = handleRaw(server, [raw(Opcode.INIT, body)]);
    expect(r.used).toBe(16 + 24);
    expect(r.payload.readUInt32LE(4)).toBe(22);
    expect(r.payload.readUInt32LE(12)).toBe(InitFlag.ASYNC_READ | InitFlag.INIT_EXT);
  });

  test('a newer major gets our version to retry with; an older one EPROTO', async () => {
    const client = new FuseClient(inProcessTransport(new FuseServer(new StubFs())));
    expect(await client.init({ major: 8 })).toMatchObject({ major: 7, minor: 38, flags: 0 });
    expect(await errnoOf(client.init({ major: 6 }))).toBe(Errno.EPROTO);
    expect(await errnoOf(client.init({ minor: 5 }))).toBe(Errno.EPROTO);
  });

  test('DAX: MAP_ALIGNMENT with 4 KiB alignment only with a mapper', async () => {
    const dax: DaxMapper = { setupMapping: () => 0, removeMapping: () => 0 };
    const client = new FuseClient(inProcessTransport(new FuseServer(new StubFs(), { dax })));
    // The guest offers MAP_ALIGNMENT only when mounted with -o dax.
    const init = await client.init({ flags: GUEST_INIT_FLAGS | InitFlag.MAP_ALIGNMENT });
    expect(init.flags & InitFlag.MAP_ALIGNMENT).toBe(InitFlag.MAP_ALIGNMENT);
    expect(init.mapAlignment).toBe(12);
    const plain = await client.init();
    expect([plain.flags & InitFlag.MAP_ALIGNMENT, plain.mapAlignment]).toEqual([0, 0]);
  });

  test('requests before INIT get EIO; DESTROY ends the session', async () => {
    const { fs, client } = await setup();
    await client.destroy();
    expect(fs.calls).toContain('destroy');
    expect(await errnoOf(client.getattr(1))).toBe(Errno.EIO);
    await client.init();
    await client.getattr(1);
  });
});

describe('dispatch', () => {
  test('requests served are counted by opcode name; unknown opcodes are not', async () => {
    const { server, client } = await setup();
    await client.lookup(1, 'a');
    await client.lookup(1, 'a');
    await client.getattr(2);
    await client.request(9999, 1, [], 16);
    expect(server.requestCounts()).toEqual({ INIT: 1, LOOKUP: 2, GETATTR: 1 });
  });

  test('unknown and unsupported opcodes get ENOSYS', async () => {
    const { client } = await setup();
    for (const op of [0, 7, 19, Opcode.GETLK, Opcode.SETLK, Opcode.IOCTL, Opcode.POLL, Opcode.BMAP, Opcode.STATX, 4096, 0xffffffff]) {
      expect(await errnoOf(client.call(op, 1, [Buffer.alloc(64)], 64))).toBe(Errno.ENOSYS);
    }
  });

  test('a header len that disagrees with the chain is EINVAL, with the unique echoed', async () => {
    const { server } = await setup();
    for (const len of [39, 41, 0, 0xffffffff]) {
      const r = handleRaw(server, [raw(Opcode.GETATTR, Buffer.alloc(16), { len, unique: 1234n })]);
      expect(r.header).toEqual({ len: 16, error: -Errno.EINVAL, unique: 1234n });
    }
  });

  test('extensions (total_extlen) are not read as arguments, and may not exceed the request', async () => {
    const { fs, server } = await setup();
    const body = Buffer.concat([cName('name'), Buffer.alloc(3), Buffer.from('0800000020000000', 'hex')]);
    const req = raw(Opcode.LOOKUP, body);
    req.writeUInt16LE(1, 36);
    expect(handleRaw(server, [req]).header?.error).toBe(0);
    expect(fs.calls).toContain(`lookup 1 ${Buffer.from('name').toString('hex')}`);
    req.writeUInt16LE(3, 36);
    expect(handleRaw(server, [req]).header?.error).toBe(-Errno.EINVAL);
  });

  test('a chain shorter than fuse_in_header gets EINVAL with unique 0', async () => {
    const { server } = await setup();
    expect(handleRaw(server, [Buffer.alloc(39)]).header).toEqual({ len: 16, error: -Errno.EINVAL, unique: 0n });
    expect(handleRaw(server, []).header).toEqual({ len: 16, error: -Errno.EINVAL, unique: 0n });
  });

  test('no room for fuse_out_header: nothing is written, 0 returned', async () => {
    const { server } = await setup();
    const writable = [Buffer.alloc(15)];
    expect(server.handle(1, { readable: [raw(Opcode.GETATTR, Buffer.alloc(16))], writable })).toBe(0);
    expect(writable[0].equals(Buffer.alloc(15))).toBe(true);
  });

  test('a reply that does not fit is ERANGE', async () => {
    const { server } = await setup();
    const r = handleRaw(server, [raw(Opcode.GETATTR, Buffer.alloc(16))], [Buffer.alloc(16), Buffer.alloc(100)]);
    expect(r.header?.error).toBe(-Errno.ERANGE);
  });

  test('truncated structs are EINVAL', async () => {
    const { client } = await setup();
    expect(await errnoOf(client.call(Opcode.READ, 1, [Buffer.alloc(39)], 100))).toBe(Errno.EINVAL);
    expect(await errnoOf(client.call(Opcode.OPEN, 1, [Buffer.alloc(7)], 100))).toBe(Errno.EINVAL);
    expect(await errnoOf(client.call(Opcode.ACCESS, 1, [], 100))).toBe(Errno.EINVAL);
  });

  test('structs may straddle readable buffers', async () => {
    const { fs, server } = await setup();
    const full = raw(Opcode.GETATTR, Buffer.from('0100000000000000' + '0500000000000000', 'hex'), { nodeid: 3 });
    const pieces = [full.subarray(0, 7), full.subarray(7, 45), full.subarray(45)];
    const r = handleRaw(server, pieces);
    expect(r.header?.error).toBe(0);
    expect(fs.calls).toContain('getattr 3 5');
  });

  test('a FileSystem bug is EIO and logged, never thrown', async () => {
    const { client, logger } = await setup();
    expect(await errnoOf(client.lookup(1, 'bug'))).toBe(Errno.EIO);
    expect(logger.lines.some((l) => l.startsWith('error:'))).toBe(true);
  });
});

describe('names', () => {
  test.each([
    ['no NUL', Buffer.from('abc'), Errno.EINVAL],
    ['empty', Buffer.from([0]), Errno.EINVAL],
    ['a slash', cName('a/b'), Errno.EINVAL],
    ['a slash, then more bytes', cName('/abcdef'), Errno.EINVAL],
    ['a slash and no NUL', Buffer.from('a/b'), Errno.EINVAL],
    ['256 bytes', cName('x'.repeat(256)), Errno.ENAMETOOLONG],
  ])('LOOKUP with %s is rejected before the FileSystem sees it', async (_what, body, errno) => {
    const { fs, client } = await setup();
    expect(await errnoOf(client.call(Opcode.LOOKUP, 1, [body], 128))).toBe(errno);
    expect(fs.calls.filter((c) => c.startsWith('lookup'))).toEqual([]);
  });

  test('the name ends at the first NUL; bytes are passed through unchanged', async () => {
    const { fs, client } = await setup();
    await client.call(Opcode.LOOKUP, 1, [Buffer.from([0xff, 0x0a, 0x20, 0, 0x41, 0x2f, 0])], 128);
    expect(fs.calls).toContain('lookup 1 ff0a20');
  });
});

describe('replies', () => {
  test('LOOKUP fills fuse_entry_out with the cache policy timeouts', async () => {
    for (const [cache, t] of [['always', 86400], ['auto', 1], ['never', 0]] as const) {
      const { client } = await setup({ cache });
      const e = await client.lookup(1, 'x');
      expect([e.nodeid, e.entryValid, e.attrValid, e.attr.ino]).toEqual([10, t, t, 10]);
    }
  });

  test('ENOENT is a cached negative entry, except with cache=never', async () => {
    const a = await setup({ cache: 'auto' });
    const r = await a.client.request(Opcode.LOOKUP, 1, [cName('missing')], 128);
    expect([r.header.error, r.payload.readBigUInt64LE(0), r.payload.readBigUInt64LE(16)]).toEqual([0, 0n, 1n]);
    const n = await setup({ cache: 'never' });
    expect(await errnoOf(n.client.lookup(1, 'missing'))).toBe(Errno.ENOENT);
  });

  test('OPEN flags follow the cache policy; files never ask for a FLUSH', async () => {
    const flags = async (cache: 'always' | 'auto' | 'never', nodeid: number) => (await (await setup({ cache })).client.open(nodeid)).openFlags;
    expect(await flags('always', 2)).toBe(FopenFlag.KEEP_CACHE | FopenFlag.NOFLUSH);
    expect(await flags('always', 3)).toBe(FopenFlag.KEEP_CACHE | FopenFlag.NOFLUSH);
    // auto: the guest keeps its pages of an unchanged file, and drops those of a changed one.
    expect(await flags('auto', 2)).toBe(FopenFlag.KEEP_CACHE | FopenFlag.NOFLUSH);
    expect(await flags('auto', 3)).toBe(FopenFlag.NOFLUSH);
    expect(await flags('never', 2)).toBe(FopenFlag.DIRECT_IO | FopenFlag.NOFLUSH);
  });

  test('zero-message open: under cache=always a guest that supports it is told to open files itself', async () => {
    const O_WRONLY = 1;
    const { fs, client } = await setup({ cache: 'always', zeroMessageOpen: true });
    expect((await client.request(Opcode.OPEN, 2, [encode(OpenIn, { flags: 0, openFlags: 0 })], OpenOut.SIZE)).header.error).toBe(-Errno.ENOSYS);
    // It sends FLUSH on close then (no FOPEN_NOFLUSH without an OPEN): ENOSYS once stops that too.
    expect(await errnoOf(client.flush(2, 0))).toBe(Errno.ENOSYS);
    // A write open still reaches the FileSystem (whose EROFS the guest must see).
    expect((await client.request(Opcode.OPEN, 2, [encode(OpenIn, { flags: O_WRONLY, openFlags: 0 })], OpenOut.SIZE)).header.error).toBe(0);
    expect(fs.calls.filter((c) => /^(open|flush)/.test(c))).toEqual(['open 2']);
  });

  test('zero-message open only under cache=always, only for a guest that offers it, only for the session that did', async () => {
    const opened = async (c: FuseClient) => (await c.request(Opcode.OPEN, 2, [encode(OpenIn, { flags: 0, openFlags: 0 })], OpenOut.SIZE)).header.error;
    for (const cache of ['auto', 'never'] as const) expect(await opened((await setup({ cache, zeroMessageOpen: true })).client)).toBe(0);
    expect(await opened((await setup({ cache: 'always' })).client)).toBe(0);
    const { client } = await setup({ cache: 'always', zeroMessageOpen: true });
    expect(await opened(client)).toBe(-Errno.ENOSYS);
    // A guest kernel without FUSE_NO_OPEN_SUPPORT would fail the open(2) on ENOSYS.
    await client.destroy();
    await client.init({ flags: GUEST_INIT_FLAGS & ~InitFlag.NO_OPEN_SUPPORT });
    expect(await opened(client)).toBe(0);
    expect((await client.request(Opcode.FLUSH, 2, [encode(FlushIn, { fh: 7, lockOwner: 0n })])).header.error).toBe(0);
  });

  test('cache=never does not offer CACHE_SYMLINKS', async () => {
    const init = await new FuseClient(inProcessTransport(new FuseServer(new StubFs(), { cache: 'never' }))).init();
    expect(init.flags & InitFlag.CACHE_SYMLINKS).toBe(0);
  });

  test('GETATTR passes fh only with FUSE_GETATTR_FH', async () => {
    const { fs, client } = await setup();
    await client.getattr(4);
    await client.getattr(4, 9);
    expect(fs.calls.filter((c) => c.startsWith('getattr'))).toEqual(['getattr 4 undefined', 'getattr 4 9']);
  });

  test('READ returns only what the file has and never more than asked or room', async () => {
    const { client } = await setup();
    expect((await client.read(2, 7, 0, 4)).toString()).toBe('0123');
    expect((await client.read(2, 7, 6, 100)).toString()).toBe('6789');
    expect((await client.read(2, 7, 10, 100)).length).toBe(0);
  });

  test('READDIR returns exactly the entries that fit, and continues from a cookie', async () => {
    const { client } = await setup();
    const first = await client.readdir(1, 1, 0, 64); // two 32-byte records
    expect(first.map((d) => d.name.toString())).toEqual(['.', '..']);
    const rest = await client.readdir(1, 1, first[1].off, 4096);
    expect(rest.map((d) => [d.name.toString(), d.off, d.ino])).toEqual([['a', 3, 102], ['bb', 4, 103], ['ccc', 5, 104]]);
    expect(await client.readdir(1, 1, 5, 4096)).toEqual([]);
    expect(await client.readdir(1, 1, 0, 31)).toEqual([]);
  });

  test('READDIRPLUS looks up what fits, nothing for . and ..', async () => {
    const { fs, client } = await setup();
    const all = await client.readdirplus(1, 1, 0, 4096);
    expect(all.map((d) => [d.name.toString(), d.entry.nodeid])).toEqual([['.', 0], ['..', 0], ['a', 10], ['bb', 10], ['ccc', 10]]);
    expect(fs.calls.filter((c) => c.startsWith('lookup')).length).toBe(3);
    fs.calls = [];
    const part = await client.readdirplus(1, 1, 2, 160 + 160 + 100);
    expect(part.map((d) => d.name.toString())).toEqual(['a', 'bb']);
    expect(fs.calls.filter((c) => c.startsWith('lookup')).length).toBe(2);
  });

  test('READDIRPLUS: an entry whose lookup fails goes out bare; a FileSystem bug ends the reply', async () => {
    class Vanishing extends StubFs {
      override readdir(_c: RequestContext, _n: number, _fh: number, offset: number, add: DirEntrySink): void {
        const names = ['.', '..', 'a', 'missing', 'bb', 'bug', 'ccc'];
        for (let i = offset; i < names.length; i++) if (!add({ name: Buffer.from(names[i]), ino: 100 + i, type: 8, off: i + 1 })) return;
      }
    }
    const client = new FuseClient(inProcessTransport(new FuseServer(new Vanishing())));
    await client.init();
    const first = await client.readdirplus(1, 1, 0, 4096);
    expect(first.map((d) => [d.name.toString(), d.entry.nodeid])).toEqual([['.', 0], ['..', 0], ['a', 10], ['missing', 0], ['bb', 10]]);
    expect(await errnoOf(client.readdirplus(1, 1, 5, 4096))).toBe(Errno.EIO);
  });

  test('GETXATTR/LISTXATTR size protocol', async () => {
    const { client } = await setup();
    expect((await client.getxattr(1, 'user.a', 0)).readUInt32LE(0)).toBe(5);
    expect(await errnoOf(client.getxattr(1, 'user.a', 4))).toBe(Errno.ERANGE);
    expect((await client.getxattr(1, 'user.a', 5)).toString()).toBe('value');
    expect((await client.listxattr(1, 0)).readUInt32LE(0)).toBe(14);
    expect((await client.listxattr(1, 14)).toString()).toBe('user.a\0user.b\0');
    expect(await errnoOf(client.listxattr(1, 13))).toBe(Errno.ERANGE);
  });

  test('unimplemented FileSystem ops are ENOSYS (the defaults)', async () => {
    const { client } = await setup();
    expect(await errnoOf(client.readlink(2))).toBe(Errno.ENOSYS);
    expect(await errnoOf(client.statfs())).toBe(Errno.ENOSYS);
    expect(await errnoOf(client.call(Opcode.MKDIR, 1, [Buffer.alloc(8), cName('d')]))).toBe(Errno.ENOSYS);
  });
});

describe('no-reply requests', () => {
  test('FORGET, BATCH_FORGET and INTERRUPT return 0 and write nothing', async () => {
    const { fs, server } = await setup();
    const writable = [Buffer.alloc(16), Buffer.alloc(64)];
    const forget = raw(Opcode.FORGET, Buffer.from('0200000000000000', 'hex'), { nodeid: 5 });
    expect(server.handle(0, { readable: [forget], writable })).toBe(0);
    const batch = raw(Opcode.BATCH_FORGET, Buffer.from('02000000' + '00000000' + '0600000000000000' + '0100000000000000' + '0700000000000000' + '0300000000000000', 'hex'));
    expect(server.handle(0, { readable: [batch], writable })).toBe(0);
    expect(server.handle(0, { readable: [raw(Opcode.INTERRUPT, Buffer.alloc(8))], writable })).toBe(0);
    expect(Buffer.concat(writable).equals(Buffer.alloc(80))).toBe(true);
    expect(fs.forgets).toEqual([[5, 2], [6, 1], [7, 3]]);
  });

  test('BATCH_FORGET trusts its count only as far as the request has bytes', async () => {
    const { fs, server, logger } = await setup();
    const batch = raw(Opcode.BATCH_FORGET, Buffer.from('ffffffff' + '00000000' + '0600000000000000' + '0100000000000000', 'hex'));
    expect(server.handle(0, { readable: [batch], writable: [] })).toBe(0);
    expect(fs.forgets).toEqual([[6, 1]]);
    expect(logger.lines.some((l) => l.startsWith('warn:'))).toBe(true);
  });

  test('a malformed FORGET still gets no reply', async () => {
    const { server } = await setup();
    expect(server.handle(0, { readable: [raw(Opcode.FORGET, Buffer.alloc(3))], writable: [Buffer.alloc(64)] })).toBe(0);
    expect(server.handle(0, { readable: [raw(Opcode.FORGET, Buffer.alloc(8), { len: 10 })], writable: [Buffer.alloc(64)] })).toBe(0);
  });
});

describe('DAX mapping requests', () => {
  test('ENOSYS without a DaxMapper', async () => {
    const { client } = await setup();
    expect(await errnoOf(client.call(Opcode.SETUPMAPPING, 2, [Buffer.alloc(40)]))).toBe(Errno.ENOSYS);
    expect(await errnoOf(client.call(Opcode.REMOVEMAPPING, 2, [Buffer.alloc(4)]))).toBe(Errno.ENOSYS);
  });

  test('go to the mapper with exact values; its errno is the reply', async () => {
    const calls: unknown[] = [];
    const dax: DaxMapper = {
      setupMapping: (...a) => (calls.push(['setup', ...a]), 0),
      removeMapping: (m, l) => (calls.push(['remove', m, l]), m === 0x600000n ? Errno.EINVAL : 0),
    };
    const { client } = await setup({ dax });
    const setup1 = Buffer.from('ffffffffffffffff' + '0000200000000000' + '0000200000000000' + '0200000000000000' + '0000400000000000', 'hex');
    await client.call(Opcode.SETUPMAPPING, 5, [setup1]);
    const remove = Buffer.from('02000000' + '0000400000000000' + '0000200000000000' + '0000600000000000' + '0000200000000000', 'hex');
    expect(await errnoOf(client.call(Opcode.REMOVEMAPPING, 5, [remove]))).toBe(Errno.EINVAL);
    expect(calls).toEqual([
      ['setup', 5, 0xffffffffffffffffn, 0x200000n, 0x200000n, 0x400000n, 2n],
      ['remove', 0x400000n, 0x200000n],
      ['remove', 0x600000n, 0x200000n],
    ]);
    expect(await errnoOf(client.call(Opcode.REMOVEMAPPING, 5, [Buffer.from('03000000' + '00'.repeat(32), 'hex')]))).toBe(Errno.EINVAL);
  });
});

describe('READ completed later (FileSystem.readAsync)', () => {
  /** readAsync answers with whatever the test says, on a later turn of the event loop. */
  class AsyncFs extends StubFs {
    outcome: { err: Error | null; fill: number } = { err: null, fill: 0 };
    override readAsync(_c: RequestContext, _n: number, _fh: number, _offset: number, dst: readonly Buffer[], done: (err: Error | null, n: number) => void): void {
      const { err, fill } = this.outcome;
      setImmediate(() => {
        if (err === null) dst[0].fill(0x61, 0, fill);
        done(err, fill);
      });
    }
  }

  function readIn(size: number): Buffer {
    const b = Buffer.alloc(40);
    b.writeBigUInt64LE(7n, 0);
    b.writeUInt32LE(size, 16);
    return b;
  }

  async function readLater(server: FuseServer, size: number) {
    const writable = [Buffer.alloc(16), Buffer.alloc(size)];
    let complete!: (n: number) => void;
    const done = new Promise<number>((r) => (complete = r));
    const returned = server.handle(1, { readable: [raw(Opcode.READ, readIn(size), { unique: 5n })], writable }, complete);
    const used = await done;
    return { returned, used, header: OutHeader.decode(writable[0], 0), data: writable[1] };
  }

  async function asyncSetup() {
    const fs = new AsyncFs();
    const logger = recordingLogger();
    const server = new FuseServer(fs, { logger, offloadReadMin: 4096 });
    await new FuseClient(inProcessTransport(server)).init();
    return { fs, server, logger };
  }

  test('the reply header and the data arrive through the completion', async () => {
    const { fs, server } = await asyncSetup();
    fs.outcome = { err: null, fill: 5000 };
    const r = await readLater(server, 8192);
    expect(r.returned).toBe(-1);
    expect(r.used).toBe(16 + 5000);
    expect(r.header).toEqual({ len: 16 + 5000, error: 0, unique: 5n });
    expect(r.data[4999]).toBe(0x61);
    expect(r.data[5000]).toBe(0);
  });

  test('an errno from the host becomes the error reply', async () => {
    const { fs, server, logger } = await asyncSetup();
    fs.outcome = { err: new FsError(Errno.EIO), fill: 0 };
    const r = await readLater(server, 8192);
    expect(r.used).toBe(16);
    expect(r.header.error).toBe(-Errno.EIO);
    expect(logger.lines.filter((l) => l.startsWith('error'))).toEqual([]);
  });

  test('a bug (an error without errno) is EIO and a log line, and the completion still comes', async () => {
    const { fs, server, logger } = await asyncSetup();
    fs.outcome = { err: new Error('bug in readAsync'), fill: 0 };
    const r = await readLater(server, 8192);
    expect(r.header.error).toBe(-Errno.EIO);
    expect(logger.lines).toContain('error: FUSE handler failed');
  });

  test('below offloadReadMin, or with no completion offered, READ is read() in place', async () => {
    const { server } = await asyncSetup();
    const r = handleRaw(server, [raw(Opcode.READ, readIn(8192))], [Buffer.alloc(16), Buffer.alloc(8192)]);
    expect(r.used).toBe(16 + 10); // StubFs.read: 10 bytes
    const small = server.handle(1, { readable: [raw(Opcode.READ, readIn(100))], writable: [Buffer.alloc(16), Buffer.alloc(100)] }, () => {
      throw new Error('not to be called');
    });
    expect(small).toBe(16 + 10);
  });
});
