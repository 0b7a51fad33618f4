/** Command-line parsing: closurefs flags, virtiofsd/microvm.nix compatibility, and usage errors. */
import { readPoolSize } from '../src/cli';
import { DaemonOptions, parseArgs, parseSize } from '../src/cli-options';

function run(argv: string[]): DaemonOptions {
  const r = parseArgs(argv);
  if (r.kind !== 'run') throw new Error(`expected a run, got ${r.kind}`);
  return r.options;
}

function usageError(argv: string[]): string {
  try {
    parseArgs(argv);
  } catch (e) {
    expect((e as { code?: string }).code).toBe('CFS_ERR_USAGE');
    return (e as Error).message;
  }
  throw new Error('expected a usage error');
}

const BASE = ['--socket-path', '/run/cfs.sock', '--closure', '/tmp/closure'];

test('defaults', () => {
  const o = run(BASE);
  expect(o).toMatchObject({
    socketPath: '/run/cfs.sock',
    closureFiles: ['/tmp/closure'],
    storeDir: '/nix/store',
    cache: 'always',
    numRequestQueues: 1,
    persist: false,
    logLevel: 'info',
    ignored: [],
  });
  expect(o.daxWindow).toBeUndefined();
});

test('the exact flags microvm.nix passes to virtiofsd are accepted; the meaningless ones are reported', () => {
  const o = run([
    '--socket-path=/run/microvm/store.sock', '--socket-group=kvm', '--shared-dir=/nix/store',
    '--rlimit-nofile', '1048576', '--thread-pool-size', '4', '--posix-acl', '--xattr', '--cache=auto',
    '--inode-file-handles=prefer', '--readonly', '--closure', '/etc/closure',
  ]);
  expect(o.socketPath).toBe('/run/microvm/store.sock');
  expect(o.socketGroup).toBe('kvm');
  expect(o.storeDir).toBe('/nix/store');
  expect(o.cache).toBe('auto');
  expect(o.threadPoolSize).toBe(4);
  expect(o.ignored.sort()).toEqual(['--inode-file-handles', '--posix-acl', '--readonly', '--rlimit-nofile', '--xattr'].sort());
});

test('--thread-pool-size: 0 keeps every request on the main thread; libuv caps the pool at 1024', () => {
  const base = ['--socket-path', 's', '--closure', 'c'];
  expect(run([...base, '--thread-pool-size', '0']).threadPoolSize).toBe(0);
  expect(run(base).threadPoolSize).toBeUndefined();
  expect(() => run([...base, '--thread-pool-size', '1025'])).toThrow(/at most 1024/);
  expect(() => run([...base, '--thread-pool-size', '-1'])).toThrow(/non-negative integer/);
});

test('the read pool: the flag, else UV_THREADPOOL_SIZE as set, else one thread per CPU up to 4', () => {
  expect(readPoolSize(3, {}, 2)).toBe(3);
  expect(readPoolSize(8, { UV_THREADPOOL_SIZE: '2' }, 2)).toBe(8);
  expect(readPoolSize(0, {}, 2)).toBeUndefined(); // no pool: nothing leaves the main thread
  expect(readPoolSize(undefined, { UV_THREADPOOL_SIZE: '16' }, 2)).toBeUndefined();
  expect(readPoolSize(undefined, {}, 1)).toBe(1);
  expect(readPoolSize(undefined, {}, 2)).toBe(2);
  expect(readPoolSize(undefined, {}, 64)).toBe(4);
});

test('--poll-max-us: 32 by default, 0 turns polling off, at most 10 ms', () => {
  const base = ['--socket-path', 's', '--closure', 'c'];
  expect(run(base).pollMaxUs).toBe(32);
  expect(run([...base, '--poll-max-us', '0']).pollMaxUs).toBe(0);
  expect(run([...base, '--poll-max-us', '10000']).pollMaxUs).toBe(10_000);
  expect(() => run([...base, '--poll-max-us', '10001'])).toThrow(/--poll-max-us must be at most 10000, got 10001/);
  expect(() => run([...base, '--poll-max-us', '2.5'])).toThrow(/--poll-max-us must be a non-negative integer, got '2.5'/);
});

test('--warm-up-reads: 3,000 by default, 0 turns the warm-up off, at most 100,000', () => {
  const base = ['--socket-path', 's', '--closure', 'c'];
  expect(run(base).warmUpReads).toBe(3000);
  expect(run([...base, '--warm-up-reads', '0']).warmUpReads).toBe(0);
  expect(() => run([...base, '--warm-up-reads', '100001'])).toThrow(/--warm-up-reads must be at most 100000, got 100001/);
  expect(() => run([...base, '--warm-up-reads', 'many'])).toThrow(/--warm-up-reads must be a non-negative integer, got 'many'/);
});

test('legacy -o source=DIR,cache=MODE form', () => {
  const o = run(['--socket-path', 's', '-o', 'source=/srv/store,cache=none,xattr', '--closure', 'c']);
  expect(o.storeDir).toBe('/srv/store');
  expect(o.cache).toBe('never');
  expect(o.ignored).toEqual(['-o xattr']);
});

test('repeatable closure flags keep their order', () => {
  const o = run(['--fd', '3', '--closure', 'a', '--closure', 'b', '--closure-of', '/nix/store/x', '--closure-of', '/nix/store/y']);
  expect(o.fd).toBe(3);
  expect(o.closureFiles).toEqual(['a', 'b']);
  expect(o.closureOf).toEqual(['/nix/store/x', '/nix/store/y']);
});

test('--print-capabilities needs nothing else', () => {
  expect(parseArgs(['--print-capabilities'])).toEqual({ kind: 'capabilities' });
});

test('--help exits 0 with the exit statuses documented', () => {
  const r = parseArgs(['--help']);
  expect(r.kind).toBe('exit');
  if (r.kind === 'exit') {
    expect(r.status).toBe(0);
    expect(r.output).toContain('--closure <file>');
    expect(r.output).toContain('Exit status:');
    expect(r.output).toContain('bad closure input');
  }
});

test('sizes', () => {
  expect(parseSize('8G')).toBe(8 * 2 ** 30);
  expect(parseSize('512M')).toBe(512 * 2 ** 20);
  expect(parseSize('64KiB')).toBe(65536);
  expect(parseSize('4096')).toBe(4096);
  expect(() => parseSize('lots')).toThrow(/not a size/);
  expect(run([...BASE, '--dax-window', '1G']).daxWindow).toBe(2 ** 30);
});

describe('usage errors name the problem', () => {
  test.each([
    [['--closure', 'x'], /one of --socket-path or --fd/],
    [['--socket-path', 's', '--fd', '3', '--closure', 'x'], /conflicting flags: --socket-path and --fd/],
    [['--socket-path', 's'], /no closure given/],
    [[...BASE, '--store-dir', '/a', '--shared-dir', '/b'], /conflicting flags: --store-dir and --shared-dir/],
    [[...BASE, '--shared-dir', '/a', '-o', 'source=/b'], /conflicting flags: --shared-dir and -o source/],
    [[...BASE, '--cache', 'always', '-o', 'cache=never'], /conflicting flags: --cache and -o cache/],
    [[...BASE, '--num-request-queues', '0'], /--num-request-queues must be an integer from 1 to 64/],
    [[...BASE, '--cache', 'sometimes'], /sometimes.*Allowed choices are auto, always, never/],
    [[...BASE, '--bogus'], /unknown option '--bogus'/],
    [[...BASE, '--tag', 'x'.repeat(37)], /--tag must be 1 to 36 bytes/],
    [[...BASE, 'stray'], /too many arguments/],
    [[...BASE, '-o', 'cache=sometimes'], /-o cache=sometimes/],
    [[...BASE, '--dax-window', '3M'], /--dax-window must be a non-zero multiple of 2M/],
  ])('%j', (argv, pattern) => {
    expect(usageError(argv as string[])).toMatch(pattern);
  });
});
