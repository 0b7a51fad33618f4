/**
 * The one shape shared by the transport (virtio) and the request layer (FUSE):
 * a request arrives as device-readable buffers and its reply goes into
 * device-writable buffers, both views of guest memory in chain order. Neither
 * layer knows how the other produced or consumes them.
 */
export interface ScatterGather {
  /** Device-readable buffers (the request), in descriptor order. */
  readonly readable: readonly Buffer[];
  /** Device-writable buffers (room for the reply), in descriptor order. */
  readonly writable: readonly Buffer[];
}

/** Finishes a request that handle() left PENDING: the bytes written into `writable`. Call exactly once. */
export type Completion = (written: number) => void;

/** What handle() returns when it took `complete` and will call it later. */
export const PENDING = -1;

/** Something that serves requests arriving on a queue. */
export interface RequestHandler {
  /**
   * Returns the bytes written into `writable`. When the transport passes
   * `complete`, it has other requests to serve meanwhile, and the handler may
   * instead start the work off the calling thread, return PENDING and call
   * `complete` once it is done. Until then the transport keeps `request`'s
   * buffers mapped and valid.
   */
  handle(queueIndex: number, request: ScatterGather, complete?: Completion): number;
}
