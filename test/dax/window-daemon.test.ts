/**
 * The DAX window end to end without a guest: the closurefs process serves the real
 * Nix fixture; the test frontend plays a VMM with a window (SHMEM agreed, window
 * reserved, SHMEM_MAP/UNMAP really mapped with MAP_FIXED). The daemon runs in its
 * own process because it waits synchronously for the VMM's ack, as virtiofsd does.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Opcode, SetupMappingIn } from '../../src/fuse/abi';
import { nixFixture, hostPath } from '../fixtures/nix/store';
import { startDaemon, type RunningDaemon } from '../../vm-fixtures/daemons';
import { DaxWindowFrontend, SHMEM_MAP, SHMEM_UNMAP } from '../harness/dax-window';
import { Frontend, PF } from '../harness/frontend';
import { FuseClient, encode } from '../harness/fuse-client';

const MiB = 1 << 20;
const WINDOW = 64 * MiB;
const READ = 2n;
const WRITE = 1n;
const EROFS = 30;
const EISDIR = 21;
const EINVAL = 22;

let dir: string;
let daemon: RunningDaemon;
let fe: Frontend;
let vmm: DaxWindowFrontend;
let client: FuseClient;

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

async function setupMapping(nodeid: number, foffset: number, len: number, moffset: number, flags = READ): Promise<number> {
  const body = encode(SetupMappingIn, { fh: 0xffffffffffffffffn, foffset: BigInt(foffset), len: BigInt(len), flags, moffset: BigInt(moffset) });
  const r = await client.request(Opcode.SETUPMAPPING, nodeid, [body]);
  return r.header.error === 0 ? 0 : -r.header.error;
}

async function removeMapping(moffset: number, len: number): Promise<number> {
  const body = Buffer.alloc(4 + 16);
  body.writeUInt32LE(1, 0);
  body.writeBigUInt64LE(BigInt(moffset), 4);
  body.writeBigUInt64LE(BigInt(len), 12);
  const r = await client.request(Opcode.REMOVEMAPPING, 1, [body]);
  return r.header.error === 0 ? 0 : -r.header.error;
}

beforeAll(async () => {
  const fx = nixFixture();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-dax-'));
  daemon = await startDaemon({ kind: 'closurefs', storeDir: fx.storeDir, closureFiles: [fx.closureFile], socketDir: dir, logLevel: 'warn', extraArgs: ['--dax-window', '64M'] });
  vmm = new DaxWindowFrontend(WINDOW);
  fe = await Frontend.connect(daemon.socket, {
    extraProtocolFeatures: PF.SHMEM,
    onBackendRequest: (req) => BigInt(vmm.handle(req.request, req.payload, req.fds[0])),
    connectTimeoutMs: 10_000,
  });
  await fe.handshake();
  client = new FuseClient((readable, sizes) => fe.request(1, readable, sizes));
  const init = await client.init({ flags: 0x7bfffffb | (1 << 26) }); // the guest adds MAP_ALIGNMENT when mounted with dax
  expect(init.mapAlignment).toBe(12);
}, 60_000);

afterAll(async () => {
  fe?.close();
  await daemon?.stop();
  vmm?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the daemon offers SHMEM and reports one region, the window, in GET_SHMEM_CONFIG', () => {
  expect(fe.acked.protocolFeatures & PF.SHMEM).toBe(PF.SHMEM);
  expect(fe.shmemSizes).toEqual([WINDOW]);
});

test('after SETUPMAPPING the window holds the file bytes, with no further daemon traffic', async () => {
  const fx = nixFixture();
  const large = await client.walk(fx.files.large.path.replace('/nix/store/', ''));
  const bytes = fs.readFileSync(hostPath(fx, fx.files.large.path));
  expect(await setupMapping(large.nodeid, 4 * MiB, 2 * MiB, 10 * MiB)).toBe(0);
  const requestsBefore = vmm.log.length;
  const callsBefore = fe.callCount(1);
  // Read it twice: plain loads from the window, no FUSE request and no backend request.
  for (let i = 0; i < 2; i++) expect(vmm.read(10 * MiB, 2 * MiB).equals(bytes.subarray(4 * MiB, 6 * MiB))).toBe(true);
  expect(vmm.log.length).toBe(requestsBefore);
  expect(fe.callCount(1)).toBe(callsBefore);

  // The tail of the file: whole pages only, and its hash over the mapped bytes matches the host's.
  const tailAt = Math.floor(bytes.length / (2 * MiB)) * 2 * MiB;
  expect(await setupMapping(large.nodeid, tailAt, 2 * MiB, 20 * MiB)).toBe(0);
  const last = vmm.log[vmm.log.length - 1];
  expect(last.type).toBe(SHMEM_MAP);
  expect(last.req?.len).toBe(Math.ceil((bytes.length - tailAt) / 4096) * 4096);
  const whole = crypto.createHash('sha256');
  for (let off = 0; off < tailAt; off += 2 * MiB) {
    expect(await setupMapping(large.nodeid, off, 2 * MiB, 30 * MiB)).toBe(0); // remaps the same slot each time
    whole.update(vmm.read(30 * MiB, 2 * MiB));
  }
  whole.update(vmm.read(20 * MiB, bytes.length - tailAt));
  expect(whole.digest('hex')).toBe(fx.files.large.sha256);
});

test('REMOVEMAPPING unmaps exactly; write-flagged, directory and out-of-window requests fail', async () => {
  const fx = nixFixture();
  const hello = await client.walk(fx.paths.lib.replace('/nix/store/', '') + '/share/hello.txt');
  const share = await client.walk(fx.paths.lib.replace('/nix/store/', '') + '/share');
  expect(await setupMapping(hello.nodeid, 0, 2 * MiB, 40 * MiB)).toBe(0);
  expect(vmm.read(40 * MiB, 19).toString()).toBe('hello from cfs-lib\n');
  expect(await removeMapping(40 * MiB, 2 * MiB)).toBe(0);
  expect(vmm.log[vmm.log.length - 1].type).toBe(SHMEM_UNMAP);
  expect(vmm.maps.some((m) => m.shmOffset === 40 * MiB)).toBe(false);
  expect(await setupMapping(hello.nodeid, 0, 2 * MiB, 40 * MiB, READ | WRITE)).toBe(EROFS);
  expect(await setupMapping(share.nodeid, 0, 2 * MiB, 40 * MiB)).toBe(EISDIR);
  expect(await setupMapping(hello.nodeid, 0, 2 * MiB, WINDOW)).toBe(EINVAL);
});

test('a frontend that refuses a map gives the guest EIO and the daemon carries on', async () => {
  const fx = nixFixture();
  const hello = await client.walk(fx.paths.lib.replace('/nix/store/', '') + '/share/hello.txt');
  // The daemon never sends what a conforming VMM must refuse, so provoke a refusal it cannot foresee:
  // a VMM whose window is smaller than the size the daemon advertised.
  const small = vmm.size;
  Object.defineProperty(vmm, 'size', { value: 32 * MiB });
  expect(await setupMapping(hello.nodeid, 0, 2 * MiB, 48 * MiB)).toBe(5);
  Object.defineProperty(vmm, 'size', { value: small });
  expect(await setupMapping(hello.nodeid, 0, 2 * MiB, 48 * MiB)).toBe(0);
  expect((await client.getattr(hello.nodeid)).attr.size).toBe(19);
});

test('disconnect with live mappings releases every fd the daemon held for them', async () => {
  expect(vmm.maps.length).toBeGreaterThan(0);
  // Every fd sent with a SHMEM_MAP was the daemon's copy, closed after the send: its fd count is flat.
  const before = openFds(daemon.pid);
  const fx = nixFixture();
  const large = await client.walk(fx.files.large.path.replace('/nix/store/', ''));
  for (let i = 0; i < 20; i++) expect(await setupMapping(large.nodeid, (i % 8) * 2 * MiB, 2 * MiB, (i % 16) * 2 * MiB)).toBe(0);
  expect(openFds(daemon.pid)).toBe(before);
  fe.close();
  const exit = await daemon.waitExit(10_000);
  expect(exit?.code).toBe(0); // the frontend left: the daemon released everything and exited cleanly
  expect(daemon.output()).not.toMatch(/"level":(50|60)/);
});
