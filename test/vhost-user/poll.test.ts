import fc from 'fast-check';
import { AdaptivePoll, DEFAULT_POLL_MAX_NS, POLL_START_NS } from '../../src/vhost-user/poll';

describe('AdaptivePoll', () => {
  test('starts asleep: no window until a wait shows polling would have caught a request', () => {
    expect(new AdaptivePoll(DEFAULT_POLL_MAX_NS).windowNs).toBe(0);
  });

  test('short waits grow the window from 4 us, doubling, up to the maximum', () => {
    const p = new AdaptivePoll(32_000);
    const windows: number[] = [];
    for (let i = 0; i < 6; i++) {
      p.observe(30_000); // caught by a 32 us window, not by a smaller one
      windows.push(p.windowNs);
    }
    expect(windows).toEqual([POLL_START_NS, 8_000, 16_000, 32_000, 32_000, 32_000]);
  });

  test('a wait within the window keeps it', () => {
    const p = new AdaptivePoll(32_000);
    p.observe(10_000);
    p.observe(10_000);
    expect(p.windowNs).toBe(8_000);
    p.observe(8_000);
    p.observe(1);
    expect(p.windowNs).toBe(8_000);
  });

  test('a wait longer than the maximum stops polling', () => {
    const p = new AdaptivePoll(32_000);
    for (let i = 0; i < 4; i++) p.observe(20_000);
    expect(p.windowNs).toBe(32_000);
    p.observe(32_001);
    expect(p.windowNs).toBe(0);
  });

  test('a guest slower than the maximum never makes it poll', () => {
    const p = new AdaptivePoll(32_000);
    for (let i = 0; i < 100; i++) p.observe(300_000);
    expect(p.windowNs).toBe(0);
  });

  test('maximum 0 never polls', () => {
    const p = new AdaptivePoll(0);
    for (const w of [0, 1, 1_000, 1e9]) p.observe(w);
    expect(p.windowNs).toBe(0);
  });

  test('a maximum below the first step polls for the maximum', () => {
    const p = new AdaptivePoll(1_500);
    p.observe(1_000);
    expect(p.windowNs).toBe(1_500);
  });

  test('refuses a maximum that is not a duration', () => {
    expect(() => new AdaptivePoll(-1)).toThrow(RangeError);
    expect(() => new AdaptivePoll(NaN)).toThrow(RangeError);
  });

  test('whatever the waits, the window stays 0 or a step between 4 us and the maximum', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200_000 }), fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { maxLength: 50 }), (max, waits) => {
        const p = new AdaptivePoll(max);
        for (const w of waits) {
          const before = p.windowNs;
          p.observe(w);
          const after = p.windowNs;
          if (after !== 0 && !(after <= max && (after === max || after >= POLL_START_NS))) return false;
          // It only moves when the wait fell outside the window.
          if (w <= before && after !== before) return false;
          // Only a wait past the maximum turns it off.
          if (after === 0 && before !== 0 && w <= max) return false;
        }
        return true;
      }),
    );
  });
});
