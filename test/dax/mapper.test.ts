/**
 * DAX window bookkeeping and SETUPMAPPING/REMOVEMAPPING against a VMM-side window
 * that really maps the fds it receives (test/harness/dax-window.ts).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DaxMapper, MappableFile, SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE, ShmemChannel } from '../../src/dax/mapper';
import { DaxWindow } from '../../src/dax/window';
import * as native from '../../src/native';
import { DaxWindowFrontend } from '../harness/dax-window';

const MiB = 1 << 20;
const R = SETUPMAPPING_FLAG_READ;
const EROFS = 30;
const EINVAL = 22;
const EIO = 5;
const EISDIR = 21;

let dir: string;
const files = new Map<number, string>();
let bigBytes: Buffer;

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-dax-'));
  bigBytes = crypto.randomBytes(5 * MiB + 123);
  fs.writeFileSync(path.join(dir, 'big'), bigBytes);
  fs.writeFileSync(path.join(dir, 'small'), 'a file much shorter than 2 MiB\n');
  files.set(2, path.join(dir, 'big'));
  files.set(3, path.join(dir, 'small'));
});
afterAll(() => fs.rmSync(dir, { recursive: true }));

function openFile(nodeid: number): MappableFile {
  if (nodeid === 1) return { errno: EISDIR };
  const p = files.get(nodeid);
  if (p === undefined) return { errno: 2 };
  const fd = fs.openSync(p, 'r');
  return { fd, size: fs.fstatSync(fd).size };
}

function setup(windowSize = 8 * MiB, channelOverride?: ShmemChannel | null) {
  const vmm = new DaxWindowFrontend(windowSize);
  const channel: ShmemChannel = { request: (type, payload, fd) => vmm.handle(type, payload, fd) };
  const window = new DaxWindow(windowSize);
  const mapper = new DaxMapper({ window, channel: () => (channelOverride === undefined ? channel : channelOverride), openFile });
  return { vmm, window, mapper };
}

test('after SETUPMAPPING the window holds the file bytes; REMOVEMAPPING takes them away', () => {
  const { vmm, window, mapper } = setup();
  expect(mapper.setupMapping(2, -1n, BigInt(2 * MiB), BigInt(2 * MiB), BigInt(4 * MiB), BigInt(R))).toBe(0);
  expect(vmm.read(4 * MiB, 2 * MiB).equals(bigBytes.subarray(2 * MiB, 4 * MiB))).toBe(true);
  expect(window.mappings).toEqual([{ moffset: 4 * MiB, len: 2 * MiB, nodeid: 2, foffset: 2 * MiB }]);
  expect(mapper.removeMapping(BigInt(4 * MiB), BigInt(2 * MiB))).toBe(0);
  expect(vmm.maps).toEqual([]);
  expect(window.mappings).toEqual([]);
  vmm.close();
});

test('the tail of a file maps whole pages only, never past the page holding its end', () => {
  const { vmm, window, mapper } = setup();
  expect(mapper.setupMapping(2, -1n, BigInt(4 * MiB), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(0);
  const tail = bigBytes.length - 4 * MiB;
  expect(window.mappings[0].len).toBe(Math.ceil(tail / 4096) * 4096);
  expect(vmm.read(0, tail).equals(bigBytes.subarray(4 * MiB))).toBe(true);
  expect(vmm.read(tail, 16).equals(Buffer.alloc(16))).toBe(true); // zero fill after the end, in the same page
  // A file shorter than 2 MiB: one page.
  expect(mapper.setupMapping(3, -1n, BigInt(0), BigInt(2 * MiB), BigInt(2 * MiB), BigInt(R))).toBe(0);
  expect(vmm.maps.find((m) => m.shmOffset === 2 * MiB)?.len).toBe(4096);
  expect(vmm.read(2 * MiB, 30).toString()).toBe('a file much shorter than 2 MiB');
  // And nothing at all past the end.
  expect(mapper.setupMapping(3, -1n, BigInt(2 * MiB), BigInt(2 * MiB), BigInt(4 * MiB), BigInt(R))).toBe(EINVAL);
  vmm.close();
});

test('remapping a live range unmaps it first (the frontend refuses overlapping maps)', () => {
  const { vmm, mapper } = setup();
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(2 * MiB), BigInt(R))).toBe(0);
  expect(mapper.setupMapping(2, -1n, BigInt(2 * MiB), BigInt(2 * MiB), BigInt(2 * MiB), BigInt(R))).toBe(0);
  expect(vmm.read(2 * MiB, 64).equals(bigBytes.subarray(2 * MiB, 2 * MiB + 64))).toBe(true);
  expect(vmm.log.map((l) => [l.type, l.ack])).toEqual([[9, 0], [10, 0], [9, 0]]);
  vmm.close();
});

test('write-flagged requests are EROFS; bad ranges EINVAL; directories get the resolver errno', () => {
  const { vmm, mapper } = setup();
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R | SETUPMAPPING_FLAG_WRITE))).toBe(EROFS);
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(7 * MiB), BigInt(R))).toBe(EINVAL); // past the window
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(100), BigInt(R))).toBe(EINVAL); // unaligned window offset
  expect(mapper.setupMapping(2, -1n, BigInt(100), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(EINVAL); // unaligned file offset
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(0), BigInt(0), BigInt(R))).toBe(EINVAL);
  expect(mapper.setupMapping(1, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(EISDIR);
  expect(vmm.log).toEqual([]); // none of these reached the VMM
  vmm.close();
});

test('window full: every slot can be used, and a slot is reusable after removal', () => {
  const { vmm, window, mapper } = setup(4 * MiB);
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(0);
  expect(mapper.setupMapping(2, -1n, BigInt(2 * MiB), BigInt(2 * MiB), BigInt(2 * MiB), BigInt(R))).toBe(0);
  expect(mapper.setupMapping(2, -1n, BigInt(4 * MiB), BigInt(2 * MiB), BigInt(4 * MiB), BigInt(R))).toBe(EINVAL);
  expect(mapper.removeMapping(BigInt(0), BigInt(4 * MiB))).toBe(0); // one range covering both
  expect(window.mappings).toEqual([]);
  expect(mapper.setupMapping(2, -1n, BigInt(4 * MiB), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(0);
  vmm.close();
});

test('a removal that would split a mapping is refused and changes nothing', () => {
  const { vmm, window, mapper } = setup();
  expect(mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(0);
  expect(mapper.removeMapping(BigInt(MiB), BigInt(2 * MiB))).toBe(EINVAL);
  expect(window.mappings).toHaveLength(1);
  expect(mapper.removeMapping(BigInt(4 * MiB), BigInt(2 * MiB))).toBe(0); // nothing there: nothing to do
  vmm.close();
});

test('a refusing frontend or a missing backend channel gives the guest an errno, and no fd leaks', () => {
  const before = openFdCount();
  const refusing = setup(8 * MiB, { request: () => 1 });
  expect(refusing.mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(EIO);
  expect(refusing.window.mappings).toEqual([]);
  const broken = setup(8 * MiB, {
    request: () => {
      throw new Error('backend channel closed');
    },
  });
  expect(broken.mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(EIO);
  const none = setup(8 * MiB, null);
  expect(none.mapper.setupMapping(2, -1n, BigInt(0), BigInt(2 * MiB), BigInt(0), BigInt(R))).toBe(38);
  for (const s of [refusing, broken, none]) s.vmm.close();
  expect(openFdCount()).toBe(before);
});

test('reset forgets every mapping; many map/unmap cycles leak no fds', () => {
  const { vmm, window, mapper } = setup();
  const before = openFdCount();
  for (let i = 0; i < 200; i++) {
    expect(mapper.setupMapping(2, -1n, BigInt((i % 3) * 2 * MiB), BigInt(2 * MiB), BigInt((i % 4) * 2 * MiB), BigInt(R))).toBe(0);
  }
  expect(openFdCount()).toBe(before);
  expect(window.mappings.length).toBeGreaterThan(0);
  mapper.reset();
  vmm.reset();
  expect(window.mappings).toEqual([]);
  vmm.close();
  expect(native.PAGE_SIZE).toBe(4096);
});
