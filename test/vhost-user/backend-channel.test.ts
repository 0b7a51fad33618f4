/**
 * BackendChannel over a real socketpair. request() blocks (poll with a timeout),
 * so in one thread the frontend's ack must already be queued on the socket.
 */
import * as native from '../../src/native';
import { BackendChannel, BackendChannelError, BackendRequest } from '../../src/vhost-user';

function ack(request: number, value: bigint, flags = 0x5, size = 8): Buffer {
  const b = Buffer.alloc(12 + 8);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(size, 8);
  b.writeBigUInt64LE(value, 12);
  return b;
}

function readMessage(fd: number): { request: number; flags: number; payload: Buffer; fds: number[] } {
  const b = Buffer.alloc(4096);
  const r = native.recvmsg(fd, b);
  if (r === null) throw new Error('nothing was sent');
  return { request: b.readUInt32LE(0), flags: b.readUInt32LE(4), payload: b.subarray(12, 12 + b.readUInt32LE(8)), fds: r.fds };
}

describe('BackendChannel', () => {
  let ours: number;
  let theirs: number;
  let replyAck: boolean;
  let ch: BackendChannel;
  beforeEach(() => {
    [ours, theirs] = native.socketpair();
    native.setNonBlocking(theirs, true);
    replyAck = true;
    ch = new BackendChannel(ours, { replyAck: () => replyAck, timeoutMs: 100 });
  });
  afterEach(() => {
    ch.close();
    native.closeQuietly(theirs);
  });

  it('with REPLY_ACK: sets NEED_REPLY, passes the fd, returns the ack value', () => {
    native.sendmsg(theirs, ack(BackendRequest.SHMEM_MAP, 0n));
    const file = native.eventfd();
    expect(ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40, 1), file)).toBe(0);
    native.close(file);
    const m = readMessage(theirs);
    expect([m.request, m.flags, m.payload.length, m.fds.length]).toEqual([9, 0x9, 40, 1]);
    m.fds.forEach(native.close);
    native.sendmsg(theirs, ack(BackendRequest.SHMEM_UNMAP, 22n));
    expect(ch.request(BackendRequest.SHMEM_UNMAP, Buffer.alloc(40))).toBe(22);
  });

  it('without REPLY_ACK: no NEED_REPLY and no wait', () => {
    replyAck = false;
    expect(ch.request(BackendRequest.SHMEM_UNMAP, Buffer.alloc(40))).toBe(0);
    expect(readMessage(theirs).flags).toBe(0x1);
  });

  it('no ack within the timeout: fails, and the channel stays broken (a late ack would desync it)', () => {
    const t0 = Date.now();
    expect(() => ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(BackendChannelError);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(90);
    native.sendmsg(theirs, ack(BackendRequest.SHMEM_MAP, 0n));
    expect(() => ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(/no ack within 100 ms/);
  });

  it('an ack for another request, or without the REPLY flag, is malformed', () => {
    native.sendmsg(theirs, ack(BackendRequest.SHMEM_UNMAP, 0n));
    expect(() => ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(/malformed ack \(request 10/);
    const [a, b] = native.socketpair();
    const ch2 = new BackendChannel(a, { replyAck: () => true, timeoutMs: 100 });
    native.sendmsg(b, ack(BackendRequest.SHMEM_MAP, 0n, 0x1));
    try {
      expect(() => ch2.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(/malformed ack/);
    } finally {
      ch2.close();
      native.close(b);
    }
  });

  it('a frontend that closed the channel fails the request', () => {
    native.close(theirs);
    theirs = -1;
    expect(() => ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(BackendChannelError);
  });

  it('a closed channel refuses requests', () => {
    ch.close();
    expect(() => ch.request(BackendRequest.SHMEM_MAP, Buffer.alloc(40))).toThrow(/closed/);
  });
});
