/**
 * The stream reader: byte-exact fixtures for each framing rule, and
 * properties over random chunking and random garbage.
 */
import { fstatSync } from 'node:fs';
import fc from 'fast-check';
import * as native from '../../src/native';
import { MessageReader, encodeMessage, type VhostUserMessage } from '../../src/vhost-user/codec';
import { VhostUserProtocolError } from '../../src/vhost-user/errors';
import { FrontendRequest as R, payloadSizeAllowed } from '../../src/vhost-user/protocol';

/** Feeds `bytes` through the reader in chunks no bigger than the reader's window (as recvmsg would). */
function feed(reader: MessageReader, bytes: Buffer, chunk = 1 << 30, fdsFirst: number[] = []): VhostUserMessage[] {
  const out: VhostUserMessage[] = [];
  let off = 0;
  let fds = fdsFirst;
  while (off < bytes.length) {
    const w = reader.window();
    const n = Math.min(w.length, chunk, bytes.length - off);
    bytes.copy(w.buf, w.offset, off, off + n);
    off += n;
    const m = reader.received(n, fds);
    fds = [];
    if (m) out.push(m);
  }
  return out;
}

function expectProtocolError(f: () => unknown, message: RegExp): void {
  expect(f).toThrow(VhostUserProtocolError);
  try {
    f();
  } catch (e) {
    expect((e as VhostUserProtocolError).code).toBe('CFS_ERR_VHOST_USER_PROTOCOL');
  }
  // the error is sticky: the same one is thrown again
  expect(f).toThrow(message);
}

describe('MessageReader', () => {
  it('decodes a byte-exact GET_FEATURES and SET_FEATURES', () => {
    const r = new MessageReader();
    const msgs = feed(r, Buffer.from('01000000' + '01000000' + '00000000' + '02000000' + '09000000' + '08000000' + '0000000701000000', 'hex'));
    expect(msgs.map((m) => [m.request, m.flags, m.payload.toString('hex')])).toEqual([
      [1, 1, ''],
      [2, 9, '0000000701000000'],
    ]);
  });

  it('parks on a short read and resumes (one byte at a time)', () => {
    const bytes = encodeMessage(R.SET_VRING_NUM, 1, Buffer.from('0100000080000000', 'hex'));
    const r = new MessageReader();
    const msgs = feed(r, bytes, 1);
    expect(msgs).toHaveLength(1);
    expect(msgs[0].payload.readUInt32LE(4)).toBe(128);
    expect(r.midMessage).toBe(false);
  });

  it('never offers a window past the current message', () => {
    const r = new MessageReader();
    expect(r.window().length).toBe(12);
    feed(r, Buffer.from('0900000001000000' + '28000000', 'hex'));
    expect(r.window().length).toBe(40);
    expect(r.midMessage).toBe(true);
  });

  it('attaches fds to the message they arrived with', () => {
    const fd = native.eventfd();
    const r = new MessageReader();
    const [m] = feed(r, encodeMessage(R.SET_VRING_KICK, 1, Buffer.alloc(8)), 5, [fd]);
    expect(m.fds).toEqual([fd]);
    native.close(fd);
  });

  it('version bits other than 1 break the stream', () => {
    const r = new MessageReader();
    expectProtocolError(() => feed(r, Buffer.from('01000000' + '02000000' + '00000000', 'hex')), /header version 2, expected 1/);
  });

  it('a request with the REPLY flag breaks the stream', () => {
    expectProtocolError(() => feed(new MessageReader(), Buffer.from('010000000500000000000000', 'hex')), /REPLY flag/);
  });

  it('reserved flag bits break the stream', () => {
    expectProtocolError(() => feed(new MessageReader(), Buffer.from('010000001100000000000000', 'hex')), /reserved header flag bits 0x10/);
  });

  it('an oversized payload is refused at the header, before reading it', () => {
    const r = new MessageReader();
    expectProtocolError(() => feed(r, Buffer.from('63000000' + '01000000' + '01100000', 'hex')), /payload size 4097/);
  });

  it('a payload size that does not match the request breaks the stream', () => {
    expectProtocolError(() => feed(new MessageReader(), encodeMessage(R.SET_FEATURES, 1, Buffer.alloc(4))), /SET_FEATURES: payload size 4/);
    expectProtocolError(() => feed(new MessageReader(), encodeMessage(R.SET_MEM_TABLE, 1, Buffer.alloc(8 + 9 * 32))), /SET_MEM_TABLE/);
  });

  it('fds on a request that carries none break the stream, and the fds are closed', () => {
    const fd = native.eventfd();
    expectProtocolError(() => feed(new MessageReader(), encodeMessage(R.SET_FEATURES, 1, Buffer.alloc(8)), 1 << 30, [fd]), /SET_FEATURES arrived with 1 fds/);
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
  });

  it('a missing fd breaks the stream (ADD_MEM_REG carries exactly one)', () => {
    expectProtocolError(() => feed(new MessageReader(), encodeMessage(R.ADD_MEM_REG, 1, Buffer.alloc(40))), /ADD_MEM_REG arrived with 0 fds/);
  });

  it('MSG_CTRUNC (fds lost in the kernel) breaks the stream', () => {
    const r = new MessageReader();
    const w = r.window();
    expect(() => r.received(w.length, [], true)).toThrow(/MSG_CTRUNC/);
  });

  it('property: any sequence of valid messages survives any chunking', () => {
    const msg = fc.oneof(
      fc.record({ request: fc.constant(R.SET_FEATURES), payload: fc.uint8Array({ minLength: 8, maxLength: 8 }) }),
      fc.record({ request: fc.constant(R.GET_FEATURES), payload: fc.constant(new Uint8Array(0)) }),
      fc.record({ request: fc.constant(R.SET_VRING_ADDR), payload: fc.uint8Array({ minLength: 40, maxLength: 40 }) }),
      fc.record({ request: fc.integer({ min: 45, max: 200 }), payload: fc.uint8Array({ maxLength: 300 }) }),
    );
    fc.assert(
      fc.property(fc.array(msg, { maxLength: 10 }), fc.integer({ min: 1, max: 64 }), fc.boolean(), (msgs, chunk, needReply) => {
        const bytes = Buffer.concat(msgs.map((m) => encodeMessage(m.request, needReply ? 9 : 1, Buffer.from(m.payload))));
        const got = feed(new MessageReader(), bytes, chunk);
        expect(got.map((m) => [m.request, Buffer.from(m.payload).toString('hex')])).toEqual(msgs.map((m) => [m.request, Buffer.from(m.payload).toString('hex')]));
      }),
      { numRuns: 200 },
    );
  });

  it('property: random bytes yield messages or a VhostUserProtocolError, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          for (const m of feed(new MessageReader(), Buffer.from(bytes), 7)) expect(payloadSizeAllowed(m.request, m.payload.length)).toBe(true);
        } catch (e) {
          if (!(e instanceof VhostUserProtocolError)) throw e;
        }
      }),
      { numRuns: 300 },
    );
  });
});
