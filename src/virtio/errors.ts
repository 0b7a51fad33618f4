/**
 * Errors of the virtio layer. Each class has a fixed CFS_ERR_* code; the
 * message says which rule was broken and with what value, so a log line alone
 * explains why a queue stopped.
 */
import { ClosurefsError } from '../errors';

/** An access to guest memory outside every mapped region (or across a region's end). */
export class GuestMemoryError extends ClosurefsError {
  override readonly code = 'CFS_ERR_GUEST_MEMORY';
  constructor(message: string, readonly addr: number, readonly len: number) {
    super(message);
  }
}

/** A memory table the frontend sent is unusable: overlap, wrap, zero size, too many slots. */
export class MemoryTableError extends ClosurefsError {
  override readonly code = 'CFS_ERR_MEMORY_TABLE';
}

/** A ring configuration (size, addresses, alignment) violates VIRTIO 1.2 §2.7. */
export class VirtqueueConfigError extends ClosurefsError {
  override readonly code = 'CFS_ERR_VIRTQUEUE_CONFIG';
}

/** The driver's available ring is inconsistent (index jump, head out of range). */
export class AvailRingError extends ClosurefsError {
  override readonly code = 'CFS_ERR_AVAIL_RING';
}

/** Which descriptor-chain rule (VIRTIO 1.2 §2.7.5 and §2.7.5.3) a chain broke. */
export type ChainRule =
  | 'index-out-of-range'
  | 'loop'
  | 'address'
  | 'writable-before-readable'
  | 'indirect-length'
  | 'nested-indirect'
  | 'indirect-with-next'
  | 'length-overflow';

/** A descriptor chain the driver published breaks a rule of the split ring. */
export class DescriptorChainError extends ClosurefsError {
  override readonly code = 'CFS_ERR_DESCRIPTOR_CHAIN';
  constructor(message: string, readonly rule: ChainRule, options?: { cause?: unknown }) {
    super(message, options);
  }
}
