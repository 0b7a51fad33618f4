/**
 * Malformed input from the frontend (the VMM) and from the guest (through the
 * rings), each with its documented reaction:
 * - framing (header, size, fds): log + close the connection, everything released;
 * - a refused request: log + failure ack, the connection keeps working;
 * - a broken ring: log + err eventfd, that queue stops, the rest keeps working.
 */
import { readdirSync } from 'node:fs';
import { VhostUserProtocolError } from '../../src/vhost-user';
import { backendPair, type Pair } from '../harness/backend-pair';
import { Req, regionBytes } from '../harness/frontend';

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};
const header = (request: number, flags: number, size: number): Buffer => Buffer.from(new Uint32Array([request, flags, size]).buffer);
const vringState = (index: number, num: number): Buffer => Buffer.from(new Uint32Array([index, num]).buffer);
const openFds = (): number => readdirSync('/proc/self/fd').length;

describe('framing errors close the connection cleanly', () => {
  let p: Pair;
  afterEach(() => p?.close());

  async function expectClosed(message: RegExp): Promise<void> {
    const reason = await p.sessionClosed;
    expect(reason).toBeInstanceOf(VhostUserProtocolError);
    expect(reason?.message).toMatch(message);
    await p.fe.peerClosed;
    expect(p.session.state()).toMatchObject({ closed: true, regions: [], backendChannel: false });
  }

  it('a truncated header followed by EOF: closed, with a warning', async () => {
    p = await backendPair();
    p.fe.sendRaw(header(Req.GET_FEATURES, 1, 0).subarray(0, 5));
    await new Promise((r) => setTimeout(r, 20));
    p.fe.close();
    await expectClosed(/middle of a message/);
    expect(p.log.find('warn', 'middle of a message')).toHaveLength(1);
  });

  it('a header with version 2', async () => {
    p = await backendPair();
    p.fe.sendRaw(header(Req.GET_FEATURES, 2, 0));
    await expectClosed(/header version 2/);
    expect(p.log.find('error', 'connection broken')).toHaveLength(1);
  });

  it('an oversized payload (refused before it is read)', async () => {
    p = await backendPair();
    p.fe.sendRaw(header(99, 1, 1 << 20));
    await expectClosed(/payload size 1048576/);
  });

  it('a payload size that does not match the request', async () => {
    p = await backendPair();
    p.fe.sendRaw(Buffer.concat([header(Req.SET_VRING_NUM, 1, 4), Buffer.alloc(4)]));
    await expectClosed(/SET_VRING_NUM: payload size 4/);
  });

  it('an fd on a request that carries none (SET_FEATURES)', async () => {
    p = await backendPair();
    p.fe.sendRaw(Buffer.concat([header(Req.SET_FEATURES, 1, 8), u64(0n)]), [p.fe.memory.fd]);
    await expectClosed(/SET_FEATURES arrived with 1 fds/);
  });

  it('SET_MEM_TABLE with fewer fds than regions', async () => {
    p = await backendPair();
    const r = { gpa: 0, size: 1 << 20, userAddr: 0x7000_0000, fdOffset: 0 };
    const body = Buffer.concat([vringState(2, 0), regionBytes(r), regionBytes({ ...r, gpa: 1 << 20, userAddr: 0x8000_0000 })]);
    p.fe.sendRaw(Buffer.concat([header(Req.SET_MEM_TABLE, 1, body.length), body]), [p.fe.memory.fd]);
    await expectClosed(/describes 2 regions but carries 1 fds/);
  });

  it('SET_VRING_CALL with the no-fd flag but an fd attached', async () => {
    p = await backendPair();
    p.fe.sendRaw(Buffer.concat([header(Req.SET_VRING_CALL, 1, 8), u64(0x100n)]), [p.fe.memory.fd]);
    await expectClosed(/1 fds with the no-fd flag set/);
  });

  it('releases every fd and mapping it held', async () => {
    const before = openFds();
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
    await p.fe.request(1, [Buffer.from('x')], [1]);
    p.fe.sendRaw(header(Req.GET_FEATURES, 0, 0));
    await expectClosed(/version 0/);
    p.fe.close();
    expect(openFds()).toBe(before);
  });
});

describe('refused requests get a failure ack and the connection keeps working', () => {
  let p: Pair;
  beforeEach(async () => {
    p = await backendPair({ mode: 'cloudHypervisor' });
    await p.fe.handshake();
  });
  const EINVAL = 22n;
  const ENOTSUP = 95n;
  const region = (gpa: number, size: number, userAddr = 0x7e00_0000_0000) =>
    Buffer.concat([Buffer.alloc(8), regionBytes({ gpa, size, userAddr, fdOffset: 0 })]);

  afterEach(async () => {
    // Whatever was refused, the control plane and the data plane still answer.
    expect(await p.fe.getU64(Req.GET_QUEUE_NUM)).toBe(2n);
    expect((await p.fe.request(1, [Buffer.from('alive')], [8])).written.toString()).toBe('alive');
    expect(p.session.closed).toBe(false);
    p.close();
  });

  it('ADD_MEM_REG of a region that overlaps one in the table', async () => {
    expect(await p.fe.callAck(Req.ADD_MEM_REG, region(0x1000, 0x10_0000), { fds: [p.fe.memory.fd] })).toBe(EINVAL);
    expect(p.log.find('warn', /overlaps region at 0x0/)).toHaveLength(1);
    expect(p.session.state().regions).toHaveLength(2);
  });

  it('ADD_MEM_REG of a region that wraps around 2^64', async () => {
    const body = region(0, 0x2000);
    body.writeBigUInt64LE(0xffff_ffff_ffff_f000n, 8);
    expect(await p.fe.callAck(Req.ADD_MEM_REG, body, { fds: [p.fe.memory.fd] })).toBe(EINVAL);
    expect(p.log.find('warn', /beyond 2\^53/)).toHaveLength(1);
  });

  it('ADD_MEM_REG of a region that ends beyond 2^53', async () => {
    expect(await p.fe.callAck(Req.ADD_MEM_REG, region(2 ** 53 - 0x1000, 0x2000), { fds: [p.fe.memory.fd] })).toBe(EINVAL);
    expect(p.log.find('warn', /wraps or ends beyond 2\^53/)).toHaveLength(1);
  });

  it('SET_MEM_TABLE with overlapping regions keeps the old table', async () => {
    const r = { gpa: 0, size: 0x10_0000, userAddr: 0x7e00_0000_0000, fdOffset: 0 };
    const body = Buffer.concat([vringState(2, 0), regionBytes(r), regionBytes({ ...r, gpa: 0x8_0000, userAddr: 0x7f00_0000_0000 })]);
    expect(await p.fe.callAck(Req.SET_MEM_TABLE, body, { fds: [p.fe.memory.fd, p.fe.memory.fd] })).toBe(EINVAL);
    expect(p.session.state().regions.map((x) => x.guestPhysAddr)).toEqual([0, 2 ** 32]);
  });

  it('a vring index out of range', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_NUM, vringState(5, 128))).toBe(EINVAL);
    expect(p.log.find('warn', /vring index 5 is out of range/)).toHaveLength(1);
  });

  it('GET_VRING_BASE of a vring that does not exist gets an empty reply', async () => {
    expect(await p.fe.call(Req.GET_VRING_BASE, vringState(9, 0))).toEqual(Buffer.alloc(0));
    expect(p.log.find('warn', 'GET_VRING_BASE for a vring that does not exist')).toHaveLength(1);
  });

  it('"Queue Size ... MUST be a power of 2": SET_VRING_NUM 100 on a stopped ring', async () => {
    await p.fe.call(Req.GET_VRING_BASE, vringState(0, 0));
    expect(await p.fe.callAck(Req.SET_VRING_NUM, vringState(0, 100))).toBe(EINVAL);
    expect(p.log.find('warn', /size 100 is not a power of two/)).toHaveLength(1);
  });

  it('SET_VRING_NUM on a started ring', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_NUM, vringState(1, 64))).toBe(EINVAL);
    expect(p.session.state().vrings[1].size).toBe(1024);
  });

  it('SET_VRING_ADDR outside the memory table', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_ADDR, p.fe.vringAddr(0, { used: 0x1000 }))).toBe(EINVAL);
    expect(p.log.find('warn', /used ring: frontend address .* not mapped/)).toHaveLength(1);
  });

  it('SET_VRING_ADDR asking for used-ring logging (LOG_ALL is not offered)', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_ADDR, p.fe.vringAddr(0, { flags: 1 }))).toBe(ENOTSUP);
  });

  it('SET_FEATURES with a bit that was never offered (LOG_ALL)', async () => {
    expect(await p.fe.callAck(Req.SET_FEATURES, u64(p.fe.acked.features | (1n << 26n)))).toBe(EINVAL);
    expect(p.session.state().features).toBe(p.fe.acked.features);
  });

  it('an unknown request', async () => {
    expect(await p.fe.callAck(99, Buffer.alloc(3))).toBe(ENOTSUP);
    expect(p.log.find('warn', 'UNKNOWN(99) is not supported')).toHaveLength(1);
  });

  it('an unsupported request that always has a reply (GET_INFLIGHT_FD) gets a failure u64', async () => {
    const r = await p.fe.call(31, Buffer.alloc(0), { needReply: false, expectReply: true });
    expect(r?.readBigUInt64LE(0)).toBe(ENOTSUP);
  });

  it('SET_VRING_KICK in polling mode (no fd)', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_KICK, u64(0x100n))).toBe(ENOTSUP);
  });

  it('SET_VRING_KICK with bits beyond the index and no-fd flag', async () => {
    expect(await p.fe.callAck(Req.SET_VRING_KICK, u64(0x200n), { fds: [p.fe.memory.fd] })).toBe(EINVAL);
  });
});

describe('guest faults in a ring stop that queue only', () => {
  let p: Pair;
  beforeEach(async () => {
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
  });
  afterEach(async () => {
    // The other queue and the control plane are untouched.
    expect((await p.fe.request(0, [Buffer.from('hiprio')], [8])).written.toString()).toBe('hiprio');
    expect(await p.fe.getU64(Req.GET_QUEUE_NUM)).toBe(2n);
    expect(p.session.state().vrings[0].broken).toBeNull();
    p.close();
  });

  /** Places descriptors by hand on queue 1, makes `head` available, kicks, waits for the err eventfd. */
  async function offerBroken(descs: [number, { addr: number; len: number; flags: number; next: number }][], head: number, availIdx?: number): Promise<string> {
    const q = p.fe.queue(1);
    for (const [i, d] of descs) q.writeDescriptor(q.desc, i, d);
    const err = p.fe.waitErr(1);
    const old = q.availIdx;
    q.push(head);
    q.publish(old);
    if (availIdx !== undefined) q.setAvailIdx(availIdx);
    p.fe.kick(1);
    await err;
    const broken = p.session.state().vrings[1].broken;
    expect(broken).not.toBeNull();
    expect(p.log.find('error', 'virtqueue broken')).toHaveLength(1);
    return broken as string;
  }

  it('a broken ring is revived when the frontend re-initialises it (GET_VRING_BASE, SET_VRING_BASE, SET_VRING_KICK)', async () => {
    await offerBroken([[0, { addr: 0x1000, len: 8, flags: 1, next: 0 }]], 0);
    const q = p.fe.queue(1);
    // The driver starts over: head 0 now holds a valid (zero-length) chain.
    q.writeDescriptor(q.desc, 0, { addr: 0, len: 0, flags: 2, next: 0 });
    expect((await p.fe.call(Req.GET_VRING_BASE, vringState(1, 0)))?.readUInt32LE(4)).toBe(0);
    await p.fe.call(Req.SET_VRING_BASE, vringState(1, 0));
    await p.fe.call(Req.SET_VRING_KICK, u64(1n), { fds: [p.fe.kickFd(1)] });
    expect((await p.fe.request(1, [Buffer.from('revived')], [8])).written.toString()).toBe('revived');
    expect(p.session.state().vrings[1]).toMatchObject({ broken: null, nextAvail: 2 });
  });

  it('"MUST NOT create a descriptor chain longer than the Queue Size": a descriptor loop', async () => {
    expect(await offerBroken([[0, { addr: 0x1000, len: 8, flags: 1, next: 0 }]], 0)).toMatch(/loop/);
    expect(p.log.find('error', '"rule":"loop"')).toHaveLength(1);
  });

  it('a descriptor address outside guest memory', async () => {
    expect(await offerBroken([[0, { addr: 0x8000_0000, len: 8, flags: 0, next: 0 }]], 0)).toMatch(/not mapped/);
  });

  it('a head index outside the descriptor table', async () => {
    expect(await offerBroken([], 128)).toMatch(/names head 128/);
  });

  it('"MUST NOT ... more than Queue Size entries available": an avail idx jump', async () => {
    expect(await offerBroken([], 0, 200)).toMatch(/200 entries ahead/);
  });

  it('an indirect table of bad length', async () => {
    expect(await offerBroken([[0, { addr: 0x1000, len: 20, flags: 4, next: 0 }]], 0)).toMatch(/indirect table length 20/);
  });

  it('a nested indirect table', async () => {
    const q = p.fe.queue(1);
    const inner = p.fe.memory.alloc(16, 16);
    const outer = p.fe.memory.alloc(16, 16);
    q.writeDescriptor(outer, 0, { addr: inner, len: 16, flags: 4, next: 0 });
    expect(await offerBroken([[0, { addr: outer, len: 16, flags: 4, next: 0 }]], 0)).toMatch(/INDIRECT descriptor/);
  });

  it('a device-readable descriptor after a device-writable one', async () => {
    expect(
      await offerBroken(
        [
          [0, { addr: 0x1000, len: 8, flags: 2 | 1, next: 1 }],
          [1, { addr: 0x2000, len: 8, flags: 0, next: 0 }],
        ],
        0,
      ),
    ).toMatch(/readable descriptor after a device-writable/);
  });
});
