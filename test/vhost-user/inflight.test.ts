/**
 * Requests a handler finishes later (PENDING) and the vhost-user messages that
 * arrive meanwhile: a message is not handled while a request is in flight (it may
 * change the memory or rings that request writes to), and a frontend that leaves
 * does not get guest memory unmapped under a read still running.
 */
import { PENDING, type Completion, type RequestHandler, type ScatterGather } from '../../src/io';
import { backendPair, type Pair } from '../harness/backend-pair';

/** Echoes in place when it must; otherwise holds the request until the test releases it. */
class HoldingHandler implements RequestHandler {
  readonly held: { sg: ScatterGather; complete: Completion }[] = [];
  handle(_q: number, sg: ScatterGather, complete?: Completion): number {
    if (complete === undefined) return sg.readable[0].copy(sg.writable[0]);
    this.held.push({ sg, complete });
    return PENDING;
  }
  release(): void {
    for (const { sg, complete } of this.held.splice(0)) complete(sg.readable[0].copy(sg.writable[0]));
  }
}

const tick = () => new Promise((r) => setTimeout(r, 20));

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 250 && !cond(); i++) await tick();
  if (!cond()) throw new Error('condition never met');
}

describe('requests in flight and the vhost-user session', () => {
  let p: Pair;
  afterEach(() => p?.close());

  it('GET_VRING_BASE waits for the requests in flight, then reports every chain as consumed', async () => {
    const handler = new HoldingHandler();
    p = await backendPair({}, { handler });
    await p.fe.handshake();
    const done = p.fe.batch(1, ['one', 'two', 'three'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] })));
    await until(() => handler.held.length === 2);
    let stopped = false;
    const stop = p.fe.stop().then((bases) => {
      stopped = true;
      return bases;
    });
    await tick();
    await tick();
    expect(stopped).toBe(false);
    expect(p.session.state().vrings[1].started).toBe(true);
    handler.release();
    expect(await stop).toEqual([0, 3]);
    expect((await done).map((c) => c.written.toString())).toEqual(['one', 'two', 'three']);
  });

  it('while a message waits, new batches are served in place, so the requests in flight can only run out', async () => {
    const handler = new HoldingHandler();
    p = await backendPair({}, { handler });
    await p.fe.handshake();
    const first = p.fe.batch(1, ['a', 'b'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] })));
    await until(() => handler.held.length === 1);
    const synced = p.fe.sync(); // a message: held while 'a' is in flight
    await tick();
    const second = await p.fe.batch(1, ['c', 'd', 'e'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] })));
    expect(second.map((c) => c.written.toString())).toEqual(['c', 'd', 'e']);
    expect(handler.held).toHaveLength(1); // none of c, d, e was held
    handler.release();
    await synced;
    await first;
    // With nothing in flight and the message read, batches may be held again.
    const third = p.fe.batch(1, ['f', 'g'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] })));
    await until(() => handler.held.length === 1);
    handler.release();
    expect((await third).map((c) => c.written.toString())).toEqual(['f', 'g']);
  });

  it('a frontend that hangs up mid-request is noticed once the requests in flight complete', async () => {
    const handler = new HoldingHandler();
    p = await backendPair({}, { handler });
    await p.fe.handshake();
    void p.fe.batch(1, ['a', 'b'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] }))).catch(() => {});
    await until(() => handler.held.length === 1);
    p.fe.close();
    await tick();
    expect(p.session.closed).toBe(false);
    handler.release();
    await p.sessionClosed;
    expect(p.session.state().regions).toEqual([]);
  });

  it('closed with requests in flight (SIGTERM): memory stays mapped until the last completion, which is dropped', async () => {
    const handler = new HoldingHandler();
    p = await backendPair({}, { handler });
    await p.fe.handshake();
    void p.fe.batch(1, ['a', 'b'].map((t) => ({ readable: [Buffer.from(t)], writableSizes: [16] }))).catch(() => {});
    await until(() => handler.held.length === 1);
    p.session.close();
    expect(p.session.state().regions.length).toBeGreaterThan(0);
    const target = handler.held[0].sg.writable[0];
    handler.release(); // writes into guest memory: must still be mapped
    expect(target.length).toBe(0); // then unmapped: views read as empty
    expect(p.session.state().regions).toEqual([]);
    expect(p.log.find('error', /./)).toEqual([]);
  });
});
