/**
 * The device side of a split ring: draining, used ring, notification
 * suppression both ways (EVENT_IDX and flags), and how a broken ring stops.
 */
import fc from 'fast-check';
import { PENDING, type Completion, type RequestHandler, type ScatterGather } from '../../src/io';
import { needEvent, Virtqueue } from '../../src/virtio/queue';
import { VirtqueueConfigError } from '../../src/virtio/errors';
import { GuestMemory } from '../../src/virtio/guest-memory';
import { NEXT, RingFixture, WRITE } from '../harness/ring-fixture';

describe('Virtqueue configuration (§2.7)', () => {
  const q = new Virtqueue({ index: 3, memory: new GuestMemory(), signals: { notify: () => {}, idle: () => {} } });

  it.each([0, 3, 100, 65536, 1.5])('"Queue Size ... MUST be a power of 2" (max 32768): size %p is refused', (n) => {
    expect(() => q.setSize(n)).toThrow(VirtqueueConfigError);
  });

  it.each([
    ['descriptor table', { desc: 8, avail: 0, used: 0 }],
    ['available ring', { desc: 0, avail: 1, used: 0 }],
    ['used ring', { desc: 0, avail: 0, used: 2 }],
  ])('the %s must be aligned', (what, addrs) => {
    expect(() => q.setAddresses(addrs, 'guest')).toThrow(new RegExp(`${what} .* aligned`));
  });

  it('rings must lie in guest memory: resolve() names the ring that does not', () => {
    const f = new RingFixture(16);
    try {
      f.queue.setAddresses({ desc: f.driver.desc, avail: f.driver.avail, used: (1 << 20) - 64 }, 'guest');
      expect(() => f.queue.resolve()).toThrow(/used ring: .*crosses the end/);
      expect(f.queue.ready).toBe(false);
    } finally {
      f.close();
    }
  });
});

describe('Virtqueue.drain', () => {
  let f: RingFixture;
  afterEach(() => f.close());

  function chain(text: string, room = 16): number {
    const [r, w] = f.driver.takeDescriptors(2);
    f.table([
      [r, { addr: f.put(text), len: text.length, flags: NEXT, next: w }],
      [w, { addr: f.ram.alloc(room), len: room, flags: WRITE, next: 0 }],
    ]);
    return r;
  }

  it('serves every available chain in one drain, publishes used entries and notifies once', () => {
    f = new RingFixture(128);
    const heads = Array.from({ length: 50 }, (_, i) => chain(`request ${i}`));
    const r = f.offer(...heads);
    expect(r).toEqual({ completed: 50, more: false, notified: true, error: null });
    expect(f.notifications).toBe(1);
    expect(f.driver.usedIdx()).toBe(50);
    expect(f.driver.usedElem(49)).toEqual({ id: heads[49], len: 'request 49'.length });
    expect(f.queue.nextAvail).toBe(50);
  });

  it('without EVENT_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT suppresses the notification', () => {
    f = new RingFixture(16);
    f.ram.view(f.driver.avail, 2).writeUInt16LE(1);
    expect(f.offer(chain('a')).notified).toBe(false);
    f.ram.view(f.driver.avail, 2).writeUInt16LE(0);
    expect(f.offer(chain('b')).notified).toBe(true);
    expect(f.notifications).toBe(1);
  });

  it('EVENT_IDX: notifies only when used idx passes used_event, and writes avail_event', () => {
    f = new RingFixture(16);
    f.queue.eventIdx = true;
    f.driver.setUsedEvent(5); // "interrupt me when entry 5 is used"
    expect(f.offer(chain('a'), chain('b')).notified).toBe(false); // used 0..1
    expect(f.driver.availEvent()).toBe(2); // kick me when you publish entry 2
    expect(f.offer(chain('c'), chain('d'), chain('e'), chain('f')).notified).toBe(true); // used 2..5 crosses 5
    expect(f.driver.availEvent()).toBe(6);
    expect(f.notifications).toBe(1);
  });

  it('EVENT_IDX works across the 16-bit wrap of the indices', () => {
    f = new RingFixture(16);
    f.queue.eventIdx = true;
    f.queue.setBase(0xfffe);
    f.ram.view(f.driver.used + 2, 2).writeUInt16LE(0xfffe);
    f.queue.resolve(true);
    f.driver.availIdx = 0xfffe;
    f.driver.setUsedEvent(0xffff);
    const r = f.offer(chain('a'), chain('b'), chain('c'));
    expect(r.completed).toBe(3);
    expect(r.notified).toBe(true);
    expect(f.driver.usedIdx()).toBe(1);
    expect(f.driver.availEvent()).toBe(1);
  });

  it('"A driver MUST NOT ... make more than Queue Size entries available" : an avail idx jump breaks the queue', () => {
    f = new RingFixture(16);
    f.driver.setAvailIdx(17);
    const r = f.queue.drain(f.handler);
    expect(r.error?.code).toBe('CFS_ERR_AVAIL_RING');
    expect(r.error?.message).toMatch(/17 entries ahead of 0, more than the queue size 16/);
    expect(f.queue.broken).toBe(r.error);
    // A broken queue stays stopped.
    f.driver.setAvailIdx(1);
    expect(f.queue.drain(f.handler)).toMatchObject({ completed: 0, error: null });
  });

  it('a head index outside the table breaks the queue', () => {
    f = new RingFixture(16);
    const r = f.offer(16);
    expect(r.error?.code).toBe('CFS_ERR_AVAIL_RING');
    expect(r.error?.message).toMatch(/names head 16/);
  });

  it('chains before a bad one still get their used entries and the notification', () => {
    f = new RingFixture(16);
    const good = chain('good');
    f.table([[9, { addr: 0, len: 1, flags: NEXT, next: 9 }]]);
    const r = f.offer(good, 9);
    expect(r.completed).toBe(1);
    expect(r.error?.code).toBe('CFS_ERR_DESCRIPTOR_CHAIN');
    expect(r.notified).toBe(true);
    expect(f.driver.usedIdx()).toBe(1);
  });

  it('a throwing handler is logged and its chain completes with no bytes; the queue keeps working', () => {
    f = new RingFixture(16);
    const handler = { handle: () => { throw new Error('bug above'); } };
    f.driver.push(chain('x'));
    f.driver.publish(0);
    expect(f.queue.drain(handler)).toMatchObject({ completed: 1, error: null });
    expect(f.driver.usedElem(0).len).toBe(0);
    expect(f.log.find('error', 'request handler threw')).toHaveLength(1);
    expect(f.offer(chain('y')).completed).toBe(1);
  });

  it('a used length beyond the writable room is clamped and logged', () => {
    f = new RingFixture(16);
    f.driver.push(chain('x', 8));
    f.driver.publish(0);
    f.queue.drain({ handle: () => 1000 });
    expect(f.driver.usedElem(0).len).toBe(8);
    expect(f.log.find('error', 'impossible used length')).toHaveLength(1);
  });

  it('hasAvailable says whether the driver published chains drain() has not served', () => {
    f = new RingFixture(16);
    expect(f.queue.hasAvailable).toBe(false);
    const old = f.driver.availIdx;
    f.driver.push(chain('a'));
    f.driver.publish(old);
    expect(f.queue.hasAvailable).toBe(true);
    f.queue.drain(f.handler);
    expect(f.queue.hasAvailable).toBe(false);
  });

  /** Publishes one chain as a Linux driver does; returns whether the device asked for a kick. */
  function add(text: string): boolean {
    const old = f.driver.availIdx;
    f.driver.push(chain(text));
    return f.driver.publish(old);
  }

  it.each([true, false])('suppressKicks: the driver sees no kick is wanted until enableKicks or a drain (EVENT_IDX %p)', (eventIdx) => {
    f = new RingFixture(16);
    f.queue.eventIdx = eventIdx;
    f.driver.eventIdx = eventIdx;
    expect(add('a')).toBe(true);
    f.queue.drain(f.handler);
    f.queue.suppressKicks();
    // Several adds in a row: none asks for a kick while the device watches the ring.
    expect([add('b'), add('c'), add('d')]).toEqual([false, false, false]);
    // Turned back on, kicks cover what comes next; what came meanwhile the device must find by looking.
    f.queue.enableKicks();
    expect(f.queue.hasAvailable).toBe(true);
    expect(f.queue.drain(f.handler).completed).toBe(3);
    expect(add('e')).toBe(true);
    f.queue.drain(f.handler);
    f.queue.suppressKicks();
    expect(add('f')).toBe(false);
    // drain() turns kicks back on as it finishes, so a device that stops polling by draining cannot strand a chain.
    f.queue.drain(f.handler);
    expect(add('g')).toBe(true);
  });

  it('suppressKicks with EVENT_IDX across the 16-bit wrap: avail_event is one behind, so no add crosses it', () => {
    f = new RingFixture(16);
    f.queue.eventIdx = true;
    f.driver.eventIdx = true;
    f.queue.setBase(0);
    f.queue.resolve(true);
    f.queue.suppressKicks();
    expect(f.driver.availEvent()).toBe(0xffff);
    expect([add('a'), add('b')]).toEqual([false, false]);
    f.queue.enableKicks();
    expect(f.driver.availEvent()).toBe(0);
  });

  it('an empty ring is a no-op without notification', () => {
    f = new RingFixture(16);
    expect(f.queue.drain(f.handler)).toEqual({ completed: 0, more: false, notified: false, error: null });
  });
});

describe('Virtqueue: chains completed later (PENDING)', () => {
  let f: RingFixture;
  afterEach(() => f.close());

  function chain(text: string, room = 16): number {
    const [r, w] = f.driver.takeDescriptors(2);
    f.table([
      [r, { addr: f.put(text), len: text.length, flags: NEXT, next: w }],
      [w, { addr: f.ram.alloc(room), len: room, flags: WRITE, next: 0 }],
    ]);
    return r;
  }

  /** Defers every chain it is allowed to, writing its request text as the reply once completed. */
  class Deferring implements RequestHandler {
    readonly offered: boolean[] = [];
    readonly pending: { sg: ScatterGather; complete: Completion }[] = [];
    handle(_q: number, sg: ScatterGather, complete?: Completion): number {
      this.offered.push(complete !== undefined);
      if (complete === undefined) return sg.readable[0].copy(sg.writable[0]);
      this.pending.push({ sg, complete });
      return PENDING;
    }
    finish(i: number): void {
      const { sg, complete } = this.pending[i];
      complete(sg.readable[0].copy(sg.writable[0]));
    }
  }

  it('a chain published while the pass runs is seen before the last one is judged alone', () => {
    f = new RingFixture(16);
    const h = new Deferring();
    const late = chain('late');
    // While it handles the first chain, the driver publishes a third, as a Linux driver adding one by one does.
    const publishing: RequestHandler = {
      handle: (q, sg, complete) => {
        if (h.offered.length === 0) {
          const old = f.driver.availIdx;
          f.driver.push(late);
          f.driver.publish(old);
        }
        return h.handle(q, sg, complete);
      },
    };
    const old = f.driver.availIdx;
    for (const x of [chain('a'), chain('b')]) f.driver.push(x);
    f.driver.publish(old);
    expect(f.queue.drain(publishing).completed).toBe(3);
    // 'b' has 'late' behind it, so it may go to another thread too; only 'late' is alone.
    expect(h.offered).toEqual([true, true, false]);
  });

  it('a lone chain is never offered a completion; with others behind it, each but the last is', () => {
    f = new RingFixture(16);
    const h = new Deferring();
    f.driver.push(chain('alone'));
    f.driver.publish(0);
    f.queue.drain(h);
    expect(h.offered).toEqual([false]);
    const old = f.driver.availIdx;
    const heads = [chain('a'), chain('b'), chain('c')];
    for (const x of heads) f.driver.push(x);
    f.driver.publish(old);
    const r = f.queue.drain(h);
    expect(h.offered).toEqual([false, true, true, false]);
    // Popped and counted, but only the last one is in the used ring yet.
    expect(r.completed).toBe(3);
    expect(f.queue.inflight).toBe(2);
    expect(f.driver.usedIdx()).toBe(2);
    expect(f.driver.usedElem(1)).toEqual({ id: heads[2], len: 1 });
  });

  it('completions publish out of order, each with its own head and length, and notify; onIdle fires after the last', () => {
    f = new RingFixture(16);
    const h = new Deferring();
    const heads = [chain('first'), chain('second'), chain('third')];
    const old = f.driver.availIdx;
    for (const x of heads) f.driver.push(x);
    f.driver.publish(old);
    f.queue.drain(h);
    const notified = f.notifications;
    h.finish(1);
    expect(f.driver.usedIdx()).toBe(2);
    expect(f.driver.usedElem(1)).toEqual({ id: heads[1], len: 'second'.length });
    expect(f.notifications).toBe(notified + 1);
    expect(f.idle).toBe(0);
    h.finish(0);
    expect(f.driver.usedElem(2)).toEqual({ id: heads[0], len: 'first'.length });
    expect(f.queue.inflight).toBe(0);
    expect(f.idle).toBe(1);
  });

  it('EVENT_IDX holds for completions too: no signal until used idx passes used_event', () => {
    f = new RingFixture(16);
    f.queue.eventIdx = true;
    const h = new Deferring();
    f.driver.setUsedEvent(2);
    const old = f.driver.availIdx;
    for (const x of [chain('a'), chain('b'), chain('c')]) f.driver.push(x);
    f.driver.publish(old);
    f.queue.drain(h); // used 0 (the last chain, served in place)
    const before = f.notifications;
    h.finish(0); // used 1
    expect(f.notifications).toBe(before);
    h.finish(1); // used 2: passes used_event 2
    expect(f.notifications).toBe(before + 1);
  });

  it('a completion after the rings were reset is not published, but still counted down', () => {
    f = new RingFixture(16);
    const h = new Deferring();
    const old = f.driver.availIdx;
    for (const x of [chain('a'), chain('b')]) f.driver.push(x);
    f.driver.publish(old);
    f.queue.drain(h);
    const used = f.driver.usedIdx();
    f.queue.reset();
    h.finish(0);
    expect(f.driver.usedIdx()).toBe(used);
    expect(f.queue.inflight).toBe(0);
    expect(f.idle).toBe(1);
  });

  it('a second completion of one chain is ignored and logged; a bad length is clamped', () => {
    f = new RingFixture(16);
    const h = new Deferring();
    const old = f.driver.availIdx;
    for (const x of [chain('a', 8), chain('b')]) f.driver.push(x);
    f.driver.publish(old);
    f.queue.drain(h);
    h.pending[0].complete(1000);
    expect(f.driver.usedElem(1).len).toBe(8);
    expect(f.log.find('error', 'impossible used length')).toHaveLength(1);
    h.pending[0].complete(1);
    expect(f.driver.usedIdx()).toBe(2);
    expect(f.log.find('error', 'completed twice')).toHaveLength(1);
    expect(f.queue.inflight).toBe(0);
  });

  it('a handler that completes in place and returns a length has answered once', () => {
    f = new RingFixture(16);
    const eager: RequestHandler = {
      handle: (_q, sg, complete) => {
        complete?.(2);
        return complete === undefined ? 0 : 3;
      },
    };
    const old = f.driver.availIdx;
    for (const x of [chain('a'), chain('b')]) f.driver.push(x);
    f.driver.publish(old);
    expect(f.queue.drain(eager).completed).toBe(2);
    expect(f.driver.usedIdx()).toBe(2);
    expect(f.driver.usedElem(0).len).toBe(2);
    expect(f.queue.inflight).toBe(0);
  });

  it('property: whatever order completions come in, every chain is used exactly once with its own length', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 12 }), fc.infiniteStream(fc.nat()), (n, picks) => {
        f = new RingFixture(32);
        try {
          const h = new Deferring();
          const texts = Array.from({ length: n }, (_, i) => 'x'.repeat(i + 1));
          const heads = texts.map((t) => chain(t));
          for (const x of heads) f.driver.push(x);
          f.driver.publish(0);
          f.queue.drain(h);
          const left = h.pending.map((_, i) => i);
          const it = picks[Symbol.iterator]();
          while (left.length > 0) h.finish(left.splice((it.next().value as number) % left.length, 1)[0]);
          const used = Array.from({ length: n }, (_, i) => f.driver.usedElem(i));
          expect(f.driver.usedIdx()).toBe(n);
          expect(used.map((u) => u.id).sort((a, b) => a - b)).toEqual([...heads].sort((a, b) => a - b));
          for (const u of used) expect(u.len).toBe(texts[heads.indexOf(u.id)].length);
        } finally {
          f.close();
          f = new RingFixture(2); // afterEach closes one
        }
      }),
      { numRuns: 50 },
    );
  });
});

describe('needEvent (vring_need_event)', () => {
  it('property: true exactly when used_event lies in [old, new) modulo 2^16', () => {
    fc.assert(
      fc.property(fc.nat(0xffff), fc.nat(0xffff), fc.nat(0x8000), (event, old, step) => {
        const next = (old + step) & 0xffff;
        let crossed = false;
        for (let k = 0; k < step; k++) if (((old + k) & 0xffff) === event) crossed = true;
        expect(needEvent(event, next, old)).toBe(crossed);
      }),
      { numRuns: 300 },
    );
  });
});
