/**
 * Protocol state of VhostUserSession: what it offers, the ring start/enable
 * rules, memory slots, config space, reset, and the data path through it.
 */
import { backendPair, type Pair } from '../harness/backend-pair';
import { F, PF, Req, regionBytes } from '../harness/frontend';

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};
const vringState = (index: number, num: number): Buffer => Buffer.from(new Uint32Array([index, num]).buffer);
async function until(cond: () => boolean, ms = 1000): Promise<void> {
  for (const end = Date.now() + ms; !cond(); ) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
const never = (ms: number): Promise<'pending'> => new Promise((r) => setTimeout(() => r('pending'), ms));

describe('VhostUserSession', () => {
  let p: Pair;
  afterEach(() => p?.close());

  it('offers exactly VERSION_1 | INDIRECT_DESC | EVENT_IDX | PROTOCOL_FEATURES, and no logging', async () => {
    p = await backendPair();
    expect(await p.fe.getU64(Req.GET_FEATURES)).toBe(F.VERSION_1 | F.INDIRECT_DESC | F.EVENT_IDX | F.PROTOCOL_FEATURES);
    expect(await p.fe.getU64(Req.GET_PROTOCOL_FEATURES)).toBe(
      PF.MQ | PF.REPLY_ACK | PF.CONFIGURE_MEM_SLOTS | PF.BACKEND_REQ | PF.BACKEND_SEND_FD | PF.RESET_DEVICE,
    );
  });

  it('with a tag, offers PROTOCOL_F_CONFIG and serves the virtio-fs config space (tag[36] + num_request_queues)', async () => {
    p = await backendPair({ mode: 'cloudHypervisor' }, { tag: 'closure', numQueues: 3 });
    const pf = await p.fe.getU64(Req.GET_PROTOCOL_FEATURES);
    expect(pf & PF.CONFIG).toBe(PF.CONFIG);
    await p.fe.call(Req.SET_PROTOCOL_FEATURES, u64(PF.CONFIG | PF.REPLY_ACK));
    p.fe.acked.protocolFeatures = PF.CONFIG | PF.REPLY_ACK;
    const req = Buffer.alloc(12 + 40);
    req.writeUInt32LE(0, 0);
    req.writeUInt32LE(40, 4);
    const r = (await p.fe.call(Req.GET_CONFIG, req)) as Buffer;
    expect(r.length).toBe(52);
    expect(r.subarray(12, 19).toString()).toBe('closure');
    expect(r.subarray(19, 48).every((b) => b === 0)).toBe(true);
    expect(r.readUInt32LE(48)).toBe(2);
    // A read past the 40-byte space fails with an empty payload (vhost-user GET_CONFIG).
    const bad = Buffer.alloc(12 + 8);
    bad.writeUInt32LE(36, 0);
    bad.writeUInt32LE(8, 4);
    expect(await p.fe.call(Req.GET_CONFIG, bad)).toEqual(Buffer.alloc(0));
    expect(await p.fe.callAck(Req.SET_CONFIG, req)).not.toBe(0n);
  });

  it('without a tag, GET_CONFIG fails with an empty payload', async () => {
    p = await backendPair();
    const req = Buffer.alloc(12 + 4);
    req.writeUInt32LE(4, 4);
    expect(await p.fe.call(Req.GET_CONFIG, req)).toEqual(Buffer.alloc(0));
  });

  it('without PROTOCOL_FEATURES negotiated, rings start enabled (no SET_VRING_ENABLE needed)', async () => {
    p = await backendPair({ mode: 'qemu72', protocolFeatures: false });
    await p.fe.handshake();
    expect(p.fe.acked.features & F.PROTOCOL_FEATURES).toBe(0n);
    expect((await p.fe.request(1, [Buffer.from('legacy')], [8])).written.toString()).toBe('legacy');
    expect(p.session.state().regions).toHaveLength(2); // SET_MEM_TABLE, as slots were not negotiated
  });

  it('with PROTOCOL_FEATURES, a disabled ring is not processed until SET_VRING_ENABLE 1', async () => {
    p = await backendPair({ mode: 'cloudHypervisor' });
    await p.fe.handshake();
    expect(await p.fe.callAck(Req.SET_VRING_ENABLE, vringState(1, 0))).toBe(0n);
    const done = p.fe.request(1, [Buffer.from('waiting')], [8]);
    expect(await Promise.race([done, never(100)])).toBe('pending');
    expect(await p.fe.callAck(Req.SET_VRING_ENABLE, vringState(1, 1))).toBe(0n);
    expect((await done).written.toString()).toBe('waiting');
  });

  it('SET_VRING_ENABLE without PROTOCOL_FEATURES is refused', async () => {
    p = await backendPair({ mode: 'cloudHypervisor' });
    await p.fe.call(Req.SET_PROTOCOL_FEATURES, u64(PF.REPLY_ACK));
    p.fe.acked.protocolFeatures = PF.REPLY_ACK;
    expect(await p.fe.callAck(Req.SET_VRING_ENABLE, vringState(0, 1))).toBe(22n);
    expect(p.log.find('warn', /needs VHOST_USER_F_PROTOCOL_FEATURES/)).toHaveLength(1);
  });

  it('serves many chains made available by one kick, with one notification', async () => {
    p = await backendPair({ mode: 'cloudHypervisor' });
    await p.fe.handshake();
    const chains = Array.from({ length: 100 }, (_, i) => ({ readable: [Buffer.from(`req-${i}`)], writableSizes: [4, 4] }));
    const before = p.fe.callCount(1);
    const done = await p.fe.batch(1, chains);
    expect(done.map((c) => c.written.toString())).toEqual(chains.map((c) => c.readable[0].toString()));
    expect(p.handler.served).toHaveLength(100);
    expect(p.fe.callCount(1) - before).toBe(1);
    expect(p.fe.queue(1).availEvent()).toBe(100); // EVENT_IDX: avail_event written back
  });

  it('serves indirect chains, with and without EVENT_IDX', async () => {
    for (const eventIdx of [true, false]) {
      p = await backendPair({ mode: 'cloudHypervisor', eventIdx });
      await p.fe.handshake();
      const r = await p.fe.batch(1, [
        { readable: [Buffer.from('ab'), Buffer.from('cd')], writableSizes: [1, 1, 8], indirect: true },
        { readable: [Buffer.from('direct')], writableSizes: [6] },
      ]);
      expect(r.map((c) => c.written.toString())).toEqual(['abcd', 'direct']);
      expect(p.session.state().features & F.EVENT_IDX).toBe(eventIdx ? F.EVENT_IDX : 0n);
      p.close();
    }
  });

  it('ADD_MEM_REG / REM_MEM_REG manage memory slots', async () => {
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
    const extra = { gpa: 0x1_0000_0000_0 /* 64 GiB */, size: 1 << 20, userAddr: 0x7f99_0000_0000, fdOffset: 0 };
    const body = Buffer.concat([Buffer.alloc(8), regionBytes(extra)]);
    expect(await p.fe.callAck(Req.ADD_MEM_REG, body, { fds: [p.fe.memory.fd] })).toBe(0n);
    expect(p.session.state().regions).toHaveLength(3);
    expect(await p.fe.callAck(Req.REM_MEM_REG, body)).toBe(0n);
    expect(p.session.state().regions).toHaveLength(2);
    expect(await p.fe.callAck(Req.REM_MEM_REG, body)).toBe(2n); // ENOENT: no such region any more
    expect((await p.fe.request(1, [Buffer.from('still')], [8])).written.toString()).toBe('still');
  });

  it('RESET_DEVICE stops and forgets every ring and calls device.reset()', async () => {
    let resets = 0;
    p = await backendPair({ mode: 'qemu72' }, { reset: () => resets++ });
    await p.fe.handshake();
    expect(await p.fe.callAck(Req.RESET_DEVICE)).toBe(0n);
    const s = p.session.state();
    expect(resets).toBe(1);
    expect(s.features).toBe(0n);
    expect(s.vrings.map((v) => [v.size, v.started, v.enabled])).toEqual([[0, false, false], [0, false, false]]);
    expect(s.regions).toHaveLength(2); // memory and ownership survive a device reset
    expect(s.owner).toBe(true);
  });

  it('exposes the SET_BACKEND_REQ_FD channel; an unanswered request times out and breaks only that channel', async () => {
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
    const ch = p.session.backendChannel;
    expect(ch).not.toBeNull();
    // The in-process frontend cannot answer while the backend blocks: the 200 ms timeout fires.
    expect(() => ch?.request(10, Buffer.alloc(40))).toThrow(/no ack within 200 ms/);
    await until(() => p.fe.backendRequests.length > 0);
    expect(p.fe.backendRequests.map((r) => [r.request, r.flags, r.payload.length])).toEqual([[10, 0x9, 40]]);
    expect(() => ch?.request(10, Buffer.alloc(40))).toThrow(/no ack/); // sticky
    expect(await p.fe.getU64(Req.GET_QUEUE_NUM)).toBe(2n); // the session itself is fine
  });
});
