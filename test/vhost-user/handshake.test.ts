import { backendPair, type Pair } from '../harness/backend-pair';
import { F, PF, Req } from '../harness/frontend';

describe('handshake replays against an in-process VhostUserSession', () => {
  let p: Pair;
  afterEach(() => p?.close());

  it('qemu72: recorded QEMU 7.2 sequence, ADD_MEM_REG slots, 128-entry rings, echo round trip', async () => {
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
    await p.fe.sync(); // QEMU's last messages need no reply: make sure they were handled
    expect(p.fe.acked.protocolFeatures).toBe(PF.MQ | PF.REPLY_ACK | PF.BACKEND_REQ | PF.BACKEND_SEND_FD | PF.CONFIGURE_MEM_SLOTS | PF.RESET_DEVICE);
    expect(p.fe.acked.queueNum).toBe(2);
    expect(p.fe.acked.maxMemSlots).toBe(32);
    expect(p.fe.acked.features).toBe(F.VERSION_1 | F.PROTOCOL_FEATURES | F.EVENT_IDX | F.INDIRECT_DESC);
    const s = p.session.state();
    expect(s.owner).toBe(true);
    expect(s.regions).toHaveLength(2);
    expect(s.backendChannel).toBe(true);
    expect(s.vrings.map((v) => [v.size, v.enabled, v.started])).toEqual([[128, true, true], [128, true, true]]);
    const r = await p.fe.request(1, [Buffer.from('hello, ring')], [64]);
    expect(r.usedLen).toBe(11);
    expect(r.written.toString()).toBe('hello, ring');
    expect(p.handler.served).toEqual([1]);
  });

  it('cloudHypervisor: SET_MEM_TABLE, NEED_REPLY on everything, 1024-entry rings', async () => {
    p = await backendPair({ mode: 'cloudHypervisor' });
    await p.fe.handshake();
    expect(p.fe.acked.protocolFeatures).toBe(PF.MQ | PF.REPLY_ACK | PF.CONFIGURE_MEM_SLOTS);
    const s = p.session.state();
    expect(s.regions).toHaveLength(2);
    expect(s.backendChannel).toBe(false);
    expect(s.vrings.map((v) => v.size)).toEqual([1024, 1024]);
    const r = await p.fe.request(0, [Buffer.from('hiprio')], [3, 3]);
    expect(r.usedLen).toBe(6);
    expect(r.written.toString()).toBe('hiprio');
  });

  it('qemu72 stop sequence: GET_VRING_BASE stops the ring and reports the next avail index', async () => {
    p = await backendPair({ mode: 'qemu72' });
    await p.fe.handshake();
    await p.fe.batch(1, [1, 2, 3].map((n) => ({ readable: [Buffer.alloc(n, n)], writableSizes: [8] })));
    expect(await p.fe.stop()).toEqual([0, 3]);
    expect(p.session.state().vrings.map((v) => v.started)).toEqual([false, false]);
    expect(await p.fe.getU64(Req.GET_QUEUE_NUM)).toBe(2n);
  });
});
