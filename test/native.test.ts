/**
 * The native addon through its facade, with real syscalls: fd passing, shared
 * mappings and their lifetime, eventfd readiness, fd-relative file access, and
 * the shape of every error.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as native from '../src/native';

const ADDON = path.resolve(__dirname, '..', 'build', 'Release', 'closurefs_native.node');
const { constants: C } = native;

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-native-'));
}

function expectThrowName(f: () => unknown, name: string): void {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect((caught as Error | undefined)?.name).toBe(name);
}

function recvAll(fd: number, size: number): { data: Buffer; fds: number[] } {
  const buf = Buffer.alloc(size);
  const r = native.recvmsg(fd, buf);
  if (r === null) throw new Error('nothing to receive');
  return { data: buf.subarray(0, r.bytes), fds: r.fds };
}

function expectErrno(f: () => unknown, code: string, syscall?: string): void {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  // Native errors come from the main realm, so match by shape, not instanceof.
  expect(Object.prototype.toString.call(caught)).toBe('[object Error]');
  const err = caught as NodeJS.ErrnoException;
  expect(err.code).toBe(code);
  expect(typeof err.errno).toBe('number');
  expect(err.errno).toBeGreaterThan(0);
  if (syscall) expect(err.syscall).toBe(syscall);
}

describe('UNIX sockets and SCM_RIGHTS', () => {
  test('several fds cross a socketpair in one message, both directions, and stay usable', () => {
    const [a, b] = native.socketpair();
    const memfd = native.memfdCreate('payload', 4096);
    fs.writeSync(memfd, 'shared bytes', 0);
    const efd = native.eventfd();
    expect(native.sendmsg(a, Buffer.from('hello'), [memfd, efd])).toBe(5);
    const got = recvAll(b, 64);
    expect(got.data.toString()).toBe('hello');
    expect(got.fds).toHaveLength(2);
    // The received fds are new numbers for the same open files.
    expect(got.fds).not.toContain(memfd);
    const back = Buffer.alloc(12);
    fs.readSync(got.fds[0], back, 0, 12, 0);
    expect(back.toString()).toBe('shared bytes');
    native.eventfdWrite(got.fds[1], 3);
    expect(native.eventfdRead(efd)).toBe(3n);

    // And back the other way.
    native.sendmsg(b, Buffer.from('x'), [got.fds[0]]);
    const reply = recvAll(a, 8);
    expect(reply.fds).toHaveLength(1);
    fs.readSync(reply.fds[0], back, 0, 6, 0);
    expect(back.subarray(0, 6).toString()).toBe('shared');
    for (const fd of [a, b, memfd, efd, ...got.fds, ...reply.fds]) native.close(fd);
  });

  test('listen / connect / accept over a socket path, fds in both directions', () => {
    const dir = tmpdir();
    const sock = path.join(dir, 'vhost.sock');
    const lfd = native.listenUnix(sock);
    expect(native.acceptUnix(lfd)).toBeNull(); // nothing pending: EAGAIN maps to null
    const client = native.connectUnix(sock);
    const server = native.acceptUnix(lfd);
    expect(server).not.toBeNull();
    const s = server as number;
    expect(native.recvmsg(s, Buffer.alloc(4))).toBeNull(); // non-blocking, nothing yet

    const fds = [native.eventfd(), native.eventfd(), native.eventfd()];
    native.sendmsg(client, Buffer.from([1, 2, 3]), fds);
    const got = recvAll(s, 16);
    expect([...got.data]).toEqual([1, 2, 3]);
    expect(got.fds).toHaveLength(3);
    got.fds.forEach((fd, i) => native.eventfdWrite(fd, i + 1));
    expect(fds.map((fd) => native.eventfdRead(fd))).toEqual([1n, 2n, 3n]);

    native.sendmsg(s, Buffer.from('ok'), [got.fds[2]]);
    const back = recvAll(client, 16);
    native.eventfdWrite(back.fds[0], 9);
    expect(native.eventfdRead(fds[2])).toBe(9n);

    native.close(client);
    expect(recvAll(s, 4).data.length).toBe(0); // end of stream is 0 bytes, not an error
    for (const fd of [lfd, s, ...fds, ...got.fds, ...back.fds]) native.close(fd);
    expectErrno(() => native.listenUnix(sock), 'EADDRINUSE', 'bind');
    fs.rmSync(dir, { recursive: true });
  });

  test('a closed peer is EPIPE, not a SIGPIPE that kills the process', () => {
    const [a, b] = native.socketpair();
    native.close(b);
    expectErrno(() => native.sendmsg(a, Buffer.from('x')), 'EPIPE', 'sendmsg');
    native.close(a);
  });
});

describe('shared mappings', () => {
  test('a memfd mapped twice is coherent', () => {
    const fd = native.memfdCreate('guest-ram', 2 * native.PAGE_SIZE);
    const m1 = native.mmap(fd, 2 * native.PAGE_SIZE, 0, { writable: true });
    const m2 = native.mmap(fd, native.PAGE_SIZE, native.PAGE_SIZE, { writable: true });
    const v1 = Buffer.from(m1);
    const v2 = Buffer.from(m2);
    v1.write('through the first', native.PAGE_SIZE);
    expect(v2.toString('utf8', 0, 17)).toBe('through the first');
    v2.writeUInt32LE(0xdeadbeef, 100);
    expect(v1.readUInt32LE(native.PAGE_SIZE + 100)).toBe(0xdeadbeef);
    native.munmap(m1);
    native.munmap(m2);
    native.close(fd);
  });

  test('after munmap every view has length 0 and reading it does not crash', () => {
    const fd = native.memfdCreate('gone', native.PAGE_SIZE);
    const ab = native.mmap(fd, native.PAGE_SIZE, 0, { writable: true });
    const view = new Uint8Array(ab);
    view[10] = 7;
    native.munmap(ab);
    expect(ab.byteLength).toBe(0);
    expect(view.length).toBe(0);
    expect(view[10]).toBeUndefined();
    expectThrowName(() => native.munmap(ab), 'TypeError'); // not a live mapping any more
    native.close(fd);
  });

  test('mapping beyond the end of a file, a zero length, or a bad fd is an error', () => {
    const fd = native.memfdCreate('short', native.PAGE_SIZE);
    expectErrno(() => native.mmap(fd, 2 * native.PAGE_SIZE), 'ENXIO', 'mmap');
    expectErrno(() => native.mmap(fd, native.PAGE_SIZE, native.PAGE_SIZE), 'ENXIO', 'mmap');
    expectErrno(() => native.mmap(fd, 0), 'EINVAL', 'mmap');
    native.close(fd);
    expectErrno(() => native.mmap(fd, native.PAGE_SIZE), 'EBADF', 'fstat');
  });

  test('mmapFixed fills a reserved window and puts inaccessible memory back', () => {
    const fd = native.memfdCreate('file', native.PAGE_SIZE);
    fs.writeSync(fd, 'window bytes', 0);
    const win = native.mmapReserve(4 * native.PAGE_SIZE);
    native.mmapFixed(win, native.PAGE_SIZE, native.PAGE_SIZE, fd, 0);
    expect(Buffer.from(win, native.PAGE_SIZE, 12).toString()).toBe('window bytes');
    native.mmapFixed(win, native.PAGE_SIZE, native.PAGE_SIZE, -1, 0);
    expectErrno(() => native.mmapFixed(win, 100, native.PAGE_SIZE, fd, 0), 'EINVAL', 'mmap');
    expectErrno(() => native.mmapFixed(win, 0, 8 * native.PAGE_SIZE, fd, 0), 'EINVAL', 'mmap');
    native.munmap(win);
    native.close(fd);
  });

  test('fence is callable (a full barrier has no observable result of its own)', () => {
    expect(native.fence()).toBeUndefined();
  });
});

describe('eventfd and the poll watcher', () => {
  test('a write from JS fires the watcher with the counter', async () => {
    const efd = native.eventfd();
    const seen = await new Promise<bigint>((resolve) => {
      const w = new native.FdWatcher(efd, () => {
        const v = native.eventfdRead(efd);
        w.close();
        resolve(v);
      }).start();
      native.eventfdWrite(efd, 5);
      native.eventfdWrite(efd, 2);
    });
    expect(seen).toBe(7n);
    expect(native.eventfdRead(efd)).toBe(0n); // drained: EAGAIN maps to 0n
    native.close(efd);
  });

  test('a write from a second process fires the watcher', async () => {
    const efd = native.eventfd();
    const seen = new Promise<bigint>((resolve) => {
      const w = new native.FdWatcher(efd, () => {
        w.close();
        resolve(native.eventfdRead(efd));
      }).start();
    });
    const child = spawn(process.execPath, ['-e', `require(${JSON.stringify(ADDON)}).eventfdWrite(3, 41)`], {
      stdio: ['ignore', 'ignore', 'inherit', efd],
    });
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    expect(code).toBe(0);
    expect(await seen).toBe(41n);
    native.close(efd);
  });

  test('a stopped watcher lets the process exit', () => {
    const script = `
      const n = require(${JSON.stringify(ADDON)});
      const fd = n.eventfd(0);
      const w = new n.Watcher(fd, () => {});
      w.start();
      setTimeout(() => w.stop(), 50);`;
    const r = spawnSync(process.execPath, ['-e', script], { timeout: 10_000 });
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(0);
  });

  test('a started watcher keeps the process alive until it is closed', () => {
    const script = `
      const n = require(${JSON.stringify(ADDON)});
      const fd = n.eventfd(0);
      const w = new n.Watcher(fd, () => { n.eventfdRead(fd); w.close(); process.stdout.write('fired'); });
      w.start();
      setTimeout(() => n.eventfdWrite(fd, 1), 300);`;
    const r = spawnSync(process.execPath, ['-e', script], { timeout: 10_000 });
    expect(r.status).toBe(0);
    expect(r.stdout.toString()).toBe('fired');
  });

  test('a watcher on a bad fd throws instead of aborting', () => {
    expectThrowName(() => new native.FdWatcher(987654, () => undefined), 'Error');
  });
});

describe('fd-relative file access', () => {
  let dir: string;
  let dirfd: number;
  const odd = ['with space', 'new\nline', 'ünïcødé-✓', '-leading-dash', `quo"te's`];

  beforeAll(() => {
    dir = tmpdir();
    fs.writeFileSync(path.join(dir, 'file'), 'contents');
    fs.symlinkSync('file', path.join(dir, 'link'));
    fs.mkdirSync(path.join(dir, 'sub'));
    for (const name of odd) fs.writeFileSync(path.join(dir, 'sub', name), name);
    dirfd = native.openat(C.AT_FDCWD, dir, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC);
  });

  afterAll(() => {
    native.close(dirfd);
    fs.rmSync(dir, { recursive: true });
  });

  test('openat with O_NOFOLLOW on a symlink fails with ELOOP; O_PATH opens the link itself', () => {
    expectErrno(() => native.openat(dirfd, 'link', C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC), 'ELOOP', 'openat');
    const fd = native.openat(dirfd, 'link', C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC);
    expect(native.statx(fd, '').mode & C.S_IFMT).toBe(C.S_IFLNK);
    native.close(fd);
  });

  test('openat2 stays beneath its directory and refuses symlinks', () => {
    const R = C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS;
    const fd = native.openat2(dirfd, 'sub/with space', C.O_RDONLY | C.O_CLOEXEC, R);
    expect(fs.readFileSync(fd, 'utf8')).toBe('with space');
    native.close(fd);
    expectErrno(() => native.openat2(dirfd, '../etc', C.O_PATH, R), 'EXDEV', 'openat2');
    expectErrno(() => native.openat2(dirfd, 'link', C.O_RDONLY, R), 'ELOOP', 'openat2');
  });

  test('getdents64 lists odd names byte-exactly', () => {
    const fd = native.openat(dirfd, 'sub', C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC);
    const names = native
      .readDirectory(fd)
      .map((d) => d.name.toString('utf8'))
      .filter((n) => n !== '.' && n !== '..')
      .sort();
    expect(names).toEqual([...odd].sort());
    expect(native.getdents64(fd)).toEqual([]); // at the end: empty
    native.close(fd);
  });

  test('statx reports the same fields as fs.lstatSync', () => {
    for (const name of ['file', 'link', 'sub']) {
      const st = native.statx(dirfd, name);
      const ref = fs.lstatSync(path.join(dir, name), { bigint: true });
      expect(native.statxIno(st)).toBe(ref.ino);
      expect(BigInt(st.mode)).toBe(ref.mode);
      expect(BigInt(st.nlink)).toBe(ref.nlink);
      expect(BigInt(st.size)).toBe(ref.size);
      expect(BigInt(st.uid)).toBe(ref.uid);
      expect(BigInt(st.blocks)).toBe(ref.blocks);
      expect(BigInt(st.mtimeSec) * 1_000_000_000n + BigInt(st.mtimeNsec)).toBe(ref.mtimeNs);
    }
  });

  test('readlinkat returns the target bytes verbatim; fstatfs and lseek work on an fd', () => {
    expect(native.readlinkat(dirfd, 'link').toString()).toBe('file');
    expect(native.fstatfs(dirfd).bsize).toBeGreaterThan(0);
    const fd = native.openat(dirfd, 'file', C.O_RDONLY | C.O_CLOEXEC);
    expect(native.lseek(fd, 0, C.SEEK_END)).toBe(8);
    expect(native.lseek(fd, 0, C.SEEK_DATA)).toBe(0);
    expectErrno(() => native.lseek(fd, 100, C.SEEK_DATA), 'ENXIO', 'lseek');
    native.close(fd);
  });

  test('error objects: closed fd, missing path, wrong argument types', () => {
    const fd = native.openat(dirfd, 'file', C.O_RDONLY | C.O_CLOEXEC);
    native.close(fd);
    expectErrno(() => native.close(fd), 'EBADF', 'close');
    expectErrno(() => native.statx(fd, ''), 'EBADF', 'statx');
    expectErrno(() => native.openat(dirfd, 'missing', C.O_RDONLY), 'ENOENT', 'openat');
    expectThrowName(() => native.openat(dirfd, Buffer.from('a\0b'), C.O_RDONLY), 'TypeError');
    expectThrowName(() => native.close('3' as unknown as number), 'TypeError');
    expectThrowName(() => native.mmap(-1.5 as number, 4096), 'RangeError');
  });
});
