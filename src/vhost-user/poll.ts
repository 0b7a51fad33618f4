/**
 * Adaptive polling of a vring after it was served, the policy of QEMU's event
 * loop (poll-max-ns): instead of going back to sleep at once, the session watches
 * the available ring for a while, and a request that arrives meanwhile is served
 * without the guest's kick waking it. On this kind of host a sleep and a wake-up
 * on each side cost about as much as the request itself (GETATTR one at a time:
 * 20 us a round trip sleeping, 10 us polling).
 *
 * The window adapts to how long the queue actually stays quiet, so polling costs
 * CPU only while requests come back to back:
 * - a wait that ended within the window: the window is right, keep it;
 * - a wait longer than the maximum: polling would not have caught it, stop
 *   polling (window 0) until waits get short again;
 * - a wait between the window and the maximum: polling longer would have caught
 *   it, so grow the window (from 4 us, doubling, up to the maximum).
 * A guest that takes longer than the maximum between requests (a TCG guest, an
 * idle one) never makes the session poll at all.
 */

/** QEMU's default poll-max-ns for an iothread. */
export const DEFAULT_POLL_MAX_NS = 32_000;
/** The first window once waits show that polling would pay. */
export const POLL_START_NS = 4_000;

export class AdaptivePoll {
  #windowNs = 0;

  /** maxNs 0 turns polling off. */
  constructor(readonly maxNs: number) {
    if (!Number.isFinite(maxNs) || maxNs < 0) throw new RangeError(`poll maximum must be a non-negative number of ns, got ${maxNs}`);
  }

  /** How long to poll before sleeping (ns); 0: sleep at once. */
  get windowNs(): number {
    return this.#windowNs;
  }

  /** Feeds back how long the queue stayed quiet: from the end of a drain to the next request or kick. */
  observe(waitedNs: number): void {
    if (waitedNs <= this.#windowNs) return;
    if (waitedNs > this.maxNs) {
      this.#windowNs = 0;
    } else if (this.#windowNs < this.maxNs) {
      this.#windowNs = Math.min(this.maxNs, this.#windowNs === 0 ? POLL_START_NS : this.#windowNs * 2);
    }
  }
}
