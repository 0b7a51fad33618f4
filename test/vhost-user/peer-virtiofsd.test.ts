/**
 * The harness against QEMU 7.2's own virtiofsd: if the real peer completes the
 * handshake and answers FUSE INIT through our rings, the harness speaks the
 * real protocol and not a private dialect shared with src/vhost-user.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Frontend, PF, F } from '../harness/frontend';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const FUSE_INIT = 26;
const FUSE_GETATTR = 3;

/** struct fuse_in_header (40 bytes) + struct fuse_init_in as of 7.31 (16 bytes). */
function fuseInit(unique: bigint, minor: number): Buffer {
  const b = Buffer.alloc(40 + 16);
  b.writeUInt32LE(b.length, 0); // len
  b.writeUInt32LE(FUSE_INIT, 4); // opcode
  b.writeBigUInt64LE(unique, 8); // unique
  b.writeBigUInt64LE(0n, 16); // nodeid
  // uid, gid, pid, padding: 0
  b.writeUInt32LE(7, 40); // major
  b.writeUInt32LE(minor, 44); // minor
  b.writeUInt32LE(128 * 1024, 48); // max_readahead
  b.writeUInt32LE(0, 52); // flags
  return b;
}

describe('harness against the peer /usr/lib/qemu/virtiofsd', () => {
  let dir: string;
  let child: ChildProcess;
  let stderr = '';
  let fe: Frontend | undefined;

  beforeAll(() => {
    expect(existsSync(VIRTIOFSD)).toBe(true);
    dir = mkdtempSync(path.join(tmpdir(), 'cfs-peer-'));
    const sock = path.join(dir, 'vhost.sock');
    const source = path.join(dir, 'share');
    mkdirSync(source);
    child = spawn('timeout', ['60', VIRTIOFSD, `--socket-path=${sock}`, '-o', `source=${source}`, '-o', 'cache=none'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  });

  afterAll(async () => {
    fe?.close();
    // virtiofsd exits when its frontend goes away; SIGTERM to `timeout` is passed on to it otherwise.
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('completes the QEMU 7.2 handshake and a FUSE INIT round trip on request queue 1', async () => {
    fe = await Frontend.connect(path.join(dir, 'vhost.sock'), { mode: 'qemu72', connectTimeoutMs: 10000 });
    await fe.handshake();
    // virtiofsd's recorded offer (REFERENCES.md): 0x8c2b, all of which QEMU 7.2 acks.
    expect(fe.acked.protocolFeatures).toBe(PF.MQ | PF.LOG_SHMFD | PF.REPLY_ACK | PF.BACKEND_REQ | PF.BACKEND_SEND_FD | PF.HOST_NOTIFIER | PF.CONFIGURE_MEM_SLOTS);
    expect(fe.acked.features).toBe(F.VERSION_1 | F.PROTOCOL_FEATURES | F.EVENT_IDX | F.INDIRECT_DESC);
    expect(fe.acked.queueNum).toBe(2);

    const r = await fe.request(1, [fuseInit(1n, 31)], [16, 64]);
    const out = r.written;
    expect(r.usedLen).toBeGreaterThanOrEqual(16 + 24);
    expect(out.readUInt32LE(0)).toBe(r.usedLen); // fuse_out_header.len
    expect(out.readInt32LE(4)).toBe(0); // error
    expect(out.readBigUInt64LE(8)).toBe(1n); // unique
    expect(out.readUInt32LE(16)).toBe(7); // fuse_init_out.major
    expect(out.readUInt32LE(20)).toBeGreaterThanOrEqual(31); // minor
  }, 20000);

  it('answers GETATTR of the root through an indirect descriptor table', async () => {
    // struct fuse_in_header + struct fuse_getattr_in { getattr_flags, dummy, fh }
    const req = Buffer.alloc(40 + 16);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt32LE(FUSE_GETATTR, 4);
    req.writeBigUInt64LE(2n, 8);
    req.writeBigUInt64LE(1n, 16); // FUSE_ROOT_ID
    const r = await (fe as Frontend).request(1, [req], [16, 104], { indirect: true });
    const out = r.written;
    expect(out.readInt32LE(4)).toBe(0);
    expect(out.readBigUInt64LE(8)).toBe(2n);
    expect(r.usedLen).toBe(16 + 104);
    // fuse_attr_out { attr_valid u64, attr_valid_nsec u32, dummy u32, fuse_attr { ino, size, blocks, atime, mtime, ctime (u64), ..nsec (u32 x3), mode u32 } }
    const mode = out.readUInt32LE(16 + 16 + 60);
    expect(mode & 0o170000).toBe(0o040000); // S_IFDIR
  }, 20000);
});
