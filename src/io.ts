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

/** Something that serves requests arriving on a queue; returns the bytes written into `writable`. */
export interface RequestHandler {
  handle(queueIndex: number, request: ScatterGather): number;
}
